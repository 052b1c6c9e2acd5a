package callback

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Headers of a delivery.
const (
	// HeaderSignature is "t=<unix seconds>,v1=<hex of HMAC-SHA256(secret, t + "." + body)>". The key is
	// the secret exactly as the admin API showed it (the whole "whsec_…" string, as bytes).
	HeaderSignature = "X-Upsize-Signature"
	// HeaderDelivery names one request's callback: the same on every attempt, so receivers can drop
	// repeats (delivery is at least once).
	HeaderDelivery = "X-Upsize-Delivery"
	// HeaderEvent is the request's final state: completed, canceled or failed.
	HeaderEvent = "X-Upsize-Event"
	UserAgent   = "upsize-callbacks/1"
)

// Sign is the X-Upsize-Signature value of body sent at t. t is signed, so a receiver that checks its age
// cannot be replayed an old delivery; it is the time of each attempt, not of the first one.
func Sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Errors of Verify.
var (
	ErrBadSignatureHeader = errors.New("callback: malformed signature header")
	ErrSignatureMismatch  = errors.New("callback: signature does not match")
	ErrSignatureTooOld    = errors.New("callback: signature timestamp outside the tolerance")
)

// Verify checks a delivery as a receiver would: header is X-Upsize-Signature, body the raw request body.
// The timestamp must be within tolerance of now (either way; tolerance ≤ 0 skips that check), and one
// of the v1 values (several may be given; unknown schemes are ignored) must be the HMAC, compared in
// constant time.
func Verify(secret, header string, body []byte, tolerance time.Duration, now time.Time) error {
	var ts string
	var sigs [][]byte
	for part := range strings.SplitSeq(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return ErrBadSignatureHeader
		}
		switch k {
		case "t":
			if ts != "" {
				return ErrBadSignatureHeader
			}
			ts = v
		case "v1":
			b, err := hex.DecodeString(v)
			if err != nil || len(b) != sha256.Size {
				return ErrBadSignatureHeader
			}
			sigs = append(sigs, b)
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return ErrBadSignatureHeader
	}
	if tolerance > 0 {
		age := now.Sub(time.Unix(sec, 0))
		if age > tolerance || age < -tolerance {
			return ErrSignatureTooOld
		}
	}
	want := mac(secret, ts, body)
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			return nil
		}
	}
	return ErrSignatureMismatch
}
