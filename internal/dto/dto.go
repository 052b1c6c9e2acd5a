// Package dto holds the JSON shapes of the public API that more than the HTTP layer writes: the seed's
// EditImageDto, and the state of a request, which GET /api/requests/{id}, its event stream and the
// completion callbacks all send.
package dto

import (
	"context"
	"fmt"

	"upsize/internal/cancel"
	"upsize/internal/store"
)

// Image is the seed's EditImageDto.
type Image struct {
	ImageID    int64    `json:"imageId"`
	Resolution string   `json:"resolution"`
	ScaleSize  string   `json:"scaleSize"`
	OwnerID    int64    `json:"ownerId"`
	EditInfo   EditInfo `json:"EditInfo"`
}

// EditInfo is the seed's PickTypeClass: all six fields, always present.
type EditInfo struct {
	OriginalPrompt string `json:"originalPrompt"`
	Super          string `json:"super"`
	Main           string `json:"main"`
	VariationID    int64  `json:"variationId"`
	GroupID        string `json:"groupId"`
	BlurReason     string `json:"blurReason"`
}

// FromImage is an image's DTO.
func FromImage(im store.Image) Image {
	return Image{
		ImageID:    im.ID,
		Resolution: fmt.Sprintf("%dx%d", im.Width, im.Height),
		ScaleSize:  im.Scale,
		OwnerID:    im.OwnerID,
		EditInfo: EditInfo{
			OriginalPrompt: im.OriginalPrompt, Super: im.Super, Main: im.Main,
			VariationID: im.VariationID, GroupID: im.GroupID, BlurReason: im.BlurReason,
		},
	}
}

// ImageBody is {"image": …}, the body of an answer that returns an image.
type ImageBody struct {
	Image Image `json:"image"`
}

// Request is the state of one request: GET /api/requests/{requestId}.
type Request struct {
	RequestID string        `json:"requestId"`
	State     cancel.State  `json:"state"`
	Position  *int64        `json:"position,omitempty"` // events only: tasks ahead in its queue, while queued
	Image     *Image        `json:"image,omitempty"`    // completed
	Error     *RequestError `json:"error,omitempty"`    // failed
}

// RequestError is a failed request's error envelope.
type RequestError struct {
	Code int    `json:"code"`
	Data string `json:"data"`
}

// Images reads an image record.
type Images interface {
	GetImage(ctx context.Context, id int64) (store.Image, error)
}

// FromRequest is a request's state; a completed one's image is read from images.
func FromRequest(ctx context.Context, images Images, req cancel.Request) (Request, error) {
	out := Request{RequestID: req.ID, State: req.State}
	switch req.State {
	case cancel.Completed:
		im, err := images.GetImage(ctx, req.ResultID)
		if err != nil {
			return Request{}, err
		}
		d := FromImage(im)
		out.Image = &d
	case cancel.Failed:
		out.Error = &RequestError{Code: req.ErrCode, Data: req.ErrData}
	}
	return out, nil
}
