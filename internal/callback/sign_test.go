package callback

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestSignMatchesTheSpec(t *testing.T) {
	const secret = "whsec_test"
	body := []byte(`{"requestId":"r1","state":"canceled"}`)
	at := time.Unix(1700000000, 0)
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("1700000000." + string(body)))
	want := "t=1700000000,v1=" + hex.EncodeToString(m.Sum(nil))
	if got := Sign(secret, at, body); got != want {
		t.Fatalf("Sign = %s, want %s", got, want)
	}
}

func TestVerify(t *testing.T) {
	const secret = "whsec_test"
	body := []byte(`{"requestId":"r1","state":"completed"}`)
	now := time.Now()
	h := Sign(secret, now, body)
	if err := Verify(secret, h, body, 5*time.Minute, now.Add(time.Minute)); err != nil {
		t.Fatalf("valid: %v", err)
	}
	other := Sign("whsec_old", now, body)
	if err := Verify(secret, other+","+h[strings.Index(h, "v1="):], body, time.Minute, now); err != nil {
		t.Errorf("second v1 of a rotated secret: %v", err)
	}
	for name, c := range map[string]struct {
		secret, header string
		body           []byte
		now            time.Time
		want           error
	}{
		"other body":      {secret, h, []byte(`{"requestId":"r1","state":"failed"}`), now, ErrSignatureMismatch},
		"other secret":    {"whsec_other", h, body, now, ErrSignatureMismatch},
		"too old":         {secret, h, body, now.Add(6 * time.Minute), ErrSignatureTooOld},
		"from the future": {secret, h, body, now.Add(-6 * time.Minute), ErrSignatureTooOld},
		"no header":       {secret, "", body, now, ErrBadSignatureHeader},
		"no v1":           {secret, h[:strings.Index(h, ",")], body, now, ErrBadSignatureHeader},
		"no t":            {secret, h[strings.Index(h, ",")+1:], body, now, ErrBadSignatureHeader},
		"two t":           {secret, "t=1," + h, body, now, ErrBadSignatureHeader},
		"bad hex":         {secret, "t=1,v1=zz", body, now, ErrBadSignatureHeader},
		"short mac":       {secret, "t=1,v1=abcd", body, now, ErrBadSignatureHeader},
		"garbage":         {secret, "nonsense", body, now, ErrBadSignatureHeader},
	} {
		if err := Verify(c.secret, c.header, c.body, 5*time.Minute, c.now); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
	if err := Verify(secret, h, body, 0, now.Add(24*time.Hour)); err != nil {
		t.Errorf("tolerance 0 checks no age: %v", err)
	}
}
