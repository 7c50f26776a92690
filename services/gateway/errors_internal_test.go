package gateway

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
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
