package aip

import "testing"

func TestTimeZone(t *testing.T) {
	for name, want := range map[string]bool{"America/Chicago": true, "UTC": true, "Local": false, "": false, "Mars/Olympus": false} {
		if got := TimeZone(name); got != want {
			t.Errorf("TimeZone(%q) = %v, want %v", name, got, want)
		}
	}
}
