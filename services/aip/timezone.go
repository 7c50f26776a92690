package aip

import "time"

// TimeZone reports whether name is an IANA time zone. "Local" (the
// process's own zone, which differs between machines) and "" (which
// time.LoadLocation takes for UTC) are not: a meeting's times are placed
// in the zone the caller named.
func TimeZone(name string) bool {
	if name == "" || name == "Local" {
		return false
	}
	_, err := time.LoadLocation(name)
	return err == nil
}
