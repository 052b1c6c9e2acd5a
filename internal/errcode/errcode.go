// Package errcode is the one list of the service's error answers: each code's HTTP status and its reason
// (the "data" of the envelope {"success": false, "code": status, "data": reason}), spelled exactly as
// SPEC.md and the seed spell them. The HTTP layer answers them, the worker records them as a request's
// failure, and metrics label by their names. It knows nothing of HTTP beyond status numbers.
package errcode

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unicode/utf8"

	"upsize/internal/imageops"
)

// Code is one kind of error answer.
type Code struct {
	Status int
	// Name is the reason, or for reasons that carry an id the part before it ("no_input_image").
	Name string
	// format shows the id in the reason ("no_input_image (%s)"); "" for reasons without one.
	format string
}

// Error is an error answer: a code and its reason text.
type Error struct {
	Code Code
	Data string // the envelope's data
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s", e.Code.Status, e.Data) }

// E is the answer of a code without an id.
func (c Code) E() *Error {
	if c.format != "" {
		panic("errcode: " + c.Name + " needs an id")
	}
	return &Error{Code: c, Data: c.Name}
}

// With is the answer of a code that carries an id, echoed as the client sent it (cut to maxEcho bytes).
func (c Code) With(id string) *Error {
	if c.format == "" {
		return c.E()
	}
	return &Error{Code: c, Data: fmt.Sprintf(c.format, echo(id))}
}

func code(status int, name string) Code { return register(Code{Status: status, Name: name}) }

func withID(status int, name, format string) Code {
	return register(Code{Status: status, Name: name, format: format})
}

var all = map[string]Code{}

func register(c Code) Code {
	if _, dup := all[c.Name]; dup {
		panic("errcode: " + c.Name + " defined twice")
	}
	all[c.Name] = c
	return c
}

// The codes, in SPEC's order where it has one.
var (
	// Authentication (rule 1) and the admin token.
	NotLoggedIn       = code(http.StatusForbidden, "not_logged_in")
	WrongAPIKey       = code(http.StatusUnauthorized, "wrong_api_key")
	APIKeyExpired     = code(http.StatusUnauthorized, "api_key_expired")
	InvalidAdminToken = code(http.StatusUnauthorized, "invalid_admin_token")

	// Upsize rules 2-14.
	InvalidPlatform    = code(http.StatusBadRequest, "invalid_platform")
	InvalidRequestID   = code(http.StatusBadRequest, "invalid_request_id")
	CallbackNotAllowed = code(http.StatusBadRequest, "callback_not_allowed")
	UserCanceled       = code(http.StatusConflict, "user_canceled_request")
	RequestIDReused    = code(http.StatusUnprocessableEntity, "request_id_reused")
	NoInputImage       = withID(http.StatusNotFound, "no_input_image", "no_input_image (%s)")
	PremiumCollection  = withID(http.StatusForbidden, "premium_collection", "premium_collection(%s)")
	AlreadyUpscaled    = code(http.StatusForbidden, "cannot_upscale_already_upscaled_image")
	FailedBilling      = code(http.StatusForbidden, "failed_billing")
	InvalidScaleSize   = code(http.StatusBadRequest, "invalid_scale_size")
	Free4K             = code(http.StatusForbidden, "free_user_cannot_use_4k")
	NoModel            = withID(http.StatusUnprocessableEntity, "no_model_exception", "no_model_exception (%s)")
	UnknownModel       = withID(http.StatusUnprocessableEntity, "unknown_model", "unknown_model (%s)")
	NoCreditCost       = code(http.StatusUnprocessableEntity, "no_credit_cost_info_at_admin")
	ImageTooLarge      = code(http.StatusUnprocessableEntity, "image_too_large")
	TooManyRequests    = code(http.StatusTooManyRequests, "too_many_requests")
	QueueFull          = code(http.StatusTooManyRequests, "queue_full")
	NotEnoughCredit    = code(http.StatusPaymentRequired, "not_enough_credit")
	UpsizeFailed       = code(http.StatusInternalServerError, "upsize_failed")
	QueueUnavailable   = code(http.StatusServiceUnavailable, "queue_unavailable")
	ServiceUnavailable = code(http.StatusServiceUnavailable, "service_unavailable")
	ServerBusy         = code(http.StatusServiceUnavailable, "server_busy")

	// Cancel and request states.
	MissingRequestID = code(http.StatusBadRequest, "missing_request_id")
	AlreadyCompleted = code(http.StatusConflict, "request_already_completed")
	AlreadyFailed    = code(http.StatusConflict, "request_already_failed")
	NoRequest        = withID(http.StatusNotFound, "no_request", "no_request (%s)")

	// Uploads and bodies.
	MissingFile       = code(http.StatusBadRequest, "missing_file")
	InvalidBody       = code(http.StatusBadRequest, "invalid_body")
	PayloadTooLarge   = code(http.StatusRequestEntityTooLarge, "payload_too_large")
	RequestTimeout    = code(http.StatusRequestTimeout, "request_timeout")
	UnsupportedFormat = code(http.StatusUnsupportedMediaType, "unsupported_image_format")
	InvalidImage      = code(http.StatusUnprocessableEntity, "invalid_image")

	// Admin.
	NoUser       = withID(http.StatusNotFound, "no_user", "no_user (%s)")
	InvalidField = withID(http.StatusBadRequest, "invalid_field", "invalid_field (%s)")

	// Routing and the unexpected.
	NotFound         = code(http.StatusNotFound, "not_found")
	MethodNotAllowed = code(http.StatusMethodNotAllowed, "method_not_allowed")
	Internal         = code(http.StatusInternalServerError, "internal_error")
)

// Label is the metric label of a reason text: its code's name, "" for none, "other" for text that is
// not one of the codes (labels stay a fixed set whatever a request carried).
func Label(data string) string {
	if data == "" {
		return ""
	}
	name := data
	if i := strings.IndexByte(name, '('); i > 0 {
		name = strings.TrimSpace(name[:i])
	}
	if _, ok := all[name]; ok {
		return name
	}
	return "other"
}

// Labels lists every label value Label can return.
func Labels() []string {
	out := []string{"", "other"}
	for name := range all {
		out = append(out, name)
	}
	return out
}

// FromImage maps an imageops error to the answer it deserves, or nil when it is not a judgement of the
// image (a passing failure such as a write error).
func FromImage(err error) *Error {
	switch {
	case errors.Is(err, imageops.ErrUnsupportedFormat):
		return UnsupportedFormat.E()
	case errors.Is(err, imageops.ErrTooLarge):
		return ImageTooLarge.E()
	case errors.Is(err, imageops.ErrInvalidImage):
		return InvalidImage.E()
	}
	return nil
}

// maxEcho bounds what an answer repeats of the client's input: every valid id (request ids are up to 128
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
