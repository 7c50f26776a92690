package interventions

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// Long lines fold at 75 octets without splitting a character, and TEXT
// values escape what would end or split them.
func TestContentLines(t *testing.T) {
	var b strings.Builder
	long := strings.Repeat("ü,é;", 40)
	writeLine(&b, "DESCRIPTION:"+escapeText(long+"\nnext\\"))
	out := b.String()
	if !strings.HasSuffix(out, "\r\n") {
		t.Fatal("no CRLF at the end")
	}
	lines := strings.Split(strings.TrimSuffix(out, "\r\n"), "\r\n")
	if len(lines) < 3 {
		t.Fatalf("not folded: %q", out)
	}
	for i, l := range lines {
		if len(l) > 75 || !utf8.ValidString(l) || (i > 0 && !strings.HasPrefix(l, " ")) {
			t.Fatalf("line %d: %q", i, l)
		}
	}
	unfolded := strings.ReplaceAll(strings.TrimSuffix(out, "\r\n"), "\r\n ", "")
	want := "DESCRIPTION:" + strings.Repeat(`ü\,é\;`, 40) + `\nnext\\`
	if unfolded != want {
		t.Fatalf("unfolded %q\nwant %q", unfolded, want)
	}
}
