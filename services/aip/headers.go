package aip

import "net/http"

// HeaderProblem says what is wrong with a write's If-Match and
// Idempotency-Key headers, or "" if nothing is. Both carry only printable
// ASCII: grpc-gateway drops any other value with no more than a log line
// (an If-Match in curly quotes would leave the write unguarded), and a
// proto string takes only UTF-8 (another byte fails the call as an
// internal error). An Idempotency-Key is one, and not empty: dropped or
// picked from several, it would let a retry run twice.
func HeaderProblem(h http.Header) string {
	for _, name := range []string{"If-Match", "Idempotency-Key"} {
		for _, v := range h.Values(name) {
			if !printableASCII(v) {
				return name + ": only printable ASCII characters; straight quotes around an etag"
			}
		}
	}
	if keys := h.Values("Idempotency-Key"); len(keys) > 1 {
		return "Idempotency-Key: give one key, not several"
	} else if len(keys) == 1 && keys[0] == "" {
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
