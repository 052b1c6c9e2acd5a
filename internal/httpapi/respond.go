package httpapi

import (
	"fmt"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/gin-gonic/gin"

	"upsize/internal/store"
)

// Reasons: the "data" of the error envelope, exactly as SPEC.md and the seed spell them.
const (
	reasonNotLoggedIn        = "not_logged_in"
	reasonWrongAPIKey        = "wrong_api_key"
	reasonAPIKeyExpired      = "api_key_expired"
	reasonInvalidPlatform    = "invalid_platform"
	reasonInvalidRequestID   = "invalid_request_id"
	reasonMissingRequestID   = "missing_request_id"
	reasonUserCanceled       = "user_canceled_request"
	reasonRequestIDReused    = "request_id_reused"
	reasonAlreadyUpscaled    = "cannot_upscale_already_upscaled_image"
	reasonFailedBilling      = "failed_billing"
	reasonInvalidScaleSize   = "invalid_scale_size"
	reasonFree4K             = "free_user_cannot_use_4k"
	reasonNoModel            = "no_model_exception (upsize)"
	reasonNoCreditCost       = "no_credit_cost_info_at_admin"
	reasonImageTooLarge      = "image_too_large"
	reasonQueueFull          = "queue_full"
	reasonTooManyRequests    = "too_many_requests"
	reasonNotEnoughCredit    = "not_enough_credit"
	reasonQueueUnavailable   = "queue_unavailable"
	reasonServiceUnavailable = "service_unavailable"
	reasonAlreadyCompleted   = "request_already_completed"
	reasonAlreadyFailed      = "request_already_failed"
	reasonMissingFile        = "missing_file"
	reasonPayloadTooLarge    = "payload_too_large"
	reasonRequestTimeout     = "request_timeout"
	reasonInvalidBody        = "invalid_body"
	reasonServerBusy         = "server_busy"
	reasonUnsupportedFormat  = "unsupported_image_format"
	reasonInvalidImage       = "invalid_image"
	reasonInvalidAdminToken  = "invalid_admin_token"
	reasonNotFound           = "not_found"
	reasonMethodNotAllowed   = "method_not_allowed"
	reasonInternal           = "internal_error"
)

// reasonLabels are the values the reason label of the upsize metrics may take: every reason without its
// id, "" for answers that are not errors; anything else is "other".
var reasonLabels = map[string]bool{"": true, "no_input_image": true, "premium_collection": true, "unknown_model": true,
	"no_request": true, "no_user": true, "invalid_field": true, "upsize_failed": true, "no_model_exception": true,
	reasonNotLoggedIn:        true,
	reasonWrongAPIKey:        true,
	reasonAPIKeyExpired:      true,
	reasonInvalidPlatform:    true,
	reasonInvalidRequestID:   true,
	reasonMissingRequestID:   true,
	reasonUserCanceled:       true,
	reasonRequestIDReused:    true,
	reasonAlreadyUpscaled:    true,
	reasonFailedBilling:      true,
	reasonInvalidScaleSize:   true,
	reasonFree4K:             true,
	reasonNoModel:            true,
	reasonNoCreditCost:       true,
	reasonImageTooLarge:      true,
	reasonQueueFull:          true,
	reasonTooManyRequests:    true,
	reasonNotEnoughCredit:    true,
	reasonQueueUnavailable:   true,
	reasonServiceUnavailable: true,
	reasonAlreadyCompleted:   true,
	reasonAlreadyFailed:      true,
	reasonMissingFile:        true,
	reasonPayloadTooLarge:    true,
	reasonRequestTimeout:     true,
	reasonInvalidBody:        true,
	reasonServerBusy:         true,
	reasonUnsupportedFormat:  true,
	reasonInvalidImage:       true,
	reasonInvalidAdminToken:  true,
	reasonNotFound:           true,
	reasonMethodNotAllowed:   true,
	reasonInternal:           true,
}

func reasonNoInputImage(id string) string { return fmt.Sprintf("no_input_image (%s)", echo(id)) }
func reasonPremium(id int64) string       { return fmt.Sprintf("premium_collection(%d)", id) }
func reasonUnknownModel(m string) string  { return fmt.Sprintf("unknown_model (%s)", echo(m)) }
func reasonNoRequest(rid string) string   { return fmt.Sprintf("no_request (%s)", echo(rid)) }
func reasonNoUser(id string) string       { return fmt.Sprintf("no_user (%s)", echo(id)) }
func reasonInvalidField(n string) string  { return fmt.Sprintf("invalid_field (%s)", echo(n)) }

// maxEcho bounds what an error repeats of the client's input: every valid id (request ids are up to 128
// characters) is echoed whole, a megabyte of path is not.
const maxEcho = 128

// echo cuts s to maxEcho bytes (on a character boundary) and marks the cut with "…". Bytes that are not
// UTF-8 become "?", so the JSON encoder does not grow them.
func echo(s string) string {
	s = strings.ToValidUTF8(s, "?")
	if len(s) <= maxEcho {
		return s
	}
	cut := maxEcho
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// fail answers the error envelope {"success": false, "code": status, "data": reason} and stops the chain.
func fail(c *gin.Context, status int, reason string) {
	c.Set(ctxReason, reason)
	dropUnreadBody(c)
	c.AbortWithStatusJSON(status, gin.H{"success": false, "code": status, "data": reason})
}

// unavailable answers a failure of Redis or the blob store: the client may retry.
func unavailable(c *gin.Context, reason string, err error) {
	c.Set(ctxErr, err)
	c.Header("Retry-After", "1")
	fail(c, http.StatusServiceUnavailable, reason)
}

// imageDTO is the seed's EditImageDto.
type imageDTO struct {
	ImageID    int64       `json:"imageId"`
	Resolution string      `json:"resolution"`
	ScaleSize  string      `json:"scaleSize"`
	OwnerID    int64       `json:"ownerId"`
	EditInfo   editInfoDTO `json:"EditInfo"`
}

// editInfoDTO is the seed's PickTypeClass: all six fields, always present.
type editInfoDTO struct {
	OriginalPrompt string `json:"originalPrompt"`
	Super          string `json:"super"`
	Main           string `json:"main"`
	VariationID    int64  `json:"variationId"`
	GroupID        string `json:"groupId"`
	BlurReason     string `json:"blurReason"`
}

func toDTO(im store.Image) imageDTO {
	return imageDTO{
		ImageID:    im.ID,
		Resolution: fmt.Sprintf("%dx%d", im.Width, im.Height),
		ScaleSize:  im.Scale,
		OwnerID:    im.OwnerID,
		EditInfo: editInfoDTO{
			OriginalPrompt: im.OriginalPrompt, Super: im.Super, Main: im.Main,
			VariationID: im.VariationID, GroupID: im.GroupID, BlurReason: im.BlurReason,
		},
	}
}

func imageBody(im store.Image) gin.H { return gin.H{"image": toDTO(im)} }
