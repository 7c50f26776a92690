package main

import (
	"bytes"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/handoff-health/handoff/services/auth"
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
	}{
		{"clinic administrator", mint(iss, "north", auth.RoleClinicAdmin), "north"},
		{"administrator and EHR", mint(iss, "north", auth.RoleClinicAdmin, auth.RoleEHR), ""},
		{"counselor", mint(iss, "north", auth.RoleCounselor), ""},
		{"every clinic", mint(iss, auth.AnyClinic, auth.RoleClinicAdmin), ""},
		{"another issuer", mint(other, "north", auth.RoleClinicAdmin), ""},
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
	}
}
