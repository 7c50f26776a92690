package audit

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// What the caller sent is recorded before it is validated: a name of
// 100,000 characters is cut, on a character boundary, and marked.
func TestLongFieldsAreCut(t *testing.T) {
	long := "clinics/north/families/" + strings.Repeat("é", 50_000)
	e := Event{Resource: long, RequestID: strings.Repeat("r", 1000), Method: "/m"}.clean()
	for _, f := range []string{e.Resource, e.RequestID} {
		if len(f) > maxField+len("…") || !strings.HasSuffix(f, "…") || !utf8.ValidString(f) {
			t.Fatalf("cut to %d bytes, valid %v, ends %q", len(f), utf8.ValidString(f), f[len(f)-4:])
		}
	}
	if !strings.HasPrefix(e.Resource, "clinics/north/families/é") {
		t.Fatalf("cut from the wrong end: %q", e.Resource[:40])
	}
	if short := (Event{Resource: "clinics/north"}).clean(); short.Resource != "clinics/north" {
		t.Fatalf("a short name changed: %q", short.Resource)
	}
}
