package servicetest

import (
	"encoding/base64"
	"encoding/json"
	"testing"
)

// PageTokenAfter is the key a page token (aip.EncodePageToken's) resumes
// after, as a client can read it: tests check that it names no record the
// page left out.
func PageTokenAfter(t testing.TB, token string) string {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(token)
	var tok struct {
		After string `json:"a"`
	}
	if err != nil || json.Unmarshal(b, &tok) != nil {
		t.Fatalf("page token %q does not decode", token)
	}
	return tok.After
}
