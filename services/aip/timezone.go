package aip

import (
	"regexp"
	"strings"
	"time"
)

// zoneName is the shape of an IANA zone name as the tz database spells it:
// "UTC", "Etc/GMT+5", "America/Argentina/Buenos_Aires". Spellings that
// time.LoadLocation also takes ("America//Chicago", "./UTC") are refused:
// the name is stored and handed on to calendars as given.
var zoneName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}$`)

// TimeZone reports whether name is an IANA time zone. "Local" (the
// process's own zone, which differs between machines) and "" (which
// time.LoadLocation takes for UTC) are not: a meeting's times are placed
// in the zone the caller named. Nor are the files a system's zoneinfo
// holds beside the zones ("localtime", "posixrules", "Factory", the
// "posix/" and "right/" copies): they exist on some machines only, and the
// "right/" ones count leap seconds, which puts every time 27 s off.
func TimeZone(name string) bool {
	switch name {
	case "", "Local", "localtime", "posixrules", "Factory":
		return false
	}
	if !zoneName.MatchString(name) || strings.HasPrefix(name, "posix/") || strings.HasPrefix(name, "right/") {
		return false
	}
	_, err := time.LoadLocation(name)
	return err == nil
}
