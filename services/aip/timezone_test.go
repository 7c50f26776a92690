package aip

import "testing"

func TestTimeZone(t *testing.T) {
	for name, want := range map[string]bool{
		"America/Chicago": true, "UTC": true, "Etc/GMT+5": true, "America/Argentina/Buenos_Aires": true,
		"America/Port-au-Prince": true, "EST5EDT": true,
		"Local": false, "": false, "Mars/Olympus": false,
		// Files of a system's zoneinfo that are not zones, and spellings
		// LoadLocation takes that are not the zone's name.
		"localtime": false, "posixrules": false, "Factory": false, "right/America/Chicago": false,
		"posix/America/Chicago": false, "America//Chicago": false, "./UTC": false, "America/./Chicago": false,
		"/UTC": false, "UTC/": false,
	} {
		if got := TimeZone(name); got != want {
			t.Errorf("TimeZone(%q) = %v, want %v", name, got, want)
		}
	}
}
