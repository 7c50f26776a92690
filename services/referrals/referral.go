package referrals

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/consentgate"
	"github.com/handoff-health/handoff/services/idempotency"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/referrals/intake"
	"github.com/handoff-health/handoff/services/referrals/taskstatus"
)

// referralSelect reads a referral with its history in one statement: one
// snapshot, so the history never shows a step the row does not (a change
// committed between two reads would). Only the aggregates' names come
// from the lateral join, so the conditions callers add name the
// referral's columns unqualified.
const referralSelect = `SELECT id, family, subject_kind, member_id, service_kind, program_id, urgency, reason, hold,
	intervention, appointment, state, rejection_reason, rejection_details, first_contact_time, treatment_entry_time,
	no_show_count, create_time, update_time, version, follow_up_services, engagement_time,
	h_from, h_to, h_actor, h_reason, h_time
	FROM referrals LEFT JOIN LATERAL (
		SELECT array_agg(e.from_state ORDER BY e.seq) AS h_from, array_agg(e.to_state ORDER BY e.seq) AS h_to,
			array_agg(e.actor ORDER BY e.seq) AS h_actor, array_agg(e.reason ORDER BY e.seq) AS h_reason,
			array_agg(e.event_time ORDER BY e.seq) AS h_time
		FROM referral_events e WHERE e.clinic = referrals.clinic AND e.referral_id = referrals.id) h ON true`

// businessStatus is the BSeR business status text of each referral state
// (its Task.status is taskstatus.Of).
var businessStatus = map[referralsv1.ReferralState]string{
	referralsv1.ReferralState_REFERRAL_STATE_REQUESTED: "created",
	referralsv1.ReferralState_REFERRAL_STATE_ACCEPTED:  "accepted",
	referralsv1.ReferralState_REFERRAL_STATE_REJECTED:  "declined",
	referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED: "scheduled",
	referralsv1.ReferralState_REFERRAL_STATE_COMPLETED: "event completed",
	referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW:   "unattended",
	referralsv1.ReferralState_REFERRAL_STATE_CANCELLED: "cancelled",
	referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD:   "on hold",
	// The requester's own status: BSeR has no business status for it.
	referralsv1.ReferralState_REFERRAL_STATE_ENTERED_IN_ERROR: "entered in error",
}

// fulfilmentCompleted is the business status of a referral completed
// without its intake appointment.
const fulfilmentCompleted = "fulfillment completed"

func scanReferral(clinic string) pgx.RowToFunc[*referralsv1.Referral] {
	return func(r pgx.CollectableRow) (*referralsv1.Referral, error) {
		var (
			id, family, member, program, reason, hold, intervention, rejDetails string
			subject, kind, urgency, state, rejReason                            int16
			appt                                                                []byte
			firstContact, entered, engaged                                      *time.Time
			noShows, followUps                                                  int32
			created, updated                                                    time.Time
			version                                                             int64
			hFrom, hTo                                                          []int16
			hActor, hReason                                                     []string
			hTime                                                               []time.Time
		)
		if err := r.Scan(&id, &family, &subject, &member, &kind, &program, &urgency, &reason, &hold, &intervention,
			&appt, &state, &rejReason, &rejDetails, &firstContact, &entered, &noShows, &created, &updated, &version,
			&followUps, &engaged, &hFrom, &hTo, &hActor, &hReason, &hTime); err != nil {
			return nil, err
		}
		ref := &referralsv1.Referral{
			Name: referralName(clinic, id), Family: family,
			Subject:     &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind(subject), MemberId: member},
			ServiceKind: referralsv1.ServiceKind(kind), Program: programName(clinic, program),
			Urgency: referralsv1.Urgency(urgency), Reason: reason, Hold: hold, Intervention: intervention,
			State: referralsv1.ReferralState(state), NoShowCount: noShows, FollowUpServiceCount: followUps,
			CreateTime: timestamppb.New(created), UpdateTime: timestamppb.New(updated), Etag: aip.Etag(version),
		}
		if appt != nil {
			ref.IntakeAppointment = &referralsv1.IntakeAppointment{}
			// Lenient: a field a newer release added (read during a rollout,
			// or after a rollback) must not make the row unreadable.
			if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(appt, ref.IntakeAppointment); err != nil {
				return nil, fmt.Errorf("decode appointment of %s: %w", id, err)
			}
		}
		if rejReason != 0 {
			ref.Rejection = &referralsv1.Rejection{Reason: referralsv1.RejectionReason(rejReason), Details: rejDetails}
		}
		if firstContact != nil {
			ref.FirstContactTime = timestamppb.New(*firstContact)
		}
		if entered != nil {
			ref.TreatmentEntryTime = timestamppb.New(*entered)
			start := created
			if firstContact != nil {
				start = *firstContact
			}
			ref.DaysToTreatmentEntry = int32(entered.Sub(start) / (24 * time.Hour))
		}
		if engaged != nil {
			ref.EngagementTime = timestamppb.New(*engaged)
		}
		ref.FhirTaskStatus, ref.BusinessStatus = taskstatus.Of(ref.State), businessStatus[ref.State]
		if len(hTo) != len(hFrom) || len(hActor) != len(hFrom) || len(hReason) != len(hFrom) || len(hTime) != len(hFrom) {
			return nil, fmt.Errorf("read history of %s: columns of different lengths", id)
		}
		for i := range hFrom {
			ref.History = append(ref.History, &referralsv1.ReferralEvent{
				FromState: referralsv1.ReferralState(hFrom[i]), ToState: referralsv1.ReferralState(hTo[i]),
				Actor: hActor[i], Reason: hReason[i], Time: timestamppb.New(hTime[i]),
			})
		}
		if intake.CompletedWithout(ref) {
			// Entered without the booked intake (on the spot, or some other
			// way): no event completed, the fulfilment did (BSeR 7.0), as
			// the FHIR Task says.
			ref.BusinessStatus = fulfilmentCompleted
		}
		return ref, nil
	}
}

func readReferral(ctx context.Context, q pgdb.Querier, r ref, lock bool) (*referralsv1.Referral, error) {
	sql := referralSelect + ` WHERE clinic = $1 AND id = $2`
	if lock {
		// The row only: the history is read, not locked.
		sql += ` FOR UPDATE OF referrals`
	}
	rows, err := q.Query(ctx, sql, r.clinic, r.id)
	return pgdb.One(rows, err, referralName(r.clinic, r.id), scanReferral(r.clinic))
}

func newReferral() *referralsv1.Referral { return &referralsv1.Referral{} }

func checkReferral(clinic string, r *referralsv1.Referral) error {
	var vs apperr.Violations
	checkRef(&vs, clinic, "referral.family", r.GetFamily(), "families", true)
	checkRef(&vs, clinic, "referral.program", r.GetProgram(), "programs", true)
	checkRef(&vs, clinic, "referral.intervention", r.GetIntervention(), "interventions", false)
	switch r.GetSubject().GetKind() {
	case referralsv1.SubjectKind_SUBJECT_KIND_UNSPECIFIED:
		vs.Add("referral.subject.kind", "is required")
	case referralsv1.SubjectKind_SUBJECT_KIND_FAMILY_MEMBER:
		if r.GetSubject().GetMemberId() == "" {
			vs.Add("referral.subject.member_id", "is required for a family member")
		}
	case referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE:
		if r.GetSubject().GetMemberId() != "" {
			vs.Add("referral.subject.member_id", "must be empty for the loved one")
		}
	}
	if r.GetServiceKind() == referralsv1.ServiceKind_SERVICE_KIND_UNSPECIFIED {
		vs.Add("referral.service_kind", "is required")
	}
	if r.GetUrgency() == referralsv1.Urgency_URGENCY_UNSPECIFIED {
		vs.Add("referral.urgency", "is required")
	}
	if strings.TrimSpace(r.GetReason()) == "" {
		vs.Add("referral.reason", "is required: why the person is referred, minimum necessary")
	}
	return vs.Err()
}

// insertReferral writes a new REQUESTED referral after checking that its
// program exists in the clinic and offers the service; held is the service
// of the hold it is converted from (UNSPECIFIED without one).
//
// The program row is locked for the rest of the transaction: unlocked, a
// program deleted (or its service dropped) between the check and the
// insert would still get the referral. A referral converted from a hold
// takes the row for update, as the conversion then updates it (two
// shared locks both upgraded would deadlock); others share it.
func (s *Server) insertReferral(ctx context.Context, tx pgx.Tx, clinic string, in *referralsv1.Referral, held referralsv1.ServiceKind, now time.Time) (*referralsv1.Referral, error) {
	lock := forShare
	if in.GetHold() != "" {
		lock = forUpdate
	}
	prog, err := readProgramLocking(ctx, tx, ref{clinic, aip.ID(in.GetProgram())}, lock)
	if apperr.IsCode(err, codes.NotFound) && in.GetHold() == "" {
		// The program is a field of the request, as the family and the
		// intervention are: refused on it, not as a missing referral.
		return nil, apperr.Field("referral.program", "no such program")
	}
	if err != nil {
		return nil, err
	}
	if err := notDeleted(prog); err != nil {
		return nil, err
	}
	// A held slot was agreed for its service (held) when it was taken: a
	// program that stopped offering the service since still owes the
	// person the place (and may reject the referral), rather than the
	// "yes" failing. Another service must be one it offers now.
	if in.GetHold() == "" || in.GetServiceKind() != held {
		if err := offered(prog, in.GetServiceKind()); err != nil {
			return nil, err
		}
	}
	r := ref{clinic, aip.NewID()}
	var first *time.Time
	if in.GetFirstContactTime() != nil {
		// A time up to clockSkew ahead (another clock) counts from now,
		// as the families service keeps it: stored ahead, an entry into
		// treatment reported now would be refused as before it.
		t := in.GetFirstContactTime().AsTime()
		if t.After(now) {
			t = now
		}
		first = &t
	}
	requested := referralsv1.ReferralState_REFERRAL_STATE_REQUESTED
	if _, err := tx.Exec(ctx, `INSERT INTO referrals (clinic, id, family, subject_kind, member_id, service_kind, program_id,
		urgency, reason, hold, intervention, state, first_contact_time, create_time, update_time)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14)`,
		r.clinic, r.id, in.GetFamily(), int16(in.GetSubject().GetKind()), in.GetSubject().GetMemberId(),
		int16(in.GetServiceKind()), aip.ID(in.GetProgram()), int16(in.GetUrgency()), in.GetReason(), in.GetHold(),
		in.GetIntervention(), int16(requested), first, now); err != nil {
		return nil, fmt.Errorf("insert referral: %w", err)
	}
	if err := addEvent(ctx, tx, r, referralsv1.ReferralState_REFERRAL_STATE_UNSPECIFIED, requested, auth.Actor(ctx), "requested", now); err != nil {
		return nil, err
	}
	out, err := readReferral(ctx, tx, r, false)
	if err != nil {
		return nil, err
	}
	return out, emit(ctx, tx, clinic, "referral.created", out.GetName(), out)
}

func addEvent(ctx context.Context, tx pgx.Tx, r ref, from, to referralsv1.ReferralState, actor, reason string, at time.Time) error {
	if _, err := tx.Exec(ctx, `INSERT INTO referral_events (clinic, referral_id, from_state, to_state, actor, reason, event_time)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`, r.clinic, r.id, int16(from), int16(to), actor, reason, at); err != nil {
		return fmt.Errorf("insert referral event: %w", err)
	}
	return nil
}

// CreateReferral implements the API.
func (s *Server) CreateReferral(ctx context.Context, req *referralsv1.CreateReferralRequest) (*referralsv1.Referral, error) {
	clinic, err := parentClinic(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	in := proto.Clone(req.GetReferral()).(*referralsv1.Referral)
	in.Hold = "" // set only by ConvertHold
	if err := checkReferral(clinic, in); err != nil {
		return nil, err
	}
	if err := reportedTime("referral.first_contact_time", in.GetFirstContactTime(), s.cfg.Now()); err != nil {
		return nil, err
	}
	// A retry answers as the first call did, whatever became of the family.
	if out, ok, err := idempotency.Stored(ctx, s.pool, clinic, svc+"CreateReferral", req.GetRequestId(), req, newReferral); ok || err != nil {
		return out, err
	}
	fam, err := s.checkFamily(ctx, "referral.family", in.GetFamily(), "referral.subject.member_id", in.GetSubject().GetMemberId())
	if err != nil {
		return nil, err
	}
	in.FirstContactTime = firstContact(in.GetFirstContactTime(), fam, s.cfg.Now())
	if err := s.checkIntervention(ctx, "referral.intervention", in.GetIntervention(), in.GetFamily()); err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.pool, clinic, svc+"CreateReferral", req.GetRequestId(), req, newReferral,
		func(tx pgx.Tx) (*referralsv1.Referral, error) {
			return s.insertReferral(ctx, tx, clinic, in, referralsv1.ServiceKind_SERVICE_KIND_UNSPECIFIED, s.cfg.Now())
		})
}

// GetReferral implements the API.
func (s *Server) GetReferral(ctx context.Context, req *referralsv1.GetReferralRequest) (*referralsv1.Referral, error) {
	r, err := authorized(ctx, "name", req.GetName(), "referrals")
	if err != nil {
		return nil, err
	}
	out, err := readReferral(ctx, s.pool, r, false)
	if err != nil {
		return nil, consentgate.Unseen(ctx, req.GetName(), err)
	}
	if err := s.cfg.Consent.Check(ctx, consentgate.ReferralPatient(out), out.GetName(), familiesv1.InformationKind_INFORMATION_KIND_REFERRALS, ""); err != nil {
		return nil, err
	}
	return out, nil
}

var referralFilter = map[string]aip.FilterField{
	"state":        {Column: "state", Kind: aip.Enum, Enum: aip.EnumLookup(referralsv1.ReferralState_value, "REFERRAL_STATE_")},
	"family":       {Column: "family", Kind: aip.String},
	"program":      {Column: "('clinics/' || clinic || '/programs/' || program_id)", Kind: aip.String, Collection: "programs", IDColumn: "program_id"},
	"service_kind": {Column: "service_kind", Kind: aip.Enum, Enum: aip.EnumLookup(referralsv1.ServiceKind_value, "SERVICE_KIND_")},
	"urgency":      {Column: "urgency", Kind: aip.Enum, Enum: aip.EnumLookup(referralsv1.Urgency_value, "URGENCY_")},
	"intervention": {Column: "intervention", Kind: aip.String},
	// For FHIR's Appointment?patient=, which matches only appointments
	// the loved one takes part in.
	"subject_kind": {Column: "subject_kind", Kind: aip.Enum, Enum: aip.EnumLookup(referralsv1.SubjectKind_value, "SUBJECT_KIND_")},
	// For FHIR _lastUpdated searches.
	"update_time": {Column: "update_time", Kind: aip.Time},
	// For FHIR Task?status=: Task.status as fhir_task_status says it, of
	// which one (in-progress) stands for more than one state.
	"fhir_task_status": {Column: "state", Kind: aip.EnumSet, Values: taskstatus.Lookup},
	// For calendar feeds: one query for the intake appointments in a
	// window, instead of one per family. The appointment is stored as its
	// proto3 JSON; its start is kept in a column (migration 0007), indexed.
	"intake_time": {Column: "intake_time", Kind: aip.Time},
}

// ListReferrals implements the API.
func (s *Server) ListReferrals(ctx context.Context, req *referralsv1.ListReferralsRequest) (*referralsv1.ListReferralsResponse, error) {
	clinic, err := parentClinic(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	scope, args := `clinic = $1`, []any{clinic}
	// An outside system sees only the referrals of families whose consent
	// covers it: narrowed in SQL, so its pages and page tokens never reflect
	// a referral it may not see.
	covered, out, err := s.cfg.Consent.Covered(ctx, req.GetParent(), familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	if err != nil {
		return nil, err
	}
	if out {
		// A member's own referral is the member's record: only their own
		// consent covers it, not the loved one's.
		scope, args = `clinic = $1 AND (family = ANY($2::text[]) AND member_id = '' OR
			member_id <> '' AND (family, member_id) IN (SELECT * FROM unnest($3::text[], $4::text[])))`,
			[]any{clinic, covered.Families, covered.MemberFamilies, covered.MemberIDs}
	}
	fields := referralFilter
	if err := auth.RequirePinned(ctx, aip.PinnedBy(req.GetFilter(), fields), "referrals", "family", "intervention"); err != nil {
		return nil, err
	}
	if calendarOnly(ctx) {
		// A list refuses a filter on a field the caller's view leaves out:
		// otherwise a filter could ask what the view hides.
		// update_time too: the view shows the appointment's last change
		// in its place, not the referral's.
		fields = aip.Without(referralFilter, "program", "service_kind", "urgency", "intervention", "subject_kind", "update_time")
	}
	items, next, err := pgdb.ListPage(ctx, s.pool, "referrals", referralSelect, scope, args,
		req, fields, scanReferral(clinic), func(r *referralsv1.Referral) string { return r.GetName() })
	if err != nil {
		return nil, err
	}
	// Everything that can fail comes before the disclosures are recorded
	// (the history came with the page): the accounting lists only what left.
	items, next, err = consentgate.Record(ctx, s.cfg.Consent, req.GetParent(), items, next, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS,
		consentgate.ReferralPatient, (*referralsv1.Referral).GetName)
	if err != nil {
		return nil, err
	}
	if calendarOnly(ctx) {
		// Calendar feeds need when and whether, nothing of why. Their
		// version and update time are the appointment's own (see
		// appointmentVersion): the calendar host sees them.
		ids := make([]string, len(items))
		for i, r := range items {
			ids[i] = aip.ID(r.GetName())
		}
		bases, err := s.calendarBases(ctx, clinic, ids)
		if err != nil {
			return nil, err
		}
		for i, r := range items {
			version, changed := appointmentVersion(r, bases[ids[i]])
			items[i] = &referralsv1.Referral{Name: r.GetName(), Family: r.GetFamily(), State: r.GetState(),
				IntakeAppointment:  &referralsv1.IntakeAppointment{StartTime: r.GetIntakeAppointment().GetStartTime()},
				TreatmentEntryTime: r.GetTreatmentEntryTime(), History: lastStep(r),
				CreateTime: r.GetCreateTime(), UpdateTime: timestamppb.New(changed), Etag: aip.Etag(version)}
		}
	}
	return &referralsv1.ListReferralsResponse{Referrals: items, NextPageToken: next}, nil
}

// appointmentVersion numbers the changes to what a calendar shows of a
// referral's intake appointment, and says when the last was: a booking or
// rebooking (a step to SCHEDULED), and a step that cancels the event or
// brings it back (on hold, cancelled, entered in error, an admission that
// made the appointment moot; a resume). The referral's own version and
// update time move with every write (an admission at the appointment, a
// follow-up service, a reason edited), and a calendar host that saw them
// move on a past appointment would learn that the person was admitted and
// kept coming. Steps only add, so the version never goes back. A referral
// written before this counted (migration 0013) counts on from b, its
// version and update time then, which feeds had already sent; only its
// steps after b's time add.
func appointmentVersion(r *referralsv1.Referral, b calendarBase) (int64, time.Time) {
	hidden := func(st referralsv1.ReferralState) bool { return intake.Hidden(st, r) }
	var version int64 = 1
	changed := r.GetCreateTime().AsTime()
	var since time.Time // steps until then are in the base
	if b.version != nil && b.time != nil {
		version, changed, since = *b.version, *b.time, *b.time
	}
	booked := false
	for _, e := range r.GetHistory() {
		to := e.GetToState()
		booked = booked || to == referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED
		if !booked || !e.GetTime().AsTime().After(since) {
			continue // no event yet, or counted in the base
		}
		if to == referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED || hidden(e.GetFromState()) != hidden(to) {
			version++
			changed = e.GetTime().AsTime()
		}
	}
	return version, changed
}

// calendarBase is a referral's migration 0013 columns.
type calendarBase struct {
	version *int64
	time    *time.Time
}

// calendarBases reads the calendar bases of the clinic's referrals ids.
func (s *Server) calendarBases(ctx context.Context, clinic string, ids []string) (map[string]calendarBase, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, calendar_base, calendar_base_time FROM referrals WHERE clinic = $1 AND id = ANY($2)`, clinic, ids)
	if err != nil {
		return nil, fmt.Errorf("read calendar bases: %w", err)
	}
	out := map[string]calendarBase{}
	var id string
	var v *int64
	var at *time.Time
	if _, err := pgx.ForEachRow(rows, []any{&id, &v, &at}, func() error {
		var b calendarBase // copies: the scan may reuse what v and at point to
		if v != nil && at != nil {
			version, t := *v, *at
			b.version, b.time = &version, &t
		}
		out[id] = b
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read calendar bases: %w", err)
	}
	return out, nil
}

// lastStep is a referral's last transition, its states and time only (not
// who or why): a calendar tells from it an intake admitted while on hold.
func lastStep(r *referralsv1.Referral) []*referralsv1.ReferralEvent {
	h := r.GetHistory()
	if len(h) == 0 {
		return nil
	}
	e := h[len(h)-1]
	return []*referralsv1.ReferralEvent{{FromState: e.GetFromState(), ToState: e.GetToState(), Time: e.GetTime()}}
}

// calendarOnly reports whether the caller is the calendar reader and nothing
// that sees more: its view of a referral is when and whether, not why.
func calendarOnly(ctx context.Context) bool {
	p, ok := auth.FromContext(ctx)
	return ok && p.Has(auth.RoleCalendarReader) && !p.Has(auth.RoleCounselor, auth.RoleClinicAdmin, auth.RoleWorker)
}

// UpdateReferral implements the API: only the reason can change.
func (s *Server) UpdateReferral(ctx context.Context, req *referralsv1.UpdateReferralRequest) (*referralsv1.Referral, error) {
	r, err := authorized(ctx, "referral.name", req.GetReferral().GetName(), "referrals")
	if err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.pool, r.clinic, svc+"UpdateReferral", req.GetRequestId(), req, newReferral,
		func(tx pgx.Tx) (*referralsv1.Referral, error) {
			cur, err := readReferral(ctx, tx, r, true)
			if err != nil {
				return nil, err
			}
			if err := aip.CheckEtag(cur.GetName(), req.GetReferral().GetEtag(), cur.GetEtag()); err != nil {
				return nil, err
			}
			// A closed referral's reason is what the program and the EHR
			// were sent when it closed; rewriting it after would leave
			// them, and the history, with another account than the record.
			if st := cur.GetState(); st == completed || st == rejected || st == cancelled || st == voided {
				return nil, apperr.FailedPrecondition("REFERRAL_CLOSED",
					fmt.Sprintf("%s is %s: its reason no longer changes", cur.GetName(), strings.TrimPrefix(st.String(), "REFERRAL_STATE_")),
					map[string]string{"resource": cur.GetName(), "state": strings.TrimPrefix(st.String(), "REFERRAL_STATE_")})
			}
			next := proto.Clone(cur).(*referralsv1.Referral)
			if err := aip.ApplyMask(next, req.GetReferral(), req.GetUpdateMask().GetPaths(), []string{"reason"}); err != nil {
				return nil, apperr.Field("update_mask", "%v", err)
			}
			if strings.TrimSpace(next.GetReason()) == "" {
				return nil, apperr.Field("referral.reason", "is required")
			}
			if _, err := tx.Exec(ctx, `UPDATE referrals SET reason = $3, update_time = $4, version = version + 1
				WHERE clinic = $1 AND id = $2`, r.clinic, r.id, next.GetReason(), s.cfg.Now()); err != nil {
				return nil, fmt.Errorf("update referral: %w", err)
			}
			out, err := readReferral(ctx, tx, r, false)
			if err != nil {
				return nil, err
			}
			return out, emit(ctx, tx, r.clinic, "referral.updated", out.GetName(), out)
		})
}
