package aip

import (
	"strconv"
	"strings"
)

// Etag renders a row version as an etag. Versions only grow, so an etag
// names exactly one state of a resource.
func Etag(version int64) string { return "v" + strconv.FormatInt(version, 10) }

// ParseEtag returns the version an etag names. ok is false for an etag this
// service did not issue ("v+3" and "v03" included: an etag is compared as
// a string everywhere else, so one version has one spelling); callers
// treat that as a mismatch.
func ParseEtag(etag string) (version int64, ok bool) {
	etag = BareEtag(etag)
	v, err := strconv.ParseInt(strings.TrimPrefix(etag, "v"), 10, 64)
	if err != nil || v < 0 || Etag(v) != etag {
		return 0, false
	}
	return v, true
}

// BareEtag is an etag without the space, quotes and weak mark an HTTP
// ETag or If-Match header gives it.
func BareEtag(etag string) string {
	etag = strings.TrimPrefix(strings.TrimSpace(etag), "W/")
	if len(etag) >= 2 && etag[0] == '"' && etag[len(etag)-1] == '"' {
		return etag[1 : len(etag)-1]
	}
	return etag
}
