package main

import (
	"bytes"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/workflows/codec"
)

// The payload codec opens payloads for a clinic administrator of one
// clinic only: not for a token that also carries the EHR role, nor for
// one of every clinic; a refused token is told only that it is invalid,
// and the operator reads why.
func TestCodecAccess(t *testing.T) {
	iss, err := auth.NewIssuer("https://issuer.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	other, err := auth.NewIssuer("https://elsewhere.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	access := codecAccess(slog.New(slog.NewJSONHandler(&logs, nil)), iss.Verifier())
	mint := func(i *auth.Issuer, clinic string, roles ...auth.Role) string {
		return i.MustMint(auth.TokenOptions{Subject: "u1", Clinic: clinic, Roles: roles})
	}
	for _, c := range []struct {
		name, token, clinic string
		status              int // told the caller, for a refusal
	}{
		{"clinic administrator", mint(iss, "north", auth.RoleClinicAdmin), "north", 0},
		{"administrator and EHR", mint(iss, "north", auth.RoleClinicAdmin, auth.RoleEHR), "", http.StatusForbidden},
		{"counselor", mint(iss, "north", auth.RoleCounselor), "", http.StatusForbidden},
		{"every clinic", mint(iss, auth.AnyClinic, auth.RoleClinicAdmin), "", http.StatusForbidden},
		{"another issuer", mint(other, "north", auth.RoleClinicAdmin), "", http.StatusUnauthorized},
	} {
		logs.Reset()
		r := httptest.NewRequest("POST", "http://gateway.internal/codec/decode", nil)
		r.Header.Set("Authorization", "Bearer "+c.token)
		clinic, err := access(r)
		if clinic != c.clinic || (err == nil) != (c.clinic != "") {
			t.Errorf("%s: clinic %q, %v; want %q", c.name, clinic, err, c.clinic)
		}
		if err != nil && (strings.Contains(err.Error(), "elsewhere") || strings.Contains(err.Error(), "issuer")) {
			t.Errorf("%s: the caller is told %q", c.name, err)
		}
		if err != nil && !strings.Contains(logs.String(), `"level":"WARN"`) {
			t.Errorf("%s: refused without a warning in the log: %s", c.name, logs.String())
		}
		if got := refusalStatus(err); err != nil && got != c.status {
			t.Errorf("%s: told %d; want %d", c.name, got, c.status)
		}
	}
}

// refusalStatus is the status the codec's handler tells the caller for
// an authorize error.
func refusalStatus(err error) int {
	var rf *codec.Refusal
	if errors.As(err, &rf) {
		return rf.Status
	}
	return http.StatusUnauthorized
}

// A token that cannot be checked because the key set is out of reach is a
// 503, logged as an error with its cause, not a failed sign-in: the
// administrator's token is not at fault.
func TestCodecAccessWithTheKeysOutOfReach(t *testing.T) {
	iss, err := auth.NewIssuer("https://issuer.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	v := &auth.Verifier{Issuer: "https://issuer.test", Audience: "handoff",
		Keys: &auth.JWKS{URL: "http://127.0.0.1:1/internal-idp/jwks", MinRefresh: time.Millisecond}}
	var logs bytes.Buffer
	access := codecAccess(slog.New(slog.NewJSONHandler(&logs, nil)), v)
	r := httptest.NewRequest("POST", "http://gateway.internal/codec/decode", nil)
	r.Header.Set("Authorization", "Bearer "+iss.MustMint(auth.TokenOptions{Subject: "u1", Clinic: "north", Roles: []auth.Role{auth.RoleClinicAdmin}}))
	clinic, err := access(r)
	if clinic != "" || refusalStatus(err) != http.StatusServiceUnavailable || strings.Contains(err.Error(), "internal-idp") {
		t.Fatalf("clinic %q, %v (status %d); want a 503 that does not name the keys' address", clinic, err, refusalStatus(err))
	}
	if !strings.Contains(logs.String(), `"level":"ERROR"`) || !strings.Contains(logs.String(), "127.0.0.1:1") ||
		strings.Contains(logs.String(), "authentication failed") {
		t.Fatalf("log %s; want an error naming why the keys could not be fetched, and no failed sign-in", logs.String())
	}
}
