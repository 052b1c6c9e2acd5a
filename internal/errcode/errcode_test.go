package errcode

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"upsize/internal/imageops"
)

func TestReasonsAreSpelledAsTheContract(t *testing.T) {
	for _, c := range []struct {
		got  *Error
		code int
		data string
	}{
		{NoInputImage.With("42"), 404, "no_input_image (42)"},
		{PremiumCollection.With("42"), 403, "premium_collection(42)"},
		{NoModel.With("upsize"), 422, "no_model_exception (upsize)"},
		{UnknownModel.With("bicubic9"), 422, "unknown_model (bicubic9)"},
		{NotLoggedIn.E(), 403, "not_logged_in"},
		{UserCanceled.E(), 409, "user_canceled_request"},
		{QueueFull.E(), 429, "queue_full"},
	} {
		if c.got.Code.Status != c.code || c.got.Data != c.data {
			t.Errorf("got %d %q, want %d %q", c.got.Code.Status, c.got.Data, c.code, c.data)
		}
	}
}

func TestLabelsAreAFixedSet(t *testing.T) {
	for data, want := range map[string]string{
		"":                            "",
		"no_input_image (42)":         "no_input_image",
		"premium_collection(7)":       "premium_collection",
		"no_model_exception (upsize)": "no_model_exception",
		"invalid_image":               "invalid_image",
		"made_up (x)":                 "other",
		strings.Repeat("a", 1000):     "other",
	} {
		if got := Label(data); got != want {
			t.Errorf("Label(%.30q) = %q, want %q", data, got, want)
		}
	}
	seen := map[string]bool{}
	for _, l := range Labels() {
		seen[l] = true
	}
	for name := range all {
		if Label(name) != name || !seen[name] {
			t.Errorf("%s is not its own label", name)
		}
	}
}

func TestImageErrorsMapOnce(t *testing.T) {
	for err, want := range map[error]string{
		fmt.Errorf("x: %w", imageops.ErrInvalidImage): "invalid_image",
		fmt.Errorf("x: %w", imageops.ErrTooLarge):     "image_too_large",
		imageops.ErrUnsupportedFormat:                 "unsupported_image_format",
		errors.New("disk full"):                       "",
	} {
		got := FromImage(err)
		if (want == "") != (got == nil) || (got != nil && got.Data != want) {
			t.Errorf("FromImage(%v) = %v, want %q", err, got, want)
		}
	}
}

func TestEchoIsBounded(t *testing.T) {
	long := strings.Repeat("x", 100_000)
	if got := NoRequest.With(long).Data; len(got) > len("no_request ()")+maxEcho+len("…") {
		t.Fatalf("echoed %d bytes", len(got))
	}
	if got := NoRequest.With("req-1").Data; got != "no_request (req-1)" {
		t.Fatalf("short id echoed as %q", got)
	}
}

// FuzzEcho: a cut echo is short, and valid UTF-8 whatever its input.
func FuzzEcho(f *testing.F) {
	f.Add(strings.Repeat("é", 100))
	f.Add("short")
	f.Add("\x83\xff")
	f.Fuzz(func(t *testing.T, s string) {
		e := echo(s)
		if len(e) > maxEcho+len("…") || !utf8.ValidString(e) {
			t.Fatalf("echo(%q) = %q", s, e)
		}
	})
}
