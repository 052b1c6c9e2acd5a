package policy

import "time"

// Work estimates how long a worker slot is busy with an upsize: a fixed part (task start, reading the
// source, the encoder's set-up) plus a cost per megapixel of the result, by output format (the encoder
// sets the pace: PNG's zlib costs several times JPEG's entropy coder). Costs span 500x between a small
// 2x and an 8x to 100 MP, so queueing, backpressure and scaling count work, not tasks.
//
// The figures come from BenchmarkCalibrateWork (photo-like sources, the service's encoder settings, one
// task at a time on one core); re-run it on the deployment's CPUs and update them when the pipeline
// changes:
//
//	go test -run '^$' -bench CalibrateWork -benchtime 1x ./internal/policy/
type WorkModel struct {
	Fixed time.Duration
	PerMP map[string]time.Duration // by format: jpeg, png, webp
}

// DefaultWork is the calibrated model: BenchmarkCalibrateWork on the 2-core development VM, 2026-11-30
// (PNG after the resampler took PNG results and the Paeth filter: docs/imageops.md). The fixed part is
// JPEG's fit, where it matters (small tasks); the PNG and WebP fits put their decode of large sources
// into a larger fixed part (42 and 26 ms), which the per-megapixel cost covers for the results that
// carry weight.
var DefaultWork = WorkModel{
	Fixed: 5 * time.Millisecond,
	PerMP: map[string]time.Duration{
		"jpeg": 4500 * time.Microsecond,
		"png":  49 * time.Millisecond,
		"webp": 58 * time.Millisecond,
	},
}

// Estimate is the work of a result of outPixels in format (an unknown format costs as the dearest).
func (m WorkModel) Estimate(format string, outPixels int64) time.Duration {
	per, ok := m.PerMP[format]
	if !ok {
		for _, p := range m.PerMP {
			per = max(per, p)
		}
	}
	return m.Fixed + time.Duration(float64(per)*float64(outPixels)/1e6)
}
