package webhooks

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Headers of every notification.
const (
	// SignatureHeader carries "t=<unix seconds>,v1=<hex HMAC-SHA256>".
	SignatureHeader = "Handoff-Webhook-Signature"
	// IDHeader carries the delivery id: the same on every retry, so a
	// receiver can drop a notification it already processed.
	IDHeader = "Handoff-Webhook-Id"
)

// ReplayWindow is how far a signature's timestamp may be from the
// receiver's clock, either way.
const ReplayWindow = 5 * time.Minute

// Errors of Verify.
var (
	ErrMalformedSignature = errors.New("webhooks: malformed signature header")
	ErrStaleSignature     = errors.New("webhooks: signature timestamp outside the replay window")
	ErrBadSignature       = errors.New("webhooks: signature does not match")
)

// Sign returns the signature header value for body sent at t: one v1
// value for secret and one for each of more (a rotated secret, in its
// grace), all over the same timestamp.
func Sign(secret string, t time.Time, body []byte, more ...string) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	h := "t=" + ts
	for _, s := range append([]string{secret}, more...) {
		h += ",v1=" + hex.EncodeToString(mac(s, ts, body))
	}
	return h
}

func mac(secret, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Verify checks a notification as a receiver should: header is the
// Handoff-Webhook-Signature value, body the raw request body, now the
// receiver's clock. A timestamp more than ReplayWindow away from now is
// refused, so a captured notification cannot be replayed later; any v1
// value that matches is accepted (several appear while a secret rotates).
func Verify(secret, header string, body []byte, now time.Time) error {
	var ts string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return ErrMalformedSignature
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			b, err := hex.DecodeString(v)
			if err != nil || len(b) != sha256.Size {
				return ErrMalformedSignature
			}
			sigs = append(sigs, b)
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return ErrMalformedSignature
	}
	if d := now.Sub(time.Unix(sec, 0)); d > ReplayWindow || d < -ReplayWindow {
		return ErrStaleSignature
	}
	want := mac(secret, ts, body)
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			return nil
		}
	}
	return ErrBadSignature
}
