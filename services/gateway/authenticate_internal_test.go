package gateway

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/handoff-health/handoff/services/auth"
)

// A token refused at the REST edge is logged at WARN with where it came
// from, and without the token; the request goes no further.
func TestRefusedTokensAreLogged(t *testing.T) {
	issuer, err := auth.NewIssuer("https://issuer.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := auth.NewIssuer("https://stranger.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	reached := false
	h := authenticate(issuer.Verifier(), slog.New(slog.NewJSONHandler(&logs, nil)),
		http.HandlerFunc(func(http.ResponseWriter, *http.Request) { reached = true }))
	for _, c := range []struct {
		name, token, log string
		code             int
	}{
		{"another issuer's token", stranger.MustMint(auth.TokenOptions{Subject: "mallory", Clinic: "north", Roles: []auth.Role{auth.RoleCounselor}}),
			"authentication failed", http.StatusUnauthorized},
		{"no token", "", "authentication failed", http.StatusUnauthorized},
		{"a token for every clinic", issuer.MustMint(auth.TokenOptions{Subject: "worker", Clinic: auth.AnyClinic, Roles: []auth.Role{auth.RoleWorker}}),
			"service token refused", http.StatusForbidden},
		// A service role for one clinic is no client's either.
		{"the worker's role for one clinic", issuer.MustMint(auth.TokenOptions{Subject: "admin-made", Clinic: "north", Roles: []auth.Role{auth.RoleWorker}}),
			"service token refused", http.StatusForbidden},
		{"the calendar reader's beside a counselor's", issuer.MustMint(auth.TokenOptions{Subject: "c", Clinic: "north",
			Roles: []auth.Role{auth.RoleCounselor, auth.RoleCalendarReader}}), "service token refused", http.StatusForbidden},
		{"a calendar feed's grant", issuer.MustMint(auth.TokenOptions{Subject: "c", Clinic: "north", Roles: []auth.Role{auth.RoleCalendarFeed}}),
			"service token refused", http.StatusForbidden},
	} {
		logs.Reset()
		req := httptest.NewRequest(http.MethodGet, "http://gateway.internal/v1/clinics/north/families", nil)
		req.RemoteAddr = "203.0.113.9:4711"
		if c.token != "" {
			req.Header.Set("Authorization", "Bearer "+c.token)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != c.code || reached {
			t.Errorf("%s: status %d, reached the API %v; want %d, not reached", c.name, rec.Code, reached, c.code)
		}
		line := logs.String()
		if !strings.Contains(line, c.log) || !strings.Contains(line, "203.0.113.9:4711") || !strings.Contains(line, `"level":"WARN"`) {
			t.Errorf("%s: log %q; want a WARN %q with the remote address", c.name, line, c.log)
		}
		if c.token != "" && strings.Contains(line, c.token) {
			t.Errorf("%s: the token is in the log", c.name)
		}
	}
}

// A token that cannot be checked because the key set is out of reach is a
// 503, and the operator's log says why the keys could not be fetched: the
// caller hears nothing of it.
func TestKeysOutOfReachAreLoggedWithTheirCause(t *testing.T) {
	issuer, err := auth.NewIssuer("https://issuer.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	v := &auth.Verifier{Issuer: "https://issuer.test", Audience: "handoff",
		Keys: &auth.JWKS{URL: "http://127.0.0.1:1/internal-idp/jwks", MinRefresh: time.Millisecond}}
	var logs bytes.Buffer
	h := authenticate(v, slog.New(slog.NewJSONHandler(&logs, nil)), http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		t.Error("served without a checked token")
	}))
	req := httptest.NewRequest(http.MethodGet, "http://gateway.internal/v1/clinics/north/families", nil)
	req.Header.Set("Authorization", "Bearer "+issuer.MustMint(auth.TokenOptions{Subject: "c", Clinic: "north", Roles: []auth.Role{auth.RoleCounselor}}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusServiceUnavailable || strings.Contains(rec.Body.String(), "internal-idp") {
		t.Fatalf("%d %s; want 503 without the keys' address", rec.Code, rec.Body)
	}
	if line := logs.String(); !strings.Contains(line, "signing keys unavailable") || !strings.Contains(line, "internal-idp") {
		t.Fatalf("log %q; want the cause, which names the key set's address", line)
	}
}
