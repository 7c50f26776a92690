package fhir

import (
	"context"
	"errors"
	"net/http"
	"regexp"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/consentgate"
)

// badRequest is an error in what the caller sent, answered with 400.
type badRequest struct{ msg string }

func (e badRequest) Error() string { return e.msg }

func invalid(msg string) error { return badRequest{msg: msg} }

// notFound is a FHIR id that cannot name anything, answered with 404.
type notFound struct{ msg string }

func (e notFound) Error() string { return e.msg }

// consentRefusedText is the whole diagnostics of a refusal for want of
// consent. The services' own message names the family and the recipient;
// none of that is the caller's to learn, so it is never passed on.
const consentRefusedText = "The patient's consent does not cover this disclosure."

// disclosedErr is an error answered after a read that the services
// recorded as a disclosure: the answer tells of the record read (a state,
// a version, that no intake is booked), so it carries the Part 2 labels
// and notice as the record itself would (42 CFR 2.32).
type disclosedErr struct{ error }

func (e disclosedErr) Unwrap() error { return e.error }

func disclosed(err error) error { return disclosedErr{err} }

// failDisclosed is fail for an answer that follows a disclosure.
func (s *server) failDisclosed(w http.ResponseWriter, code int, issueCode, msg string) {
	s.writeResource(w, code, part2(outcome("error", issueCode, msg), nil, ""))
}

// writeErr answers err as an OperationOutcome with the HTTP status FHIR
// clients expect. what is the resource the caller asked for ("Task/x", or
// the type for a search): diagnostics speak of it only, never of records
// the caller did not name (a referral's family, another record).
func (s *server) writeErr(w http.ResponseWriter, err error, what string) {
	fail := s.fail
	if d, ok := errors.AsType[disclosedErr](err); ok {
		fail, err = s.failDisclosed, d.error
	}
	var br badRequest
	var nf notFound
	var un unprocessable
	switch {
	case errors.As(err, &br):
		fail(w, http.StatusBadRequest, "invalid", br.msg)
		return
	case errors.As(err, &nf):
		fail(w, http.StatusNotFound, "not-found", nf.msg)
		return
	case errors.As(err, &un):
		fail(w, http.StatusUnprocessableEntity, "business-rule", un.msg)
		return
	case errors.Is(err, context.DeadlineExceeded):
		fail(w, http.StatusGatewayTimeout, "timeout", "the request took too long")
		return
	case errors.Is(err, context.Canceled):
		fail(w, statusClientClosed, "transient", "the request was cancelled")
		return
	}
	st, ok := status.FromError(err)
	if !ok {
		s.cfg.Log.Error("fhir: request failed", "error", err)
		s.writeRaw(w, http.StatusInternalServerError, internalOutcome)
		return
	}
	code, issue := httpStatus(st)
	var msg string
	switch {
	case code == http.StatusServiceUnavailable:
		// Not the request's fault, nor a fault here: the client may retry.
		s.cfg.Log.Warn("fhir: service call failed", "code", st.Code().String())
		w.Header().Set("Retry-After", retryAfter)
		msg = "temporarily unavailable: retry"
	case code == http.StatusGatewayTimeout:
		s.cfg.Log.Warn("fhir: service call failed", "code", st.Code().String())
		msg = "the request took too long: retry"
	case code == http.StatusNotImplemented:
		s.cfg.Log.Warn("fhir: service call failed", "code", st.Code().String())
		msg = "not supported by this server"
	case code >= 500:
		s.cfg.Log.Error("fhir: service call failed", "code", st.Code().String())
		msg = "internal error"
	case consentgate.Refused(err):
		msg = consentRefusedText
	case code == http.StatusNotFound:
		// The service may have named another record (the family behind
		// a referral): speak of the one asked for.
		msg = what + " not found"
	case code == http.StatusForbidden:
		msg = "this caller may not access " + what
	default:
		msg = scrubNames(st.Message(), what)
	}
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="handoff", error="invalid_token"`)
	}
	fail(w, code, issue, msg)
}

// retryAfter is the Retry-After of a 503, in seconds, as the REST API's.
const retryAfter = "5"

// resourceName matches a Handoff resource name in a service's message.
var resourceName = regexp.MustCompile(`clinics/[a-z0-9*][a-z0-9-]*(?:/[A-Za-z]+/[a-z0-9][a-z0-9-]*)*`)

// scrubNames replaces the resource names in msg that are not the one the
// caller asked for (what, as Type/id) with "a related record".
func scrubNames(msg, what string) string {
	_, id, _ := strings.Cut(what, "/")
	return resourceName.ReplaceAllStringFunc(msg, func(name string) string {
		if id != "" && lastSegment(name) == id {
			return name
		}
		return "a related record"
	})
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
		// 412 only answers a precondition the client sent: a stale etag
		// (If-Match). Any other conflict (two writes met, retry) is 409.
		if errorReason(st) == apperr.ReasonEtagMismatch {
			return http.StatusPreconditionFailed, "conflict"
		}
		return http.StatusConflict, "conflict"
	case codes.FailedPrecondition:
		if errorReason(st) == consentgate.ReasonConsentRequired {
			return http.StatusForbidden, "forbidden"
		}
		return http.StatusUnprocessableEntity, "business-rule"
	case codes.ResourceExhausted:
		// Only a quota of ours is the caller's to free or wait out; grpc's
		// own RESOURCE_EXHAUSTED (a message over a size limit between the
		// facade and a service) is a fault here, and a retry meets it again.
		if errorReason(st) == apperr.ReasonQuotaExceeded {
			return http.StatusTooManyRequests, "throttled"
		}
		return http.StatusInternalServerError, "exception"
	case codes.Unimplemented:
		return http.StatusNotImplemented, "not-supported"
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout, "timeout"
	case codes.Unavailable:
		return http.StatusServiceUnavailable, "transient"
	case codes.Canceled:
		// The caller went away (or its deadline passed on the way): no
		// fault here, and no one reads the answer.
		return statusClientClosed, "transient"
	default:
		return http.StatusInternalServerError, "exception"
	}
}

func errorReason(st *status.Status) string { return apperr.Reason(st.Err()) }

// readErr is err as a read or a search answers it. A conflict there (a
// page emptied under the search, a write met) asks for the same request
// again: FHIR clients retry a 503 with Retry-After, and take a 409 to a
// GET as final. A stale If-Match keeps its 412.
func readErr(err error) error {
	if st, ok := status.FromError(err); ok && st.Code() == codes.Aborted && errorReason(st) != apperr.ReasonEtagMismatch {
		return status.Error(codes.Unavailable, st.Message())
	}
	return err
}

// statusClientClosed answers a request its caller cancelled (nginx's 499):
// not a server error, so not logged as one.
const statusClientClosed = 499
