package gateway

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/api/httpbody"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
)

// failingFeeds answers every feed with one error.
type failingFeeds struct {
	interventionsv1.InterventionsServiceClient
	err error
}

func (f failingFeeds) ExportCalendarFeed(context.Context, *interventionsv1.ExportCalendarFeedRequest, ...grpc.CallOption) (*httpbody.HttpBody, error) {
	return nil, f.err
}

// A calendar app that hangs up is no server error; a failure the feed does
// not expect is logged, by its code and path, never the token; a refused
// feed (a wrong token) is logged with where the request came from.
func TestCalendarFeedFailures(t *testing.T) {
	for _, c := range []struct {
		code    codes.Code
		status  int
		logged  bool
		refused bool
	}{
		{codes.Canceled, statusClientClosed, false, false},
		{codes.NotFound, http.StatusNotFound, false, true},
		{codes.Unavailable, http.StatusServiceUnavailable, false, false},
		{codes.Aborted, http.StatusServiceUnavailable, false, false},
		{codes.ResourceExhausted, http.StatusServiceUnavailable, false, false},
		{codes.Internal, http.StatusInternalServerError, true, false},
	} {
		var logs bytes.Buffer
		mux := http.NewServeMux()
		mux.Handle(calendarRoute, calendarFeed(failingFeeds{err: status.Error(c.code, "detail")}, time.Second, slog.New(slog.NewJSONHandler(&logs, nil))))
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", "/calendar/v1/clinics/north/calendarFeeds/f1.ics?token=s3cret", nil)
		req.RemoteAddr, req.Header["X-Forwarded-For"] = "10.0.0.9:5555", []string{"203.0.113.7"}
		mux.ServeHTTP(rec, req)
		if got := strings.Contains(logs.String(), "calendar feed refused") && strings.Contains(logs.String(), "203.0.113.7") &&
			strings.Contains(logs.String(), "10.0.0.9:5555"); got != c.refused {
			t.Errorf("%v: refusal logged with its origin %v, want %v: %s", c.code, got, c.refused, logs.String())
		}
		if rec.Code != c.status {
			t.Errorf("%v: status %d, want %d", c.code, rec.Code, c.status)
		}
		if ra := rec.Header().Get("Retry-After"); (ra != "") != (c.status == http.StatusServiceUnavailable) {
			t.Errorf("%v: Retry-After %q; want one with a 503 only", c.code, ra)
		}
		if got := strings.Contains(logs.String(), "calendar feed failed"); got != c.logged {
			t.Errorf("%v: logged %v, want %v: %s", c.code, got, c.logged, logs.String())
		}
		if strings.Contains(logs.String(), "s3cret") {
			t.Errorf("%v: the token was logged: %s", c.code, logs.String())
		}
	}
}

// countingFeeds counts the feeds exported.
type countingFeeds struct {
	interventionsv1.InterventionsServiceClient
	n *int
}

func (f countingFeeds) ExportCalendarFeed(context.Context, *interventionsv1.ExportCalendarFeedRequest, ...grpc.CallOption) (*httpbody.HttpBody, error) {
	*f.n++
	return &httpbody.HttpBody{ContentType: "text/calendar", Data: []byte("BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n")}, nil
}

// A HEAD of a feed is refused without exporting it: the export counts as
// the feed's use and records a read of the meetings, and its answer, cut
// to the headers, would send none of it.
func TestCalendarFeedRefusesHead(t *testing.T) {
	var n int
	mux := http.NewServeMux()
	mux.Handle(calendarRoute, calendarFeed(countingFeeds{n: &n}, time.Second, slog.New(slog.DiscardHandler)))
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("HEAD", "/calendar/v1/clinics/north/calendarFeeds/f1.ics?token=s3cret", nil))
	if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != "GET" || n != 0 {
		t.Fatalf("HEAD: %d, Allow %q, %d exports; want 405, GET, none", rec.Code, rec.Header().Get("Allow"), n)
	}
	rec = httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/calendar/v1/clinics/north/calendarFeeds/f1.ics?token=s3cret", nil))
	if rec.Code != http.StatusOK || n != 1 {
		t.Fatalf("GET: %d, %d exports; want 200 and one", rec.Code, n)
	}
}

// Every read of a feed is logged with where it came from and the app that
// read it, never the token: the address is a bearer secret, and a second
// origin reading it is how a copy in the wrong hands shows.
func TestCalendarFeedReadsAreLoggedWithTheirOrigin(t *testing.T) {
	var n int
	var logs bytes.Buffer
	mux := http.NewServeMux()
	mux.Handle(calendarRoute, calendarFeed(countingFeeds{n: &n}, time.Second, slog.New(slog.NewJSONHandler(&logs, nil))))
	req := httptest.NewRequest("GET", "/calendar/v1/clinics/north/calendarFeeds/f1.ics?token=s3cret", nil)
	req.RemoteAddr, req.Header["X-Forwarded-For"] = "10.0.0.9:5555", []string{"203.0.113.7"}
	req.Header.Set("User-Agent", "Calendar/1.0 "+strings.Repeat("x", 300))
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, req)
	line := logs.String()
	if rec.Code != http.StatusOK || !strings.Contains(line, "calendar feed read") || !strings.Contains(line, "203.0.113.7") ||
		!strings.Contains(line, "10.0.0.9:5555") || !strings.Contains(line, "Calendar/1.0") ||
		!strings.Contains(line, "/calendar/v1/clinics/north/calendarFeeds/f1.ics") || strings.Contains(line, "s3cret") ||
		strings.Contains(line, strings.Repeat("x", 200)) {
		t.Fatalf("%d; logged %s", rec.Code, line)
	}
}
