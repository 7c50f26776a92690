package auth

import (
	"net/http"
	"strings"
)

// Origin is where an HTTP request came from, as log attributes: the peer
// and the X-Forwarded-For a proxy added (the caller's text, bounded). The
// keys are those the gRPC servers log failed sign-ins with, so refusals
// at every edge are watched alike.
func Origin(r *http.Request) []any {
	out := []any{"peer", r.RemoteAddr}
	if f := strings.Join(r.Header.Values("X-Forwarded-For"), ", "); f != "" {
		if len(f) > 256 {
			f = f[:256]
		}
		out = append(out, "forwarded_for", f)
	}
	return out
}
