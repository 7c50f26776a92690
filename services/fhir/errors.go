package fhir

import (
	"context"
	"errors"
	"net/http"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/handoff-health/handoff/services/consentgate"
)

// badRequest is an error in what the caller sent, answered with 400.
type badRequest struct{ msg string }

func (e badRequest) Error() string { return e.msg }

func invalid(msg string) error { return badRequest{msg: msg} }

// notFound is a FHIR id that cannot name anything, answered with 404.
type notFound struct{ msg string }

func (e notFound) Error() string { return e.msg }

// writeErr answers err as an OperationOutcome with the HTTP status FHIR
// clients expect.
func (s *server) writeErr(w http.ResponseWriter, err error) {
	var br badRequest
	var nf notFound
	var un unprocessable
	switch {
	case errors.As(err, &br):
		s.fail(w, http.StatusBadRequest, "invalid", br.msg)
		return
	case errors.As(err, &nf):
		s.fail(w, http.StatusNotFound, "not-found", nf.msg)
		return
	case errors.As(err, &un):
		s.fail(w, http.StatusUnprocessableEntity, "business-rule", un.msg)
		return
	case errors.Is(err, context.DeadlineExceeded):
		s.fail(w, http.StatusGatewayTimeout, "timeout", "the request took too long")
		return
	}
	st, ok := status.FromError(err)
	if !ok {
		s.cfg.Log.Error("fhir: request failed", "error", err)
		s.writeRaw(w, http.StatusInternalServerError, internalOutcome)
		return
	}
	code, issue := httpStatus(st)
	msg := st.Message()
	if code >= 500 {
		s.cfg.Log.Error("fhir: service call failed", "code", st.Code().String())
		msg = "internal error"
	}
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="handoff", error="invalid_token"`)
	}
	s.fail(w, code, issue, msg)
}

// httpStatus maps a service's gRPC status to an HTTP status and a FHIR
// issue type.
func httpStatus(st *status.Status) (int, string) {
	switch st.Code() {
	case codes.InvalidArgument, codes.OutOfRange:
		return http.StatusBadRequest, "invalid"
	case codes.NotFound:
		return http.StatusNotFound, "not-found"
	case codes.AlreadyExists:
		return http.StatusConflict, "duplicate"
	case codes.PermissionDenied:
		return http.StatusForbidden, "forbidden"
	case codes.Unauthenticated:
		return http.StatusUnauthorized, "login"
	case codes.Aborted:
		// A stale etag (If-Match).
		return http.StatusPreconditionFailed, "conflict"
	case codes.FailedPrecondition:
		if errorReason(st) == consentgate.ReasonConsentRequired {
			return http.StatusForbidden, "forbidden"
		}
		return http.StatusUnprocessableEntity, "business-rule"
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests, "throttled"
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout, "timeout"
	case codes.Unavailable:
		return http.StatusServiceUnavailable, "transient"
	default:
		return http.StatusInternalServerError, "exception"
	}
}

func errorReason(st *status.Status) string {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}
