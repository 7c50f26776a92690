package aip

import "time"

// EarliestReported is the earliest time a reported time (a first contact,
// a screen, an entry into treatment) may name in any service: a time
// before it is an unset or default value sent as one (the epoch, year 1),
// not when something happened, and kept it would skew what counts from it
// (days to treatment, a screen's age) for good.
var EarliestReported = time.Date(1990, 1, 1, 0, 0, 0, 0, time.UTC)
