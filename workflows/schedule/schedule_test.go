package schedule

import (
	"testing"
	"time"
)

func mustLoc(t *testing.T, z string) *time.Location {
	t.Helper()
	l, err := time.LoadLocation(z)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestPlaceMovesOutOfQuietHours(t *testing.T) {
	chicago := mustLoc(t, "America/Chicago")
	r := Recipient{ID: "mom", TimeZone: "America/Chicago", Quiet: QuietHours{Start: "22:00", End: "07:00"}}
	cases := []struct {
		name   string
		event  time.Time
		offset time.Duration
		want   time.Time
	}{
		{"outside quiet hours: unchanged", time.Date(2026, 12, 10, 18, 0, 0, 0, chicago), 24 * time.Hour,
			time.Date(2026, 12, 9, 18, 0, 0, 0, chicago)},
		{"late evening: moved to 07:00", time.Date(2026, 12, 10, 23, 30, 0, 0, chicago), 24 * time.Hour,
			time.Date(2026, 12, 10, 7, 0, 0, 0, chicago)},
		{"early morning: moved to 07:00", time.Date(2026, 12, 10, 9, 0, 0, 0, chicago), 4 * time.Hour,
			time.Date(2026, 12, 10, 7, 0, 0, 0, chicago)},
		{"window ends before the event: moved to its end", time.Date(2026, 12, 10, 7, 30, 0, 0, chicago), 2 * time.Hour,
			time.Date(2026, 12, 10, 7, 0, 0, 0, chicago)},
		{"moving past the window would be too late: moved before it", time.Date(2026, 12, 10, 7, 0, 0, 0, chicago), 2 * time.Hour,
			time.Date(2026, 12, 9, 21, 45, 0, 0, chicago)},
		{"the zone is the recipient's, not the event's", time.Date(2026, 12, 10, 12, 0, 0, 0, time.UTC), 2 * time.Hour,
			// 10:00 UTC is 04:00 in Chicago: quiet, so 07:00 Chicago = 13:00 UTC, after the event; 21:45 the evening before.
			time.Date(2026, 12, 9, 21, 45, 0, 0, chicago)},
	}
	for _, c := range cases {
		got, err := Place(c.event, c.offset, r)
		if err != nil || !got.Equal(c.want) {
			t.Errorf("%s: got %v, %v; want %v", c.name, got.In(chicago), err, c.want)
		}
	}
	// Across a daylight-saving change the local clock, not the UTC offset, counts.
	ny := mustLoc(t, "America/New_York")
	got, _ := Place(time.Date(2026, 3, 8, 12, 0, 0, 0, ny), 24*time.Hour, Recipient{TimeZone: "America/New_York", Quiet: QuietHours{Start: "10:00", End: "11:30"}})
	if want := time.Date(2026, 3, 7, 12, 0, 0, 0, ny); !got.Equal(want) {
		t.Errorf("DST: got %v, want %v", got.In(ny), want)
	}
	if _, err := Place(time.Now(), time.Hour, Recipient{TimeZone: "Nowhere/Town", Quiet: QuietHours{Start: "22:00", End: "07:00"}}); err == nil {
		t.Error("an unknown zone must be an error")
	}
}

func TestPlanCollapsesLateReminders(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	offsets := []time.Duration{72 * time.Hour, 24 * time.Hour, 2 * time.Hour}
	rs := []Recipient{{ID: "counselor-1"}, {ID: "mom"}}
	// The meeting is 30 hours away: the 72 h reminder is already late and
	// goes out now; 24 h and 2 h are placed normally.
	plan := Plan(now.Add(30*time.Hour), now, offsets, rs)
	if len(plan) != 6 {
		t.Fatalf("plan = %v", plan)
	}
	if !plan[0].At.Equal(now) || plan[0].Offset != 72*time.Hour || !plan[2].At.Equal(now.Add(6*time.Hour)) {
		t.Fatalf("plan = %+v", plan)
	}
	// The meeting is 10 seconds away: one reminder each, now.
	plan = Plan(now.Add(10*time.Second), now, offsets, rs)
	if len(plan) != 2 || !plan[0].At.Equal(now) || plan[0].Offset != 2*time.Hour {
		t.Fatalf("late plan = %+v", plan)
	}
	// The meeting has begun: nothing.
	if plan = Plan(now.Add(-time.Minute), now, offsets, rs); len(plan) != 0 {
		t.Fatalf("plan after start = %+v", plan)
	}
}

// Booked in someone's quiet hours at short notice, the late reminder would
// wait for their end and go out with the next one placed there: PlanAwake
// leaves it out, for them only. One that goes out before the next keeps
// its place.
func TestPlanAwakeSendsOneReminderAtTheEndOfQuietHours(t *testing.T) {
	ny := mustLoc(t, "America/New_York")
	at := func(day, h, m int) time.Time { return time.Date(2026, 12, day, h, m, 0, 0, ny) }
	offsets := []time.Duration{72 * time.Hour, 24 * time.Hour, 2 * time.Hour}
	mom := Recipient{ID: "mom", TimeZone: "America/New_York", Quiet: QuietHours{Start: "21:00", End: "08:00"}}
	rs := []Recipient{{ID: "counselor-1", TimeZone: "America/New_York"}, mom}
	now, meeting := at(10, 7, 0), at(10, 9, 0)
	whole := Plan(meeting, now, offsets, rs)
	awake := PlanAwake(meeting, now, offsets, rs)
	byID := func(plan []Planned, id string) (out []Planned) {
		for _, p := range plan {
			if p.Recipient.ID == id {
				out = append(out, p)
			}
		}
		return out
	}
	if got := byID(whole, "mom"); len(got) != 2 {
		t.Fatalf("Plan gives mom %+v; want the late reminder and the two hours' one", got)
	}
	got := byID(awake, "mom")
	if len(got) != 1 || got[0].Offset != 2*time.Hour || !got[0].At.Equal(at(10, 8, 0)) {
		t.Fatalf("PlanAwake gives mom %+v; want the two hours' one alone, at 08:00", got)
	}
	if c := byID(awake, "counselor-1"); len(c) != 1 || !c[0].At.Equal(now) {
		t.Fatalf("PlanAwake gives the counselor, who keeps no quiet hours, %+v; want one now", c)
	}
	// Booked at 23:00 for 10:00 tomorrow: the late one would wait for 08:00,
	// the two hours' one is there at 08:00 too.
	if got := byID(PlanAwake(at(11, 10, 0), at(10, 23, 0), offsets, rs), "mom"); len(got) != 1 || !got[0].At.Equal(at(11, 8, 0)) {
		t.Fatalf("booked late at night: %+v; want one, at 08:00", got)
	}
	// Booked at 20:00 for 18:00 tomorrow: the late one goes now, before
	// quiet hours, and the next at 16:00 tomorrow.
	if got := byID(PlanAwake(at(11, 18, 0), at(10, 20, 0), offsets, rs), "mom"); len(got) != 2 || !got[0].At.Equal(at(10, 20, 0)) {
		t.Fatalf("booked in the evening: %+v; want the late one now and the two hours' one", got)
	}
}

// A message due now waits for the end of the recipient's quiet hours,
// unless that is not before what it is about.
func TestAwake(t *testing.T) {
	chicago := mustLoc(t, "America/Chicago")
	r := Recipient{ID: "mom", TimeZone: "America/Chicago", Quiet: QuietHours{Start: "21:00", End: "08:00"}}
	at := func(day, h, m int) time.Time { return time.Date(2026, 12, day, h, m, 0, 0, chicago) }
	cases := []struct {
		name  string
		r     Recipient
		t, by time.Time
		want  time.Time
	}{
		{"awake: now", r, at(10, 14, 0), time.Time{}, at(10, 14, 0)},
		{"at night, nothing to be before: the morning", r, at(10, 2, 0), time.Time{}, at(10, 8, 0)},
		{"at night, the appointment at ten: the morning", r, at(10, 2, 0), at(10, 10, 0), at(10, 8, 0)},
		{"at night, the meeting at half past seven: now", r, at(10, 2, 0), at(10, 7, 30), at(10, 2, 0)},
		{"late evening: the next morning", r, at(10, 22, 30), time.Time{}, at(11, 8, 0)},
		{"no quiet hours: now", Recipient{ID: "c", TimeZone: "America/Chicago"}, at(10, 2, 0), time.Time{}, at(10, 2, 0)},
	}
	for _, c := range cases {
		got, err := Awake(c.t, c.r, c.by)
		if err != nil || !got.Equal(c.want) {
			t.Errorf("%s: %v, %v; want %v", c.name, got.In(chicago), err, c.want)
		}
	}
	if _, err := Awake(at(10, 2, 0), Recipient{TimeZone: "Mars/Olympus", Quiet: r.Quiet}, time.Time{}); err == nil {
		t.Error("an unknown zone is an error")
	}
}

func TestQuietFrom(t *testing.T) {
	chicago := mustLoc(t, "America/Chicago")
	night := Recipient{ID: "mom", TimeZone: "America/Chicago", Quiet: QuietHours{Start: "21:00", End: "08:00"}}
	noon := Recipient{ID: "dad", TimeZone: "America/Chicago", Quiet: QuietHours{Start: "12:00", End: "14:00"}}
	at := func(day, h, m int) time.Time { return time.Date(2026, 12, day, h, m, 0, 0, chicago) }
	cases := []struct {
		name   string
		r      Recipient
		t      time.Time
		want   time.Time
		wantOK bool
	}{
		{"afternoon: tonight at nine", night, at(10, 14, 0), at(10, 21, 0), true},
		{"a minute before: tonight", night, at(10, 20, 59), at(10, 21, 0), true},
		{"in them already (placed there on purpose): none", night, at(10, 2, 0), time.Time{}, false},
		{"late evening, in them: none", night, at(10, 22, 0), time.Time{}, false},
		{"at their end: tonight", night, at(10, 8, 0), at(10, 21, 0), true},
		{"after a midday window: tomorrow's", noon, at(10, 15, 0), at(11, 12, 0), true},
		{"no quiet hours: none", Recipient{ID: "c", TimeZone: "America/Chicago"}, at(10, 14, 0), time.Time{}, false},
	}
	for _, c := range cases {
		got, ok, err := QuietFrom(c.t, c.r)
		if err != nil || ok != c.wantOK || !got.Equal(c.want) {
			t.Errorf("%s: %v, %v, %v; want %v, %v", c.name, got.In(chicago), ok, err, c.want, c.wantOK)
		}
	}
	// Across a daylight-saving change the clock time holds: Chicago moves
	// back an hour on 2026-11-01.
	got, ok, err := QuietFrom(time.Date(2026, 10, 31, 22, 30, 0, 0, chicago), Recipient{TimeZone: "America/Chicago",
		Quiet: QuietHours{Start: "06:00", End: "06:30"}})
	if err != nil || !ok || !got.Equal(time.Date(2026, 11, 1, 6, 0, 0, 0, chicago)) {
		t.Errorf("across the change: %v, %v, %v", got, ok, err)
	}
	if _, _, err := QuietFrom(at(10, 2, 0), Recipient{TimeZone: "Mars/Olympus", Quiet: night.Quiet}); err == nil {
		t.Error("an unknown zone is an error")
	}
}

// A send-by time is left out when what the message is about happens in
// the quiet hours it begins: a late message would go out in them anyway.
func TestSendBy(t *testing.T) {
	chicago := mustLoc(t, "America/Chicago")
	night := Recipient{ID: "mom", TimeZone: "America/Chicago", Quiet: QuietHours{Start: "21:00", End: "08:00"}}
	at := func(day, h, m int) time.Time { return time.Date(2026, 12, day, h, m, 0, 0, chicago) }
	cases := []struct {
		name   string
		t, by  time.Time
		want   time.Time
		wantOK bool
	}{
		{"about nothing: tonight at nine", at(10, 20, 45), time.Time{}, at(10, 21, 0), true},
		{"a meeting after they end: tonight at nine", at(10, 20, 45), at(11, 10, 0), at(10, 21, 0), true},
		{"a meeting as they end: none", at(10, 20, 45), at(11, 8, 0), time.Time{}, false},
		{"a meeting in them: none", at(10, 20, 45), at(11, 6, 0), time.Time{}, false},
		{"a meeting before they begin: tonight at nine", at(10, 20, 45), at(10, 20, 55), at(10, 21, 0), true},
		{"a meeting as they begin: tonight at nine", at(10, 20, 45), at(10, 21, 0), at(10, 21, 0), true},
		{"due in them: none", at(10, 22, 0), at(12, 10, 0), time.Time{}, false},
	}
	for _, c := range cases {
		got, ok, err := SendBy(c.t, night, c.by)
		if err != nil || ok != c.wantOK || !got.Equal(c.want) {
			t.Errorf("%s: %v, %v, %v; want %v, %v", c.name, got.In(chicago), ok, err, c.want, c.wantOK)
		}
	}
	if _, _, err := SendBy(at(10, 14, 0), Recipient{TimeZone: "Mars/Olympus", Quiet: night.Quiet}, at(11, 10, 0)); err == nil {
		t.Error("an unknown zone is an error")
	}
}

// A recipient whose zone or quiet hours do not parse is planned in UTC
// without quiet hours, beside everyone else, not the end of the plan.
func TestPlanPlacesABadRecordInUTC(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	event := now.Add(48 * time.Hour)
	rs := []Recipient{
		{ID: "mom", TimeZone: "Local/Nowhere", Quiet: QuietHours{Start: "21:00", End: "08:00"}},
		{ID: "dad", TimeZone: "UTC", Quiet: QuietHours{Start: "9pm", End: "8am"}},
		{ID: "aunt", TimeZone: "America/Chicago"},
	}
	plan := Plan(event, now, []time.Duration{24 * time.Hour}, rs)
	if len(plan) != 3 {
		t.Fatalf("plan = %v; want one reminder each", plan)
	}
	for _, p := range plan {
		if !p.At.Equal(event.Add(-24 * time.Hour)) {
			t.Errorf("%s at %v; want a day before, by the clock", p.Recipient.ID, p.At)
		}
	}
}
