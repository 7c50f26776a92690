package interventions

import (
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// calendarEvent is one VEVENT of a feed. It carries times and identifiers
// only: calendars sync to phones and third-party servers, so no name, note
// or health detail goes in.
type calendarEvent struct {
	uid, resource, summary string
	start, end             time.Time
	created, modified      time.Time
	// sequence grows with every change, so calendars replace their copy.
	sequence  int64
	cancelled bool
	// allDay events span the UTC dates of start to end (exclusive), and
	// do not make their reader busy: notices, not meetings.
	allDay bool
	// note is the description of an event that names no resource.
	note string
}

// renderCalendar writes events as an iCalendar stream (RFC 5545).
func renderCalendar(events []calendarEvent) string {
	var b strings.Builder
	w := func(name, value string) { writeLine(&b, name+":"+value) }
	w("BEGIN", "VCALENDAR")
	w("VERSION", "2.0")
	w("PRODID", "-//Handoff//Calendar feed//EN")
	// No METHOD: with one, DTSTAMP would have to be when the stream was
	// made (RFC 5545 3.8.7.2), and a feed is not a scheduling message.
	w("CALSCALE", "GREGORIAN")
	w("X-WR-CALNAME", "Handoff")
	// How often subscribers should read the feed again (RFC 7986, and the
	// older name some clients know).
	w("REFRESH-INTERVAL;VALUE=DURATION", "PT15M")
	w("X-PUBLISHED-TTL", "PT15M")
	for _, e := range events {
		w("BEGIN", "VEVENT")
		w("UID", escapeText(e.uid))
		// Without METHOD, DTSTAMP is when the event last changed (RFC 5545
		// 3.8.7.2).
		w("DTSTAMP", icalTime(e.modified))
		w("CREATED", icalTime(e.created))
		w("LAST-MODIFIED", icalTime(e.modified))
		w("SEQUENCE", strconv.FormatInt(e.sequence, 10))
		if e.allDay {
			w("DTSTART;VALUE=DATE", icalDate(e.start))
			w("DTEND;VALUE=DATE", icalDate(e.end))
		} else {
			w("DTSTART", icalTime(e.start))
			w("DTEND", icalTime(e.end))
		}
		// A cancelled event says so in its summary and does not block the
		// time as well as in STATUS: some subscribing clients ignore
		// STATUS in a published feed and would show it on, and busy.
		summary, status, transp := e.summary, "CONFIRMED", "OPAQUE"
		if e.cancelled {
			summary, status, transp = "Cancelled: "+e.summary, "CANCELLED", "TRANSPARENT"
		}
		if e.allDay {
			transp = "TRANSPARENT"
		}
		description := "Handoff: " + e.resource
		if e.resource == "" {
			description = e.note
		}
		w("SUMMARY", escapeText(summary))
		w("DESCRIPTION", escapeText(description))
		w("STATUS", status)
		w("TRANSP", transp)
		if e.resource != "" {
			w("X-HANDOFF-RESOURCE", escapeText(e.resource))
		}
		w("END", "VEVENT")
	}
	if len(events) == 0 {
		// A calendar holds at least one component (RFC 5545 3.4), and
		// strict clients refuse an empty one: a week without meetings
		// gets the time zone every time here is in.
		for _, l := range []string{"BEGIN:VTIMEZONE", "TZID:UTC", "BEGIN:STANDARD", "DTSTART:19700101T000000",
			"TZOFFSETFROM:+0000", "TZOFFSETTO:+0000", "TZNAME:UTC", "END:STANDARD", "END:VTIMEZONE"} {
			writeLine(&b, l)
		}
	}
	w("END", "VCALENDAR")
	return b.String()
}

func icalTime(t time.Time) string { return t.UTC().Format("20060102T150405Z") }

func icalDate(t time.Time) string { return t.UTC().Format("20060102") }

// escapeText escapes a TEXT value (RFC 5545 3.3.11).
var textEscaper = strings.NewReplacer(`\`, `\\`, ";", `\;`, ",", `\,`, "\r\n", `\n`, "\n", `\n`, "\r", `\n`)

func escapeText(s string) string { return textEscaper.Replace(s) }

// writeLine writes a content line folded at 75 octets, never inside a UTF-8
// sequence, each physical line ended by CRLF (RFC 5545 3.1).
func writeLine(b *strings.Builder, line string) {
	const limit = 75
	n := 0
	for i := 0; i < len(line); {
		_, size := utf8.DecodeRuneInString(line[i:])
		if n+size > limit {
			b.WriteString("\r\n ") // the continuation's space counts toward its 75
			n = 1
		}
		b.WriteString(line[i : i+size])
		n += size
		i += size
	}
	b.WriteString("\r\n")
}
