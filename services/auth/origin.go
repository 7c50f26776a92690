package auth

import (
	"net/http"
	"strings"
)

// Origin is where an HTTP request came from, as log attributes: the peer
// and the X-Forwarded-For a proxy added (ForwardedFor). The keys are those
// the gRPC servers log failed sign-ins with, so refusals at every edge are
// watched alike.
func Origin(r *http.Request) []any {
	out := []any{"peer", r.RemoteAddr}
	if f := ForwardedFor(r.Header.Values("X-Forwarded-For")); f != "" {
		out = append(out, "forwarded_for", f)
	}
	return out
}

// maxForwardedFor bounds the X-Forwarded-For a log line keeps.
const maxForwardedFor = 256

// ForwardedFor is an X-Forwarded-For's values as one, for a log: bounded,
// as the start is the caller's own text, and cut from the start, not the
// end, as proxies append the address they served: the entries at the end
// are the ones a proxy of ours vouches for. A cut is marked "...".
func ForwardedFor(values []string) string {
	f := strings.Join(values, ", ")
	if len(f) <= maxForwardedFor {
		return strings.ToValidUTF8(f, "?")
	}
	tail := f[len(f)-maxForwardedFor:]
	if i := strings.Index(tail, ","); i >= 0 {
		tail = strings.TrimLeft(tail[i+1:], " ") // from a whole entry
	}
	return "..., " + strings.ToValidUTF8(tail, "?")
}
