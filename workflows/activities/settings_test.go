package activities

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestLoadSettingsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "settings.json")
	if err := os.WriteFile(path, []byte(`{
		"default": {"reminderOffsets": ["48h", "3h"], "coolDown": "21d"},
		"clinics": {"north": {"reminderOffsets": ["24h"], "maxPrograms": 5, "overdoseGrace": "30s"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	settings, err := LoadSettingsFile(path)
	if err != nil {
		t.Fatal(err)
	}
	south, north := settings("south"), settings("north")
	if len(south.ReminderOffsets) != 2 || south.ReminderOffsets[1] != 3*time.Hour || south.CoolDown != 21*24*time.Hour || south.MaxPrograms != 3 {
		t.Fatalf("south = %+v", south)
	}
	if len(north.ReminderOffsets) != 1 || north.ReminderOffsets[0] != 24*time.Hour || north.CoolDown != 21*24*time.Hour || north.MaxPrograms != 5 {
		t.Fatalf("north = %+v", north)
	}
	if north.OverdoseGrace != 30*time.Second || south.OverdoseGrace != time.Minute {
		t.Fatalf("overdose grace: north %v, south %v", north.OverdoseGrace, south.OverdoseGrace)
	}
	if settings("south").HoldLead != 72*time.Hour {
		t.Fatal("unset fields keep Handoff's defaults")
	}
	for _, bad := range []string{`{"default": {"coolDown": "soon"}}`, `{"clinics": {"x": {"maxNoShows": -1}}}`, `{"default": {"checkIns": ["-1h"]}}`, `not json`,
		// Negative in days, too: a reminder after the meeting, a hold never taken.
		`{"default": {"reminderOffsets": ["-1d"]}}`, `{"default": {"holdLead": "-3d"}}`,
		// So many days that they wrap around to a negative duration.
		`{"default": {"coolDown": "106752d"}}`,
		// Periods that repeat cannot be zero: the step would repeat at once, for ever.
		`{"default": {"intakeAlert": "0s"}}`, `{"clinics": {"x": {"holdRetry": "0d"}}}`,
		`{"default": {"tightenedCheckIn": "0m"}}`, `{"default": {"reminderRetryDelay": "0s"}}`,
		// A misspelt key, a clinic list under the wrong name, no program to try.
		`{"default": {"coolDow": "21d"}}`, `{"clinic": {"x": {"maxPrograms": 2}}}`, `{"default": {"maxPrograms": 0}}`} {
		if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadSettingsFile(path); err == nil {
			t.Errorf("%s: want an error", bad)
		}
	}
	// Check-ins come in time order, whatever the file's.
	if err := os.WriteFile(path, []byte(`{"default": {"checkIns": ["30d", "1d", "7d"]}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := LoadSettingsFile(path); err != nil || len(s("x").CheckIns) != 3 || s("x").CheckIns[0] != 24*time.Hour || s("x").CheckIns[2] != 30*24*time.Hour {
		t.Fatalf("check-ins given out of order: %v, %v", s("x").CheckIns, err)
	}
	// A one-off wait of zero is allowed: no cool-down at all.
	if err := os.WriteFile(path, []byte(`{"default": {"coolDown": "0s", "overdoseGrace": "0s"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := LoadSettingsFile(path); err != nil || s("x").CoolDown != 0 {
		t.Fatalf("a zero cool-down: %v", err)
	}
}
