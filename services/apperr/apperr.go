// Package apperr builds the gRPC errors Handoff's services return: a code, a
// message an integrator can act on, and the google.rpc details (ErrorInfo,
// BadRequest field violations) that say exactly what was wrong.
package apperr

import (
	"errors"
	"fmt"
	"strings"

	"buf.build/go/protovalidate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
)

// Domain is the ErrorInfo domain of every Handoff error.
const Domain = "handoff.health"

// Reasons used in ErrorInfo. They are stable: integrators may switch on them.
const (
	ReasonInvalidTransition = "INVALID_STATE_TRANSITION"
	ReasonEtagMismatch      = "ETAG_MISMATCH"
	ReasonRequestIDReused   = "REQUEST_ID_REUSED"
	ReasonSafetyScreen      = "SAFETY_SCREEN_REQUIRED"
	ReasonFamilyClosed      = "FAMILY_CLOSED"
	ReasonFamilyInTreatment = "FAMILY_IN_TREATMENT"
	ReasonNoConsequence     = "CONSEQUENCE_REQUIRED"
	ReasonNoCapacity        = "NO_CAPACITY"
	ReasonDoubleBooked      = "COUNSELOR_DOUBLE_BOOKED"
	ReasonFamilyBooked      = "FAMILY_DOUBLE_BOOKED"
	ReasonTooEarly          = "TOO_EARLY"
	ReasonAlreadyRecorded   = "ALREADY_RECORDED"
	ReasonAmbiguous         = "AMBIGUOUS"
	ReasonLeaseHeld         = "LEASE_HELD"
	ReasonNotFound          = "RESOURCE_NOT_FOUND"
	ReasonAlreadyExists     = "RESOURCE_ALREADY_EXISTS"
	ReasonUnauthenticated   = "UNAUTHENTICATED"
	ReasonPermissionDenied  = "PERMISSION_DENIED"
	ReasonQuotaExceeded     = "QUOTA_EXCEEDED"
)

// Violation is one field that failed validation.
type Violation struct {
	Field       string
	Description string
}

// Violations collects field violations while a request is checked.
type Violations []Violation

// Add records a violation of field.
func (v *Violations) Add(field, format string, args ...any) {
	*v = append(*v, Violation{Field: field, Description: fmt.Sprintf(format, args...)})
}

// CheckRules adds a violation, under field, for each of the proto's
// validation rules that m (a part of a resource after an update mask was
// applied) breaks. A nil m breaks none. An error is the rules' own (one
// that does not compile or cannot be evaluated): the server's fault, not
// the request's.
func CheckRules(v *Violations, field string, m proto.Message) error {
	if m == nil || !m.ProtoReflect().IsValid() {
		return nil
	}
	err := protovalidate.Validate(m)
	var verr *protovalidate.ValidationError
	if !errors.As(err, &verr) {
		if err != nil {
			return fmt.Errorf("validation rules of %s: %w", field, err)
		}
		return nil
	}
	for _, x := range verr.Violations {
		f := field
		if p := protovalidate.FieldPathString(x.Proto.GetField()); p != "" {
			f += "." + p
		}
		v.Add(f, "%s", x.Proto.GetMessage())
	}
	return nil
}

// Err returns an INVALID_ARGUMENT error listing the violations, or nil.
func (v Violations) Err() error {
	if len(v) == 0 {
		return nil
	}
	return InvalidArgument(v...)
}

// InvalidArgument returns INVALID_ARGUMENT with BadRequest field violations.
func InvalidArgument(vs ...Violation) error {
	br := &errdetails.BadRequest{}
	parts := make([]string, 0, len(vs))
	for _, v := range vs {
		br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{
			Field: v.Field, Description: v.Description,
		})
		parts = append(parts, v.Field+": "+v.Description)
	}
	return withDetails(codes.InvalidArgument, "invalid request: "+strings.Join(parts, "; "), br)
}

// Field returns INVALID_ARGUMENT for a single field.
func Field(field, format string, args ...any) error {
	return InvalidArgument(Violation{Field: field, Description: fmt.Sprintf(format, args...)})
}

// RequestIDReused says that a request id came back with another request:
// INVALID_ARGUMENT on request_id, with ErrorInfo REQUEST_ID_REUSED so that
// a client retrying its own request can tell it from a malformed id.
//
// made, if not empty, is the resource the first request made: told only to
// the caller who sent it (ErrorInfo metadata "resource"), so that a retry
// whose body changed can carry on with what its first try made.
func RequestIDReused(requestID, made string) error {
	desc := fmt.Sprintf("request id %q was already used for a different request", requestID)
	info := &errdetails.ErrorInfo{Reason: ReasonRequestIDReused, Domain: Domain}
	if made != "" {
		desc += "; it made " + made
		info.Metadata = map[string]string{"resource": made}
	}
	return withDetails(codes.InvalidArgument, "invalid request: request_id: "+desc,
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "request_id", Description: desc}}},
		info)
}

// NotFound says that the named resource does not exist (or is not visible to
// the caller: the two are indistinguishable on purpose).
func NotFound(name string) error {
	return withDetails(codes.NotFound, fmt.Sprintf("%s not found", name), &errdetails.ErrorInfo{
		Reason: ReasonNotFound, Domain: Domain, Metadata: map[string]string{"resource": name},
	})
}

// PermissionDenied says the caller may not make this call, as it asks it
// (ReasonPermissionDenied).
func PermissionDenied(msg string) error {
	return withDetails(codes.PermissionDenied, msg, &errdetails.ErrorInfo{Reason: ReasonPermissionDenied, Domain: Domain})
}

// AlreadyExists says the resource a call would bring into being is there
// already (for example an undelete of a resource that is not deleted).
func AlreadyExists(name, msg string) error {
	return withDetails(codes.AlreadyExists, msg, &errdetails.ErrorInfo{
		Reason: ReasonAlreadyExists, Domain: Domain, Metadata: map[string]string{"resource": name},
	})
}

// QuotaExceeded is RESOURCE_EXHAUSTED for a count the caller may not go
// past (AIP-193: a QuotaFailure naming subject). Unlike a rate limit it
// does not pass with time: the caller frees some of what it holds first.
func QuotaExceeded(subject, msg string) error {
	return withDetails(codes.ResourceExhausted, msg,
		&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{Subject: subject, Description: msg}}},
		&errdetails.ErrorInfo{Reason: ReasonQuotaExceeded, Domain: Domain, Metadata: map[string]string{"subject": subject}})
}

// FailedPrecondition says the system is not in a state that allows the call.
func FailedPrecondition(reason, msg string, metadata map[string]string) error {
	return withDetails(codes.FailedPrecondition, msg, &errdetails.ErrorInfo{
		Reason: reason, Domain: Domain, Metadata: metadata,
	})
}

// ReasonNotReady is the reason of a call refused because the stored
// resource lacks what the call needs (see NotReady).
const ReasonNotReady = "RESOURCE_NOT_READY"

// NotReady is FAILED_PRECONDITION listing, as PreconditionFailure
// violations, the fields of the stored resource name that keep the call
// from going ahead: the request was fine, the resource is not (a draft
// without a place cannot be scheduled), and the caller fixes the resource
// with another call.
func NotReady(name string, vs Violations) error {
	pf := &errdetails.PreconditionFailure{}
	parts := make([]string, 0, len(vs))
	for _, v := range vs {
		pf.Violations = append(pf.Violations, &errdetails.PreconditionFailure_Violation{
			Type: "FIELD", Subject: v.Field, Description: v.Description})
		parts = append(parts, v.Field+": "+v.Description)
	}
	return withDetails(codes.FailedPrecondition, name+" is not ready: "+strings.Join(parts, "; "), pf,
		&errdetails.ErrorInfo{Reason: ReasonNotReady, Domain: Domain, Metadata: map[string]string{"resource": name}})
}

// InvalidTransition is FAILED_PRECONDITION for a state machine step that is not
// allowed from the current state.
func InvalidTransition(name, from, to string) error {
	return FailedPrecondition(ReasonInvalidTransition,
		fmt.Sprintf("%s is %s and cannot move to %s", name, from, to),
		map[string]string{"resource": name, "from": from, "to": to})
}

// EtagMismatch is ABORTED: the resource changed since the caller read it.
func EtagMismatch(name string) error {
	return withDetails(codes.Aborted,
		fmt.Sprintf("%s changed since it was read (etag mismatch): read it again and retry", name),
		&errdetails.ErrorInfo{Reason: ReasonEtagMismatch, Domain: Domain, Metadata: map[string]string{"resource": name}})
}

// Internal hides an unexpected error from the caller; the caller sees only
// that something failed inside.
func Internal(_ error) error {
	return status.Error(codes.Internal, "internal error")
}

func withDetails(code codes.Code, msg string, details ...protoadapt.MessageV1) error {
	st := status.New(code, msg)
	withD, err := st.WithDetails(details...)
	if err != nil {
		return st.Err()
	}
	return withD.Err()
}

// IsCode reports whether err carries the gRPC code c.
func IsCode(err error, c codes.Code) bool {
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		return se.GRPCStatus().Code() == c
	}
	return false
}

// Reason returns the ErrorInfo reason err carries, or "".
func Reason(err error) string {
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return ""
	}
	for _, d := range se.GRPCStatus().Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}

// ViolatedFields returns the fields of the field violations err carries, in
// order, or none.
func ViolatedFields(err error) []string {
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return nil
	}
	var out []string
	for _, d := range se.GRPCStatus().Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				out = append(out, v.GetField())
			}
		}
	}
	return out
}
