package interventions

import (
	"strings"
	"testing"
	"time"
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

// A feed with no events still holds a component (RFC 5545 3.4: strict
// clients refuse an empty calendar); one with events needs none besides.
func TestCalendarAlwaysHoldsAComponent(t *testing.T) {
	empty := renderCalendar(nil)
	begins := strings.Count(empty, "\r\nBEGIN:")
	if begins < 1 || !strings.Contains(empty, "BEGIN:VTIMEZONE\r\nTZID:UTC\r\n") || !strings.HasSuffix(empty, "END:VTIMEZONE\r\nEND:VCALENDAR\r\n") {
		t.Fatalf("empty feed:\n%s", empty)
	}
	now := time.Now()
	one := renderCalendar([]calendarEvent{{uid: "u", resource: "r", summary: "s", start: now, end: now.Add(time.Hour), created: now, modified: now}})
	if strings.Contains(one, "VTIMEZONE") || !strings.Contains(one, "BEGIN:VEVENT") {
		t.Fatalf("feed with an event:\n%s", one)
	}
}

// A cancelled event says so three ways: STATUS, its summary, and not
// blocking the time, as some subscribing clients ignore STATUS in a
// published feed. A confirmed one blocks it.
func TestCancelledEventsSayItWhereverClientsLook(t *testing.T) {
	now := time.Now()
	ev := calendarEvent{uid: "u", resource: "r", summary: "Family intervention", start: now, end: now.Add(time.Hour), created: now, modified: now}
	on := renderCalendar([]calendarEvent{ev})
	ev.cancelled = true
	off := renderCalendar([]calendarEvent{ev})
	for _, want := range []string{"\r\nSUMMARY:Family intervention\r\n", "\r\nSTATUS:CONFIRMED\r\n", "\r\nTRANSP:OPAQUE\r\n"} {
		if !strings.Contains(on, want) {
			t.Errorf("confirmed event lacks %q:\n%s", want, on)
		}
	}
	for _, want := range []string{"\r\nSUMMARY:Cancelled: Family intervention\r\n", "\r\nSTATUS:CANCELLED\r\n", "\r\nTRANSP:TRANSPARENT\r\n"} {
		if !strings.Contains(off, want) {
			t.Errorf("cancelled event lacks %q:\n%s", want, off)
		}
	}
}
