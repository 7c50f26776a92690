package activities

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"time"
)

// settingsJSON is how a clinic's settings are written in a settings file:
// durations as Go duration strings ("72h", "90m"); fields left out keep
// the default.
type settingsJSON struct {
	HoldLead              *string  `json:"holdLead"`
	HoldRetry             *string  `json:"holdRetry"`
	HoldSlack             *string  `json:"holdSlack"`
	ReminderOffsets       []string `json:"reminderOffsets"`
	OutcomeGrace          *string  `json:"outcomeGrace"`
	OutcomeEscalation     *string  `json:"outcomeEscalation"`
	MaxPrograms           *int     `json:"maxPrograms"`
	IntakeTarget          *string  `json:"intakeTarget"`
	IntakeAlert           *string  `json:"intakeAlert"`
	IntakeReminderOffsets []string `json:"intakeReminderOffsets"`
	MaxNoShows            *int     `json:"maxNoShows"`
	CheckIns              []string `json:"checkIns"`
	TightenedCheckIn      *string  `json:"tightenedCheckIn"`
	CoolDown              *string  `json:"coolDown"`
	OverdoseGrace         *string  `json:"overdoseGrace"`
	ReminderRetries       *int     `json:"reminderRetries"`
	ReminderRetryDelay    *string  `json:"reminderRetryDelay"`
}

// SettingsFile is a settings file: defaults for every clinic and overrides
// per clinic id.
//
//	{"default": {"reminderOffsets": ["48h", "2h"]},
//	 "clinics": {"north": {"coolDown": "21d"}}}
type SettingsFile struct {
	Default settingsJSON            `json:"default"`
	Clinics map[string]settingsJSON `json:"clinics"`
}

// LoadSettingsFile reads a settings file and returns the settings of each
// clinic: Handoff's defaults, then the file's defaults, then the clinic's
// own. Every duration is checked when the file is read, not when used.
func LoadSettingsFile(path string) (func(clinic string) Settings, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("settings: %w", err)
	}
	// A key misspelt would leave a default in place without a word.
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var f SettingsFile
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("settings %s: %w", path, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("settings %s: more than one JSON value", path)
	}
	base := DefaultSettings()
	if err := f.Default.apply(&base); err != nil {
		return nil, fmt.Errorf("settings %s: default: %w", path, err)
	}
	perClinic := map[string]Settings{}
	for clinic, o := range f.Clinics {
		s := base
		s.ReminderOffsets, s.IntakeReminderOffsets, s.CheckIns = clone(base.ReminderOffsets), clone(base.IntakeReminderOffsets), clone(base.CheckIns)
		if err := o.apply(&s); err != nil {
			return nil, fmt.Errorf("settings %s: clinic %s: %w", path, clinic, err)
		}
		perClinic[clinic] = s
	}
	return func(clinic string) Settings {
		if s, ok := perClinic[clinic]; ok {
			return s
		}
		return base
	}, nil
}

func clone(d []time.Duration) []time.Duration { return append([]time.Duration(nil), d...) }

// maxDays is the most days a time.Duration holds.
const maxDays = int(math.MaxInt64 / int64(24*time.Hour))

// parseDuration accepts Go durations plus a day suffix ("14d").
func parseDuration(s string) (time.Duration, error) {
	if n := len(s); n > 1 && s[n-1] == 'd' {
		var days int
		// At most what a Duration holds: more days would wrap around.
		if _, err := fmt.Sscanf(s[:n-1], "%d", &days); err == nil && days >= 0 && days <= maxDays && fmt.Sprint(days) == s[:n-1] {
			return time.Duration(days) * 24 * time.Hour, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%q is not a duration such as \"90m\", \"72h\" or \"14d\"", s)
	}
	return d, nil
}

func (o settingsJSON) apply(s *Settings) error {
	// A repeating period of zero would have a workflow repeat its step
	// without pause (hold tries, intake reviews, check-ins, resends): those
	// must be positive.
	durs := []struct {
		name    string
		in      *string
		out     *time.Duration
		repeats bool
	}{
		{"holdLead", o.HoldLead, &s.HoldLead, false}, {"holdRetry", o.HoldRetry, &s.HoldRetry, true},
		{"holdSlack", o.HoldSlack, &s.HoldSlack, false},
		{"outcomeGrace", o.OutcomeGrace, &s.OutcomeGrace, false}, {"outcomeEscalation", o.OutcomeEscalation, &s.OutcomeEscalation, false},
		{"intakeTarget", o.IntakeTarget, &s.IntakeTarget, false}, {"intakeAlert", o.IntakeAlert, &s.IntakeAlert, true},
		{"tightenedCheckIn", o.TightenedCheckIn, &s.TightenedCheckIn, true}, {"coolDown", o.CoolDown, &s.CoolDown, false},
		{"reminderRetryDelay", o.ReminderRetryDelay, &s.ReminderRetryDelay, true},
		{"overdoseGrace", o.OverdoseGrace, &s.OverdoseGrace, false},
	}
	for _, d := range durs {
		if d.in == nil {
			continue
		}
		v, err := parseDuration(*d.in)
		if err != nil {
			return fmt.Errorf("%s: %w", d.name, err)
		}
		if d.repeats && v <= 0 {
			return fmt.Errorf("%s: %q repeats, so it must be longer than zero", d.name, *d.in)
		}
		*d.out = v
	}
	lists := []struct {
		in  []string
		out *[]time.Duration
	}{{o.ReminderOffsets, &s.ReminderOffsets}, {o.IntakeReminderOffsets, &s.IntakeReminderOffsets}, {o.CheckIns, &s.CheckIns}}
	for _, l := range lists {
		if l.in == nil {
			continue
		}
		*l.out = nil
		for _, x := range l.in {
			v, err := parseDuration(x)
			if err != nil {
				return err
			}
			*l.out = append(*l.out, v)
		}
	}
	// Check-ins in time order, whatever the file's: the boundary workflow
	// takes the first as the next and the last as the latest.
	slices.Sort(s.CheckIns)
	for _, n := range []struct {
		in  *int
		out *int
	}{{o.MaxPrograms, &s.MaxPrograms}, {o.MaxNoShows, &s.MaxNoShows}, {o.ReminderRetries, &s.ReminderRetries}} {
		if n.in != nil {
			if *n.in < 0 {
				return fmt.Errorf("counts cannot be negative")
			}
			if n.out == &s.MaxPrograms && *n.in < 1 {
				// No program tried: the person who said yes would be
				// escalated at once and their held place left to lapse.
				return fmt.Errorf("maxPrograms must be at least 1")
			}
			*n.out = *n.in
		}
	}
	return nil
}
