// Package schedule computes when reminders go out: an offset before an
// event, in the recipient's own time zone, moved out of their quiet hours.
// It is pure and deterministic, so workflows may call it.
package schedule

import (
	"fmt"
	"sort"
	"time"
	// Go's own zone database, used only where the system has none. Where it
	// has one (the worker image does), zones come from it: workers of one
	// image agree, but a history recorded before an image whose zone data
	// changed a zone's rules could place that zone's reminders differently
	// on replay. Zone rules rarely change for times already scheduled.
	_ "time/tzdata"
)

// QuietHours is a daily window, in local clock time, without reminders. It
// may cross midnight (22:00 to 07:00). The zero value has no quiet hours.
type QuietHours struct {
	Start, End string // "HH:MM"
}

// Recipient is who a reminder goes to, with what placing it needs.
type Recipient struct {
	Kind     string // counselor, member, loved_one, supervisor
	ID       string
	Channel  string
	TimeZone string
	Quiet    QuietHours
}

// Planned is one reminder to send at At.
type Planned struct {
	Recipient Recipient
	Offset    time.Duration // before the event
	At        time.Time
}

// Margin is how long before a quiet window starts a reminder is moved to,
// when moving it past the window would be too late for the event.
const Margin = 15 * time.Minute

// Place returns when a reminder meant for event-offset should go out to r:
// out of r's quiet hours, and never after the event. It returns the time
// unchanged for a recipient without quiet hours. Times are computed in the
// recipient's zone (UTC when none is known).
func Place(event time.Time, offset time.Duration, r Recipient) (time.Time, error) {
	loc, qs, qe, err := quietOf(r)
	if err != nil {
		return time.Time{}, err
	}
	at := before(event.In(loc), offset)
	if r.Quiet == (QuietHours{}) {
		return at, nil
	}
	start, end, inside := window(at.In(loc), qs, qe)
	if !inside {
		return at, nil
	}
	if end.Before(event) {
		return end, nil
	}
	return start.Add(-Margin), nil
}

// Awake returns when a message meant for t should go out to r: t itself,
// or, when t falls in r's quiet hours, the end of them, unless that is not
// before by (an event the message is about; zero for none), when t stands:
// a late reminder of tomorrow morning's appointment waits until 08:00, one
// of a meeting at 07:30 does not.
func Awake(t time.Time, r Recipient, by time.Time) (time.Time, error) {
	if r.Quiet == (QuietHours{}) {
		return t, nil
	}
	loc, qs, qe, err := quietOf(r)
	if err != nil {
		return time.Time{}, err
	}
	_, end, inside := window(t.In(loc), qs, qe)
	if !inside || (!by.IsZero() && !end.Before(by)) {
		return t, nil
	}
	return end, nil
}

// QuietFrom returns when r's quiet hours next begin after t, for a message
// due at t to go out before: ok is false when r keeps none, or when t
// falls in them already (a message placed there on purpose, with nothing
// later that would still be in time).
func QuietFrom(t time.Time, r Recipient) (from time.Time, ok bool, err error) {
	if r.Quiet == (QuietHours{}) {
		return time.Time{}, false, nil
	}
	loc, qs, qe, err := quietOf(r)
	if err != nil || qs == qe {
		return time.Time{}, false, err
	}
	lt := t.In(loc)
	if _, _, inside := window(lt, qs, qe); inside {
		return time.Time{}, false, nil
	}
	from = time.Date(lt.Year(), lt.Month(), lt.Day(), qs/60, qs%60, 0, 0, loc)
	if !from.After(lt) {
		from = time.Date(lt.Year(), lt.Month(), lt.Day()+1, qs/60, qs%60, 0, 0, loc)
	}
	return from, true, nil
}

// SendBy returns when a message due at t to r must have gone out, if at
// all: when r's quiet hours next begin (QuietFrom), unless what the
// message is about happens in those hours (by, after their start and not
// after their end; zero for nothing). A message held back then could not
// wait for their end (see Awake) and would go out in them anyway, only
// later: better sent late than failed. About something over before they
// begin, it is still held back: it would be of no use in them.
func SendBy(t time.Time, r Recipient, by time.Time) (time.Time, bool, error) {
	from, ok, err := QuietFrom(t, r)
	if err != nil || !ok || by.IsZero() {
		return from, ok, err
	}
	// from is in them: Awake gives their end.
	if end, err := Awake(from, r, time.Time{}); err == nil && by.After(from) && !end.Before(by) {
		return time.Time{}, false, nil
	}
	return from, true, nil
}

// quietOf is r's zone and, if it has quiet hours, their start and end in
// minutes after midnight.
func quietOf(r Recipient) (loc *time.Location, start, end int, err error) {
	if loc, err = location(r.TimeZone); err != nil || r.Quiet == (QuietHours{}) {
		return loc, 0, 0, err
	}
	if start, err = minutes(r.Quiet.Start); err != nil {
		return nil, 0, 0, err
	}
	if end, err = minutes(r.Quiet.End); err != nil {
		return nil, 0, 0, err
	}
	return loc, start, end, nil
}

// before subtracts offset from t. Whole days are counted on the local
// calendar, so "a day before" keeps the clock time across a daylight-saving
// change; the rest is exact.
func before(t time.Time, offset time.Duration) time.Time {
	days := int(offset / (24 * time.Hour))
	return t.AddDate(0, 0, -days).Add(-(offset - time.Duration(days)*24*time.Hour))
}

// window reports whether t falls in the quiet window and, if so, the
// window's start and end around t.
func window(t time.Time, qs, qe int) (start, end time.Time, inside bool) {
	day := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, t.Location())
	at := func(d time.Time, m int) time.Time {
		return time.Date(d.Year(), d.Month(), d.Day(), m/60, m%60, 0, 0, d.Location())
	}
	m := t.Hour()*60 + t.Minute()
	switch {
	case qs == qe:
		return t, t, false
	case qs < qe: // same day, 12:00 to 14:00
		if m >= qs && m < qe {
			return at(day, qs), at(day, qe), true
		}
	case m >= qs: // crosses midnight, evening part
		return at(day, qs), at(day.AddDate(0, 0, 1), qe), true
	case m < qe: // crosses midnight, morning part
		return at(day.AddDate(0, 0, -1), qs), at(day, qe), true
	}
	return t, t, false
}

func minutes(hhmm string) (int, error) {
	t, err := time.Parse("15:04", hhmm)
	if err != nil {
		return 0, fmt.Errorf("schedule: quiet hours %q: want HH:MM", hhmm)
	}
	return t.Hour()*60 + t.Minute(), nil
}

func location(zone string) (*time.Location, error) {
	if zone == "" {
		return time.UTC, nil
	}
	loc, err := time.LoadLocation(zone)
	if err != nil {
		return nil, fmt.Errorf("schedule: time zone %q: %w", zone, err)
	}
	return loc, nil
}

// Plan places a reminder for every recipient and offset before event. A
// reminder whose time has already passed at now is sent at now, but of
// several such for one recipient only the one nearest the event is kept:
// a meeting booked for tomorrow gets one reminder now, not three. The
// result is ordered by time, then recipient, then offset. A recipient whose
// zone or quiet hours do not parse (stored before they were checked) is
// placed in UTC without quiet hours, as RemindAwake sends such a one's
// message at once: one bad record must not cost everyone their reminders.
func Plan(event, now time.Time, offsets []time.Duration, recipients []Recipient) []Planned {
	return plan(event, now, offsets, recipients, false)
}

// PlanAwake is Plan, except that a recipient's late reminder (sent at now)
// is left out when it would wait for the end of their quiet hours (Awake)
// until the time of their next reminder or later: booked at 07:00 for a
// meeting at 09:00, someone quiet until 08:00 would otherwise get the late
// reminder and the two hours' one together at 08:00.
func PlanAwake(event, now time.Time, offsets []time.Duration, recipients []Recipient) []Planned {
	return plan(event, now, offsets, recipients, true)
}

func plan(event, now time.Time, offsets []time.Duration, recipients []Recipient, awake bool) []Planned {
	var out []Planned
	for _, r := range recipients {
		placed := r
		if _, _, _, err := quietOf(r); err != nil {
			placed = Recipient{Kind: r.Kind, ID: r.ID, Channel: r.Channel}
		}
		var late *Planned
		for _, off := range offsets {
			at, _ := Place(event, off, placed) // placed parses
			if !at.After(now) {
				if !now.Before(event) {
					continue // the event has begun: no reminder
				}
				if late == nil || off < late.Offset {
					late = &Planned{Recipient: r, Offset: off, At: now}
				}
				continue
			}
			out = append(out, Planned{Recipient: r, Offset: off, At: at})
		}
		if late != nil && awake {
			// placed parses; the next of r's is the earliest after now.
			wakes, _ := Awake(now, placed, event)
			for _, p := range out {
				if p.Recipient.ID == r.ID && p.Recipient.Kind == r.Kind && !p.At.After(wakes) {
					late = nil
					break
				}
			}
		}
		if late != nil {
			out = append(out, *late)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if !a.At.Equal(b.At) {
			return a.At.Before(b.At)
		}
		if a.Recipient.ID != b.Recipient.ID {
			return a.Recipient.ID < b.Recipient.ID
		}
		return a.Offset > b.Offset
	})
	return out
}
