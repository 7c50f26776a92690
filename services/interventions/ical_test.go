package interventions

import (
	"strings"
	"testing"
	"time"
)

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
