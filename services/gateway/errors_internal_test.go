package gateway

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/servicetest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A token a service refused (it lapsed after this door's check) is answered
// with a Bearer challenge, not with the status message grpc-gateway would
// put in WWW-Authenticate; other errors get none.
func TestRefusedTokenGetsABearerChallenge(t *testing.T) {
	mux := runtime.NewServeMux()
	for code, want := range map[codes.Code]string{
		codes.Unauthenticated:  `Bearer realm="handoff", error="invalid_token"`,
		codes.PermissionDenied: "",
	} {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodGet, "/v1/clinics/north/families", nil)
		httpError(context.Background(), mux, &runtime.JSONPb{}, w, r, status.Error(code, "invalid token: expired"))
		if got := w.Header().Get("WWW-Authenticate"); got != want {
			t.Errorf("%v: WWW-Authenticate %q, want %q", code, got, want)
		}
		if code == codes.Unauthenticated && w.Code != http.StatusUnauthorized {
			t.Errorf("%v: status %d, want 401", code, w.Code)
		}
	}
}

// A call refused for a service out of reach says when to try again; one
// refused for what it asked, or for a message over a size limit, does not.
func TestUnavailableSaysWhenToRetry(t *testing.T) {
	mux := runtime.NewServeMux()
	for code, want := range map[codes.Code]string{
		codes.Unavailable: "5", codes.ResourceExhausted: "", codes.InvalidArgument: "", codes.Internal: "",
	} {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodGet, "/v1/clinics/north/families", nil)
		httpError(context.Background(), mux, &runtime.JSONPb{}, w, r, status.Error(code, "no"))
		if got := w.Header().Get("Retry-After"); got != want {
			t.Errorf("%v: Retry-After %q, want %q", code, got, want)
		}
	}
}

// Only a quota of ours is 429; grpc's own RESOURCE_EXHAUSTED (a message
// over the size limit between the gateway and a service) is 500, as a
// retry meets it again, and its body says what to do instead of grpc's
// text.
func TestOnlyAQuotaIsTooManyRequests(t *testing.T) {
	mux := runtime.NewServeMux()
	for name, tc := range map[string]struct {
		err  error
		want int
	}{
		"quota":     {apperr.QuotaExceeded("subscriptions of ehr-1", "you hold 50"), http.StatusTooManyRequests},
		"too large": {status.Error(codes.ResourceExhausted, "grpc: received message larger than max (70000000 vs. 67108864)"), http.StatusInternalServerError},
	} {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodGet, "/v1/clinics/north/families", nil)
		httpError(context.Background(), mux, &runtime.JSONPb{}, w, r, tc.err)
		if w.Code != tc.want {
			t.Errorf("%s: HTTP %d, want %d", name, w.Code, tc.want)
		}
		if name == "too large" && (strings.Contains(w.Body.String(), "grpc:") || !strings.Contains(w.Body.String(), "page_size")) {
			t.Errorf("%s: body %s; want what to do, not grpc's text", name, w.Body)
		}
	}
}

// Of the client's headers, only those the services read go on as gRPC
// metadata: not cookies, the user agent or the referrer, nor gRPC metadata
// a client names itself.
func TestOnlyTheHeadersTheServicesReadGoOn(t *testing.T) {
	for key, want := range map[string]bool{
		"Idempotency-Key": true, "If-Match": true, "idempotency-key": true,
		"Cookie": false, "User-Agent": false, "Referer": false, "Origin": false, "Grpc-Metadata-Authorization": false, "X-Custom": false,
	} {
		if _, got := headers(key); got != want {
			t.Errorf("%s passed on: %v, want %v", key, got, want)
		}
	}
}

// A call that could not reach its service is answered without the way's
// details (addresses, names, certificates): plainly while the caller
// waits, and by the caller's own end when it went or its time ran out as
// the way failed.
func TestUnreachedServiceSaysNothingOfTheWay(t *testing.T) {
	way := status.Error(codes.Unavailable, "connection error: desc = transport: dial tcp 10.2.3.4:9090: connect: connection refused")
	invoker := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return way }
	var logs strings.Builder
	call := unreached(slog.New(slog.NewTextHandler(&logs, nil)), "families")
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	late, stop := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer stop()
	for _, c := range []struct {
		name string
		ctx  context.Context
		want codes.Code
	}{
		{"waiting", context.Background(), codes.Unavailable},
		{"gone", gone, codes.Canceled},
		{"out of time", late, codes.DeadlineExceeded},
	} {
		err := call(c.ctx, "/handoff.families.v1.FamiliesService/GetFamily", nil, nil, nil, invoker)
		if status.Code(err) != c.want || strings.Contains(err.Error(), "10.2.3.4") {
			t.Errorf("%s: %v; want %v, without the address", c.name, err, c.want)
		}
	}
	if !strings.Contains(logs.String(), "10.2.3.4") {
		t.Errorf("log %q; want the way's failure for the operator", logs.String())
	}
}

// A disclosure the gateway refuses to record for a caller not staff never
// reaches the families service's audit trail: the log names who tried.
func TestRefusedDisclosureIsLoggedWithItsCaller(t *testing.T) {
	var logs servicetest.LogBuffer
	intercept := staffRecordDisclosures(slog.New(slog.NewTextHandler(&logs, nil)))
	ctx := auth.WithPrincipal(context.Background(), auth.Principal{Subject: "ehr-7", Clinic: "north", Roles: []auth.Role{auth.RoleEHR}})
	called := false
	err := intercept(ctx, familiesv1.FamiliesService_CreateDisclosure_FullMethodName, nil, nil, nil,
		func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
			called = true
			return nil
		})
	if status.Code(err) != codes.PermissionDenied || called {
		t.Fatalf("the EHR's disclosure: %v, passed on %v; want PermissionDenied, not passed on", err, called)
	}
	if out := logs.String(); !strings.Contains(out, "subject=ehr-7") || !strings.Contains(out, "clinic=north") || !strings.Contains(out, "CreateDisclosure") {
		t.Fatalf("log %q; want the caller and the method", out)
	}
	// Nor does the EHR ask which families its consents cover: the answer
	// for referrals, against the one for identity, would tell it which
	// were deleted. The services ask it themselves, not through here.
	err = intercept(ctx, familiesv1.FamiliesService_ListCoveredFamilies_FullMethodName, nil, nil, nil,
		func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
			called = true
			return nil
		})
	if status.Code(err) != codes.PermissionDenied || called || !strings.Contains(logs.String(), "ListCoveredFamilies") {
		t.Fatalf("the EHR's ListCoveredFamilies: %v, passed on %v, log %q; want PermissionDenied, not passed on, logged", err, called, logs.String())
	}
}
