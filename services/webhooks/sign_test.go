package webhooks_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/handoff-health/handoff/services/webhooks"
)

func TestVerify(t *testing.T) {
	const secret = "whsec_test"
	body := []byte(`{"id":"d1","type":"handoff.referrals.v1.referral.accepted"}`)
	now := time.Unix(1_800_000_000, 0)
	header := webhooks.Sign(secret, now, body)
	if !strings.HasPrefix(header, "t=1800000000,v1=") {
		t.Fatalf("header %q", header)
	}
	cases := []struct {
		name   string
		secret string
		header string
		body   []byte
		now    time.Time
		want   error
	}{
		{"valid", secret, header, body, now, nil},
		{"valid a little later", secret, header, body, now.Add(4 * time.Minute), nil},
		{"receiver clock a little behind", secret, header, body, now.Add(-4 * time.Minute), nil},
		{"tampered body", secret, header, []byte(strings.Replace(string(body), "accepted", "rejected", 1)), now, webhooks.ErrBadSignature},
		{"wrong secret", "whsec_other", header, body, now, webhooks.ErrBadSignature},
		{"stale", secret, header, body, now.Add(6 * time.Minute), webhooks.ErrStaleSignature},
		{"from the future", secret, header, body, now.Add(-6 * time.Minute), webhooks.ErrStaleSignature},
		{"timestamp changed", secret, strings.Replace(header, "t=1800000000", "t=1800000001", 1), body, now, webhooks.ErrBadSignature},
		{"no signature", secret, "t=1800000000", body, now, webhooks.ErrMalformedSignature},
		{"no timestamp", secret, header[strings.Index(header, "v1="):], body, now, webhooks.ErrMalformedSignature},
		{"garbage", secret, "hello", body, now, webhooks.ErrMalformedSignature},
		{"rotation: second v1 matches", secret, "t=1800000000,v1=" + strings.Repeat("ab", 32) + "," + header[strings.Index(header, "v1="):], body, now, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := webhooks.Verify(c.secret, c.header, c.body, c.now); !errors.Is(err, c.want) {
				t.Fatalf("Verify = %v, want %v", err, c.want)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	base, limit := time.Second, time.Minute
	low := func() float64 { return 0 }
	high := func() float64 { return 0.999999 }
	var prev time.Duration
	for attempt := 1; attempt <= 12; attempt++ {
		lo, hi := webhooks.Backoff(attempt, base, limit, low), webhooks.Backoff(attempt, base, limit, high)
		full := base << (attempt - 1)
		if full > limit {
			full = limit
		}
		if lo != full/2 || hi < full-time.Millisecond || hi > full {
			t.Fatalf("attempt %d: backoff in [%v, %v], want [%v, %v]", attempt, lo, hi, full/2, full)
		}
		if lo < prev {
			t.Fatalf("attempt %d: backoff shrank from %v to %v", attempt, prev, lo)
		}
		prev = lo
	}
	if got := webhooks.Backoff(200, base, limit, high); got > limit {
		t.Fatalf("attempt 200: %v exceeds the cap", got)
	}
}

func TestCheckURL(t *testing.T) {
	cases := []struct {
		url                     string
		insecure, private, okay bool
	}{
		{"https://ehr.example.org/hooks/handoff", false, false, true},
		{"http://ehr.example.org/hooks", false, false, false},
		{"http://ehr.example.org/hooks", true, false, true},
		{"https://127.0.0.1/hooks", false, false, false},
		{"https://127.0.0.1/hooks", false, true, true},
		{"https://localhost:8443/hooks", false, false, false},
		{"https://10.1.2.3/hooks", false, false, false},
		{"https://192.168.0.10/hooks", false, false, false},
		{"https://169.254.169.254/latest/meta-data", false, false, false},
		{"https://[::1]/hooks", false, false, false},
		{"https://[fd00::1]/hooks", false, false, false},
		{"https://[::ffff:127.0.0.1]/hooks", false, false, false},
		{"https://user:pw@ehr.example.org/hooks", false, false, false},
		{"ftp://ehr.example.org/hooks", true, true, false},
		{"https:///hooks", false, false, false},
		{"not a url", true, true, false},
	}
	for _, c := range cases {
		err := webhooks.CheckURL(c.url, c.insecure, c.private)
		if (err == nil) != c.okay {
			t.Errorf("CheckURL(%q, insecure=%v, private=%v) = %v, want ok=%v", c.url, c.insecure, c.private, err, c.okay)
		}
	}
}

// The default attempts outlast an afternoon's outage of the receiver, even
// with every wait at its shortest.
func TestDefaultRetriesOutlastAnAfternoon(t *testing.T) {
	var total time.Duration
	for attempt := 1; attempt < webhooks.DefaultMaxAttempts; attempt++ {
		total += webhooks.Backoff(attempt, 5*time.Second, time.Hour, func() float64 { return 0 })
	}
	if total < 4*time.Hour {
		t.Fatalf("%d attempts give up after %v at the soonest; want at least 4h", webhooks.DefaultMaxAttempts, total)
	}
}
