package aip

import "net/http"

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
	switch {
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
