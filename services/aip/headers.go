package aip

import (
	"net/http"
	"slices"
)

// HeaderProblem says what is wrong with a request's If-Match and
// Idempotency-Key headers, or "" if nothing is. Both carry only printable
// ASCII: grpc-gateway drops any other value with no more than a log line
// (an If-Match in curly quotes would leave the write unguarded), and a
// proto string takes only UTF-8 (another byte fails the call as an
// internal error). A write's Idempotency-Key is one, and not empty:
// dropped or picked from several, it would let a retry run twice. A read
// takes no key, and is not refused for one.
func HeaderProblem(h http.Header, write bool) string {
	for _, name := range []string{"If-Match", "Idempotency-Key"} {
		for _, v := range h.Values(name) {
			if !printableASCII(v) {
				return name + ": only printable ASCII characters; straight quotes around an etag"
			}
		}
	}
	keys := h.Values("Idempotency-Key")
	// Bounded here, where the header comes in: a request id is at most 64
	// characters, and an etag far shorter than this; past the bounds
	// either would be refused later, or, forwarded as metadata, push a
	// call past the services' header limit (an internal error).
	for _, v := range h.Values("If-Match") {
		if len(v) > 256 {
			return "If-Match: at most 256 characters; send the etag you read"
		}
	}
	switch {
	case slices.ContainsFunc(keys, func(k string) bool { return len(k) > 64 }):
		return "Idempotency-Key: at most 64 characters"
	case !write:
	case len(keys) > 1:
		return "Idempotency-Key: give one key, not several"
	case len(keys) == 1 && keys[0] == "":
		return "Idempotency-Key: give a key, or leave the header out"
	}
	return ""
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
