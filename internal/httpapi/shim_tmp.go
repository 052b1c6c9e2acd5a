package httpapi

import (
	"context"

	"upsize/internal/imageops"
)

// TEMPORARY until imageops gains Validate(ctx) and Info.DecodeBytes.
func validateImage(ctx context.Context, b []byte) error { return imageops.Validate(b) }
func decodeBytes(info imageops.Info) int64              { return info.Pixels() * 4 }
