package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	"github.com/handoff-health/handoff/services/auth"
)

// calendarRoute is where calendar apps read a feed. They cannot send a
// bearer token, so the feed's secret token in the query authenticates the
// call, and the interventions service checks it.
const calendarRoute = "GET /calendar/v1/clinics/{clinic}/calendarFeeds/{file}"

// statusClientClosed answers a request its caller gave up on (nginx's 499,
// as grpc-gateway answers a cancelled call on /v1).
const statusClientClosed = 499

// calendarFeed serves a calendar feed as text/calendar. A feed not found,
// or a wrong token, is the same 404; a revoked or lapsed feed's token reads
// a calendar without meetings that says why (calendar apps keep showing
// the last answer on an error, meetings moved or called off since among
// it). The token is never logged: the request log and traces carry the
// path only.
func calendarFeed(client interventionsv1.InterventionsServiceClient, timeout time.Duration, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The address is a secret and the answer a record of meetings: no
		// cache keeps it (a browser's or the system's HTTP cache would
		// write it to disk, beyond the feed's revocation), as no other
		// answer here is kept. The calendar app stores the events itself,
		// and may ask whether they changed (If-None-Match, ETag below).
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Referrer-Policy", "no-referrer")
		if r.Method == http.MethodHead {
			// The GET pattern serves HEAD too: the export would run, and
			// count as the feed's use and a read of the meetings, for an
			// answer cut to its headers.
			w.Header().Set("Allow", "GET")
			http.Error(w, "HEAD is not served here: GET the feed", http.StatusMethodNotAllowed)
			return
		}
		feed, ok := strings.CutSuffix(r.PathValue("file"), ".ics")
		if !ok {
			http.NotFound(w, r)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		body, err := client.ExportCalendarFeed(ctx, &interventionsv1.ExportCalendarFeedRequest{
			Name:  "clinics/" + r.PathValue("clinic") + "/calendarFeeds/" + feed,
			Token: r.URL.Query().Get("token"),
		})
		switch status.Code(err) {
		case codes.OK:
		case codes.NotFound, codes.InvalidArgument:
			// A wrong token among them: logged here, with where it came
			// from, as a refused sign-in is (the service sees only this
			// gateway), so that guessing at feed addresses can be traced.
			log.WarnContext(r.Context(), "calendar feed refused", append([]any{"path", r.URL.Path}, auth.Origin(r)...)...)
			http.NotFound(w, r)
			return
		case codes.DeadlineExceeded, codes.Unavailable, codes.Aborted, codes.ResourceExhausted:
			// A service restarting or busy: the calendar app tries again,
			// and nobody is paged for it.
			w.Header().Set("Retry-After", "30")
			http.Error(w, "calendar temporarily unavailable", http.StatusServiceUnavailable)
			return
		case codes.Canceled:
			// The calendar app hung up: no server error (nginx's 499).
			w.WriteHeader(statusClientClosed)
			return
		default:
			// The path names the feed, whose token is in the query: only the
			// path and the service's code are logged.
			log.ErrorContext(r.Context(), "calendar feed failed", "path", r.URL.Path, "code", status.Code(err).String())
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		// Every read, with where it came from and what read it: the feed's
		// address is a bearer secret, and the audit record names only the
		// feed's owner, so a copy of it read by someone else (pasted into
		// a ticket, a shared calendar) shows here as a second origin.
		log.InfoContext(r.Context(), "calendar feed read", append([]any{"path", r.URL.Path, "user_agent", userAgent(r)}, auth.Origin(r)...)...)
		sum := sha256.Sum256(body.GetData())
		etag := `"` + hex.EncodeToString(sum[:16]) + `"`
		w.Header().Set("ETag", etag)
		// Written whole: a Range would get part of a calendar whose whole
		// export has run and is recorded as read.
		w.Header().Set("Accept-Ranges", "none")
		if noneMatch(strings.Join(r.Header.Values("If-None-Match"), ","), etag) {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("Content-Type", body.GetContentType())
		w.Header().Set("Content-Disposition", `inline; filename="handoff.ics"`)
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Content-Length", strconv.Itoa(len(body.GetData())))
		_, _ = w.Write(body.GetData())
	})
}

// userAgent is the request's User-Agent, cut short for the log.
func userAgent(r *http.Request) string {
	ua := strings.ToValidUTF8(r.UserAgent(), "?")
	if len(ua) > 128 {
		ua = strings.ToValidUTF8(ua[:128], "")
	}
	return ua
}

// noneMatch reports whether an If-None-Match header names etag, or any
// version ("*"): by weak comparison, as RFC 9110 has it for this header.
func noneMatch(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimSpace(t)
		if t == "*" || strings.TrimPrefix(t, "W/") == etag {
			return true
		}
	}
	return false
}
