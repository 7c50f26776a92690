package fhir

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/fhir/go/proto/google/fhir/proto/r4/core/codes_go_proto"
	"github.com/google/fhir/go/proto/google/fhir/proto/r4/core/datatypes_go_proto"
	"github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/bundle_and_contained_resource_go_proto"
	"github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/task_go_proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/consentgate"
	"github.com/handoff-health/handoff/services/referrals/taskstatus"
)

// putTask is the EHR's write-back of a referral's status (the receiving
// program accepted, rejected, scheduled, paused, completed, saw a no-show,
// or cancelled: in the closed loop either side may cancel). It calls the same
// transition as the gRPC API, so the referral's workflow hears of it. Only
// Task.status (with executionPeriod and statusReason) is read; other fields
// of the body are the server's and are ignored, but for a modifier
// extension or implicit rules anywhere in it, which are refused (see
// parseTask).
func (s *server) putTask(ctx context.Context, w http.ResponseWriter, r *http.Request, c caller) {
	id := r.PathValue("id")
	if mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || !jsonType(mt) || !r4Version(params) {
		s.fail(w, http.StatusUnsupportedMediaType, "not-supported", "send the Task as application/fhir+json, FHIR R4 (fhirVersion=4.0)")
		return
	}
	body, err := io.ReadAll(r.Body)
	if tooBig := new(http.MaxBytesError); errors.As(err, &tooBig) {
		s.fail(w, http.StatusRequestEntityTooLarge, "too-costly", fmt.Sprintf("the Task is larger than %d bytes", tooBig.Limit))
		return
	}
	if err != nil {
		// A body cut off, or its chunks malformed: the client's, not one
		// too large.
		s.fail(w, http.StatusBadRequest, "structure", "cannot read the request body")
		return
	}
	t, err := s.parseTask(body, id)
	if err != nil {
		s.writeErr(w, err, "Task/"+id)
		return
	}
	if !handoffID.MatchString(id) {
		s.noCreate(w, id)
		return
	}
	if msg := aip.HeaderProblem(r.Header, true); msg != "" {
		s.writeErr(w, invalid(msg), "Task/"+id)
		return
	}
	if vs := r.Header.Values("If-Match"); len(vs) > 1 || strings.Contains(strings.Join(vs, ""), ",") ||
		(len(vs) == 1 && aip.BareEtag(vs[0]) == "") {
		// One version is checked: a list would be misread as one odd etag,
		// and an empty one as none, the write going through unguarded.
		s.writeErr(w, invalid("If-Match: give one version, the one you read"), "Task/"+id)
		return
	}
	ifMatch := aip.BareEtag(r.Header.Get("If-Match"))
	if ifMatch == "*" {
		// Any version (RFC 9110): the Task exists or the read below says not.
		ifMatch = ""
	}
	requestID := r.Header.Get("Idempotency-Key")
	// What the request alone decides is refused before the referral is
	// read: a read by the EHR is recorded as a disclosure.
	if len(requestID) > 64 {
		s.writeErr(w, invalid("Idempotency-Key is at most 64 characters"), "Task/"+id)
		return
	}
	if err := refusedStatus(t); err != nil {
		s.writeErr(w, err, "Task/"+id)
		return
	}
	// Without If-Match the step is made against the version just read, so
	// that two identical PUTs racing (an EHR retrying on a timeout) cannot
	// both move the referral: the loser reads again and finds nothing to
	// change. A version changed by someone else between the read and the
	// write is read again the same way.
	for attempt := 0; ; attempt++ {
		cur, err := s.referral(ctx, c, id)
		if status.Code(err) == codes.NotFound {
			s.noCreate(w, id)
			return
		}
		if err != nil {
			s.writeErr(w, err, "Task/"+id)
			return
		}
		// From here on every answer follows a read the referrals service
		// recorded as a disclosure, and may tell of the referral (its
		// status, its version): it carries the Part 2 labels and notice
		// as the Task would.
		ch, err := change(cur, t)
		if err != nil {
			s.writeErr(w, disclosed(err), "Task/"+id)
			return
		}
		if ch.none {
			// Resending the current status changes nothing, but a stale
			// If-Match still fails, as any write would; unless the request
			// has an Idempotency-Key: it may be the retry of the write that
			// made this version, whose answer got lost, and the service
			// answers that from its record of the first (or refuses the
			// stale version itself).
			stale := ifMatch != "" && ifMatch != cur.GetEtag()
			if stale && requestID == "" {
				s.failDisclosed(w, http.StatusPreconditionFailed, "conflict", fmt.Sprintf("Task/%s changed since it was read (version %s)", id, cur.GetEtag()))
				return
			}
			if !stale {
				if err := keeps(cur, ch); err != nil {
					s.writeErr(w, disclosed(err), "Task/"+id)
					return
				}
				s.writeTask(w, r, cur)
				return
			}
		}
		etag := cmp.Or(ifMatch, cur.GetEtag())
		updated, err := s.transition(ctx, cur.GetName(), ch, etag, requestID)
		if ifMatch == "" && status.Code(err) == codes.Aborted && attempt < 2 {
			continue
		}
		if ifMatch == "" && status.Code(err) == codes.Aborted {
			// No precondition was sent, so not 412: the Task kept
			// changing under this update.
			s.failDisclosed(w, http.StatusConflict, "conflict", fmt.Sprintf("Task/%s kept changing while it was updated: retry", id))
			return
		}
		if err != nil {
			s.writeErr(w, disclosed(err), "Task/"+id)
			return
		}
		s.writeTask(w, r, updated)
		return
	}
}

// programStatuses are the Task statuses the receiving program sets here
// (Gravity closed-loop referral: the requester's draft and requested, and
// entered-in-error, are not the program's).
var programStatuses = map[string]bool{
	"accepted": true, "rejected": true, "in-progress": true, "on-hold": true, "completed": true, "failed": true, "cancelled": true,
}

// refusedStatus refuses, from the body alone, a status the receiving
// program does not set, so that the refusal does not depend on the
// referral's state (and the referral is not read for it).
func refusedStatus(t *task_go_proto.Task) error {
	st := taskStatusName(t.GetStatus().GetValue())
	if !programStatuses[st] {
		return unprocessable{msg: fmt.Sprintf("a Task cannot be set to %q here; the receiving program sets accepted, rejected, in-progress, on-hold, completed, failed or cancelled", st)}
	}
	reason := statusReason(t)
	// The counselor has to know what the program waits for, or why it
	// called the referral off.
	if st == "on-hold" && reason == "" {
		return unprocessable{msg: "an on-hold Task needs statusReason (its text, or a coding's display): what the program waits for"}
	}
	if st == "cancelled" && reason == "" {
		return unprocessable{msg: "a cancelled Task needs statusReason (its text, or a coding's display): why the program called the referral off"}
	}
	if st == "rejected" && reason == "" && rejectionCode(t) == referralsv1.RejectionReason_REJECTION_REASON_UNSPECIFIED {
		return unprocessable{msg: "a rejected Task needs statusReason: a code of " + sysRejection + " (" + rejectionCodes +
			"), or its text: the counselor looks for another program by it"}
	}
	if n := utf8.RuneCountInString(reason); n > maxReason {
		return invalid(fmt.Sprintf("statusReason is at most %d characters (it has %d)", maxReason, n))
	}
	// The times the status uses need a time of day (see change), which the
	// body alone says.
	if st == "in-progress" {
		// Required even when the Task is in progress already: PUT replaces
		// the Task, and the body alone must decide, as a refusal after the
		// read would be recorded as a disclosure that never left.
		start := t.GetExecutionPeriod().GetStart()
		if start == nil {
			return unprocessable{msg: "an in-progress Task needs executionPeriod.start: the time of the intake appointment"}
		}
		if _, err := taskInstant("executionPeriod.start", start); err != nil {
			return err
		}
	}
	if end := t.GetExecutionPeriod().GetEnd(); end != nil && st == "completed" {
		if _, err := taskInstant("executionPeriod.end", end); err != nil {
			return err
		}
	}
	return nil
}

// taskInstant is a Task time as a timestamp. A time of day is needed: FHIR
// allows a bare date, which the parser reads as midnight UTC, the evening
// before across the Americas.
func taskInstant(field string, d *datatypes_go_proto.DateTime) (*timestamppb.Timestamp, error) {
	if d.GetPrecision() < datatypes_go_proto.DateTime_SECOND {
		return nil, invalid(field + " needs a time of day with its zone, for example 2026-05-01T09:30:00-05:00")
	}
	return timestamppb.New(time.UnixMicro(d.GetValueUs())), nil
}

// rejectionCodes lists the codes of sysRejection, for messages and the
// CapabilityStatement.
var rejectionCodes = func() string {
	var codes []string
	for v := range int32(len(referralsv1.RejectionReason_name)) {
		if v != 0 {
			codes = append(codes, strings.TrimPrefix(referralsv1.RejectionReason(v).String(), "REJECTION_REASON_"))
		}
	}
	return strings.Join(codes, ", ")
}()

// rejectionCode is the rejection reason a Task body codes in sysRejection
// (case aside), or UNSPECIFIED.
func rejectionCode(t *task_go_proto.Task) referralsv1.RejectionReason {
	for _, cd := range t.GetStatusReason().GetCoding() {
		if cd.GetSystem().GetValue() != sysRejection {
			continue
		}
		code := strings.ToUpper(strings.TrimSpace(cd.GetCode().GetValue()))
		if v, ok := referralsv1.RejectionReason_value["REJECTION_REASON_"+code]; ok && v != 0 {
			return referralsv1.RejectionReason(v)
		}
	}
	return referralsv1.RejectionReason_REJECTION_REASON_UNSPECIFIED
}

// maxReason is the longest reason a referral keeps (the gRPC API's limit).
const maxReason = 500

// statusReason is the reason a Task body gives: statusReason.text, or else
// the display of its first coding that has one (a reason sent as a code
// alone), or "".
func statusReason(t *task_go_proto.Task) string {
	sr := t.GetStatusReason()
	if v := sr.GetText().GetValue(); strings.TrimSpace(v) != "" {
		return v
	}
	for _, cd := range sr.GetCoding() {
		if v := cd.GetDisplay().GetValue(); strings.TrimSpace(v) != "" {
			return v
		}
	}
	return ""
}

// writeTask answers an update with the Task as it stands, or with what
// the client's Prefer header asks for (FHIR's return preference): no body
// (return=minimal), or an OperationOutcome saying it was done. The version
// headers go with each. The update followed a read recorded as a
// disclosure, and every answer tells of the referral (its version at
// least): each carries the Part 2 notice, in the resource, or, with no
// body, in the header the services' answers carry it in.
func (s *server) writeTask(w http.ResponseWriter, r *http.Request, rf *referralsv1.Referral) {
	res := task(rf)
	writeVersionHeaders(w, res)
	switch ret := preferredReturn(r.Header); ret {
	case "minimal":
		w.Header().Set("Preference-Applied", "return=minimal")
		w.Header().Set(consentgate.NoticeHeader, consentgate.Notice)
		w.WriteHeader(http.StatusOK)
	case "OperationOutcome":
		w.Header().Set("Preference-Applied", "return=OperationOutcome")
		s.writeResource(w, http.StatusOK, part2(outcome("information", "informational", "Task/"+aip.ID(rf.GetName())+" is up to date"), nil, ""))
	default:
		s.writeResource(w, http.StatusOK, res)
	}
}

// preferredReturn is the return preference of a Prefer header (RFC 7240):
// "minimal", "representation", "OperationOutcome", or "" for none.
func preferredReturn(h http.Header) string {
	for _, v := range h.Values("Prefer") {
		for _, p := range strings.Split(v, ",") {
			// A preference may carry parameters after a semicolon.
			p, _, _ = strings.Cut(p, ";")
			if k, val, ok := strings.Cut(strings.TrimSpace(p), "="); ok && strings.EqualFold(strings.TrimSpace(k), "return") {
				return strings.Trim(strings.TrimSpace(val), `"`)
			}
		}
	}
	return ""
}

// parseTask reads the body with the validating R4 parser.
func (s *server) parseTask(body []byte, id string) (*task_go_proto.Task, error) {
	pb, err := s.parse(body)
	if err != nil {
		return nil, invalid(err.Error())
	}
	cr, _ := pb.(*bundle_and_contained_resource_go_proto.ContainedResource)
	t := cr.GetTask()
	if t == nil {
		return nil, invalid("the body must be a Task")
	}
	if t.GetId().GetValue() != id {
		return nil, invalid(fmt.Sprintf("the Task's id (%q) must be the id in the URL (%q)", t.GetId().GetValue(), id))
	}
	// Handoff understands no modifier extension and no implicit rules,
	// and either can change what the Task means ("entered in error, do not
	// act"): FHIR says to refuse such a resource rather than act on it.
	if where := modifierExtension(t.ProtoReflect(), "Task"); where != "" {
		return nil, unprocessable{msg: where + " is not understood here, so the Task cannot be acted on"}
	}
	return t, nil
}

// modifierExtension returns the path of the first modifier extension or
// implicit rules in m, m itself included, or "".
// Contained resources (held as Any) are looked into too.
func modifierExtension(m protoreflect.Message, path string) string {
	if m.Descriptor().FullName() == "google.protobuf.Any" {
		inner, err := anypb.UnmarshalNew(m.Interface().(*anypb.Any), proto.UnmarshalOptions{})
		if err != nil {
			return path // unreadable: not to be acted on either
		}
		return modifierExtension(inner.ProtoReflect(), path)
	}
	found := ""
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Name() == "modifier_extension" {
			if fd.IsList() && v.List().Len() > 0 {
				found = path + ".modifierExtension"
			}
			return found == ""
		}
		if fd.Name() == "implicit_rules" {
			found = path + ".implicitRules"
			return false
		}
		if fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind {
			return true
		}
		name := path + "." + fd.JSONName()
		switch {
		case fd.IsList():
			for i := 0; i < v.List().Len() && found == ""; i++ {
				found = modifierExtension(v.List().Get(i).Message(), fmt.Sprintf("%s[%d]", name, i))
			}
		case fd.IsMap():
		default:
			found = modifierExtension(v.Message(), name)
		}
		return found == ""
	})
	return found
}

// statusChange is what a PUT asks of a referral.
type statusChange struct {
	none   bool
	status string
	reason string
	// For in-progress: the intake appointment; for completed: when the
	// person entered treatment.
	at *timestamppb.Timestamp
	// For in-progress: the appointment to book, the current one moved.
	appointment *referralsv1.IntakeAppointment
	// For rejected; coded says whether the body named the rejection's
	// code (OTHER among them), rather than giving text alone.
	rejection *referralsv1.Rejection
	coded     bool
}

// taskStatusName is the FHIR code of a parsed Task status.
func taskStatusName(v codes_go_proto.TaskStatusCode_Value) string {
	return strings.ToLower(strings.ReplaceAll(v.String(), "_", "-"))
}

// change works out the transition a Task body asks for.
func change(cur *referralsv1.Referral, t *task_go_proto.Task) (statusChange, error) {
	ch := statusChange{
		status: taskStatusName(t.GetStatus().GetValue()),
		reason: statusReason(t),
	}
	var err error
	if start := t.GetExecutionPeriod().GetStart(); start != nil && ch.status == "in-progress" {
		if ch.at, err = taskInstant("executionPeriod.start", start); err != nil {
			return ch, err
		}
	}
	if end := t.GetExecutionPeriod().GetEnd(); end != nil && ch.status == "completed" {
		if ch.at, err = taskInstant("executionPeriod.end", end); err != nil {
			return ch, err
		}
	}
	// A rebooking moves the appointment: where it is, what to bring and
	// whether it is by video stay as the program gave them, since FHIR's
	// Task carries only the time.
	if ch.status == "in-progress" && ch.at != nil {
		ch.appointment = &referralsv1.IntakeAppointment{StartTime: ch.at}
		if a := cur.GetIntakeAppointment(); a != nil {
			ch.appointment = proto.Clone(a).(*referralsv1.IntakeAppointment)
			ch.appointment.StartTime = ch.at
		}
	}
	// Built before the same-status check: a retried rejection whose first
	// answer got lost is sent on with its Idempotency-Key, and the
	// service refuses a rejection without its reason before it looks the
	// key up.
	if ch.status == "rejected" {
		ch.rejection = &referralsv1.Rejection{Reason: referralsv1.RejectionReason_REJECTION_REASON_OTHER, Details: ch.reason}
		if code := rejectionCode(t); code != referralsv1.RejectionReason_REJECTION_REASON_UNSPECIFIED {
			ch.rejection.Reason, ch.coded = code, true
		}
	}
	if ch.status == "failed" && cur.GetState() == referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW {
		// The no-show reported again: it reads in-progress (unattended).
		ch.none = true
		return ch, nil
	}
	if ch.status == "in-progress" && ch.at == nil && cur.GetState() == referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW {
		// It reads in-progress, but booking it again needs the new time:
		// answered as no change, the program would think it booked.
		return ch, unprocessable{msg: "to book a no-show again, give executionPeriod.start: the new intake appointment's time"}
	}
	if ch.status == taskstatus.Of(cur.GetState()) {
		// The same status; in-progress with another appointment time is a
		// rebooking.
		// FHIR times carry microseconds at most.
		ch.none = ch.status != "in-progress" || ch.at == nil ||
			sameInstant(ch.at.AsTime(), cur.GetIntakeAppointment().GetStartTime().AsTime())
		if ch.none {
			return ch, nil
		}
	}
	switch ch.status {
	case "accepted", "failed", "cancelled", "on-hold":
	case "completed":
	case "in-progress":
		if ch.at == nil {
			return ch, unprocessable{msg: "an in-progress Task needs executionPeriod.start: the time of the intake appointment"}
		}
	case "rejected":
	default:
		return ch, unprocessable{msg: fmt.Sprintf("a Task cannot be set to %q here; the receiving program sets accepted, rejected, in-progress, on-hold, completed, failed or cancelled", ch.status)}
	}
	return ch, nil
}

// keeps refuses a PUT that sends the Task's status again with other
// content: a new reason for a pause or a cancellation, another rejection,
// another entry into treatment. None is a step the referral takes, and a
// 200 would tell the program the counselor now reads it.
func keeps(cur *referralsv1.Referral, ch statusChange) error {
	refuse := func(what string) error {
		return unprocessable{msg: fmt.Sprintf("the Task is %s already, with another %s; a PUT that keeps the status does not change it", ch.status, what)}
	}
	switch ch.status {
	case "on-hold", "cancelled":
		if !sameText(ch.reason, shownReason(cur), false) {
			return refuse("statusReason")
		}
	case "rejected":
		// A code sent is compared, and a text sent (or a code's display)
		// with the text the Task shows, in any case: a body with the code
		// alone is the same rejection sent again.
		if ch.coded && ch.rejection.GetReason() != cur.GetRejection().GetReason() ||
			ch.reason != "" && !sameText(ch.reason, shownReason(cur), true) {
			return refuse("statusReason")
		}
	case "completed":
		if ch.at != nil && !sameInstant(ch.at.AsTime(), cur.GetTreatmentEntryTime().AsTime()) {
			return refuse("executionPeriod.end (the entry into treatment)")
		}
	}
	return nil
}

// sameText compares a statusReason sent with the one the Task shows, as
// the render shows text (scrubText) and with each run of white space as
// one: a Task read and written back, its line endings changed on the way,
// says the same.
func sameText(sent, shown string, fold bool) bool {
	norm := func(s string) string { return strings.Join(strings.Fields(scrubText(s)), " ") }
	if fold {
		return strings.EqualFold(norm(sent), norm(shown))
	}
	return norm(sent) == norm(shown)
}

// sameInstant compares an instant sent with one stored, at the precision
// sent: an EHR that keeps seconds, or milliseconds, writes back the entry
// it read to that precision.
func sameInstant(sent, stored time.Time) bool {
	precision := time.Microsecond
	switch {
	case sent.Nanosecond() == 0:
		precision = time.Second
	case sent.Nanosecond()%int(time.Millisecond) == 0:
		precision = time.Millisecond
	}
	return sent.Truncate(precision).Equal(stored.Truncate(precision))
}

// unprocessable is a well-formed request the referral's rules refuse (422).
type unprocessable struct{ msg string }

func (e unprocessable) Error() string { return e.msg }

// noCreate answers an update of a Task that does not exist: R4's 405, as
// Tasks are made by referrals, never by a PUT (updateCreate is false).
// A 404 would say the server has no Task endpoint at all.
func (s *server) noCreate(w http.ResponseWriter, id string) {
	w.Header().Set("Allow", "GET")
	s.fail(w, http.StatusMethodNotAllowed, "not-supported", fmt.Sprintf("Task/%s does not exist, and Tasks are not created by PUT", id))
}

// transition calls the referral transition for ch.
func (s *server) transition(ctx context.Context, name string, ch statusChange, etag, requestID string) (*referralsv1.Referral, error) {
	plain := &referralsv1.TransitionReferralRequest{Name: name, Reason: ch.reason, Etag: etag, RequestId: requestID}
	rs := s.cfg.Referrals
	switch ch.status {
	case "accepted":
		return rs.AcceptReferral(ctx, plain)
	case "failed":
		return rs.MarkReferralNoShow(ctx, plain)
	case "cancelled":
		return rs.CancelReferral(ctx, plain)
	case "on-hold":
		return rs.PauseReferral(ctx, plain)
	case "rejected":
		return rs.RejectReferral(ctx, &referralsv1.RejectReferralRequest{Name: name, Rejection: ch.rejection, Etag: etag, RequestId: requestID})
	case "in-progress":
		return rs.ScheduleReferral(ctx, &referralsv1.ScheduleReferralRequest{Name: name,
			IntakeAppointment: ch.appointment, Reason: ch.reason, Etag: etag, RequestId: requestID})
	case "completed":
		return rs.CompleteReferral(ctx, &referralsv1.CompleteReferralRequest{Name: name, TreatmentEntryTime: ch.at,
			Reason: ch.reason, Etag: etag, RequestId: requestID})
	}
	return nil, unprocessable{msg: "unsupported status " + ch.status}
}
