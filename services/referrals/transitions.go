package referrals

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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
)

type state = referralsv1.ReferralState

const (
	requested = referralsv1.ReferralState_REFERRAL_STATE_REQUESTED
	accepted  = referralsv1.ReferralState_REFERRAL_STATE_ACCEPTED
	rejected  = referralsv1.ReferralState_REFERRAL_STATE_REJECTED
	scheduled = referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED
	completed = referralsv1.ReferralState_REFERRAL_STATE_COMPLETED
	noShow    = referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW
	cancelled = referralsv1.ReferralState_REFERRAL_STATE_CANCELLED
	onHold    = referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD
	voided    = referralsv1.ReferralState_REFERRAL_STATE_ENTERED_IN_ERROR
)

// legal lists, for each target state, the states a referral may reach it
// from (FHIR Task and BSeR, see the ReferralState documentation).
var legal = map[state][]state{
	accepted:  {requested},
	rejected:  {requested, accepted},
	scheduled: {accepted, scheduled, noShow, onHold},
	// From accepted: admitted on the spot, a walk-in or a same-day warm
	// handoff with no booking to record first; from hold or a missed
	// intake: admitted without a new booking (the person came in after
	// all), which a fake booking would otherwise have to stand for.
	completed: {accepted, scheduled, noShow, onHold},
	noShow:    {scheduled},
	cancelled: {requested, accepted, scheduled, noShow, onHold},
	// Gravity's on-hold pauses work that started: here, a booked intake.
	onHold: {scheduled},
	// A referral made in error is voided whatever became of it, but for a
	// treatment entry, which other records (the family's, the follow-up's)
	// took up.
	voided: {requested, accepted, rejected, scheduled, noShow, cancelled, onHold},
}

// step is one transition request, normalised.
type step struct {
	method, name, etag, requestID, reason string
	to                                    state
	req                                   proto.Message
	// check refuses, from the request and the time alone, a step that is
	// not a retry: after the request id lookup, so that a retry gets the
	// first answer even once the clock would refuse it.
	check func(now time.Time) error
	// ready refuses a legal step the referral is not ready for yet.
	ready func(cur *referralsv1.Referral, now time.Time) error
	// apply sets the columns the transition changes besides the state.
	// It returns errUnchanged when the request changes nothing (a report
	// already recorded): the referral is answered as it stands.
	apply func(ctx context.Context, tx pgx.Tx, r ref, now time.Time) error
	// stay marks a step that keeps the state: no legal move is checked
	// (its ready check says which states it takes), its apply updates the
	// row's version with what it changed, and it adds nothing to the
	// history. event, when set, names the event emitted instead of the
	// state's.
	stay  bool
	event string
	// full marks a rejection for want of room: the place a converted
	// hold took is not given back to a program that says it has none.
	full bool
}

// errUnchanged is apply's answer when the step changes nothing.
var errUnchanged = errors.New("referral unchanged")

func (s *Server) transition(ctx context.Context, st step) (*referralsv1.Referral, error) {
	r, err := authorized(ctx, "name", st.name, "referrals")
	if err != nil {
		return nil, err
	}
	_, outsider := consentgate.Outsider(ctx)
	var before *referralsv1.Referral
	if outsider {
		// The answer to a write-back discloses the referral, so the EHR's
		// step needs consent before anything else: even a refusal for its
		// state would tell the referral's state.
		if before, err = readReferral(ctx, s.pool, r, false); err != nil {
			return nil, consentgate.Unseen(ctx, st.name, err)
		}
		if err := s.cfg.Consent.Allowed(ctx, consentgate.ReferralPatient(before), before.GetName(), familiesv1.InformationKind_INFORMATION_KIND_REFERRALS); err != nil {
			return nil, err
		}
	}
	ran := false
	out, err := idempotency.InTx(ctx, s.pool, r.clinic, svc+st.method, st.requestID, st.req, newReferral,
		func(tx pgx.Tx) (*referralsv1.Referral, error) {
			ran = true
			if st.check != nil {
				if err := st.check(s.cfg.Now()); err != nil {
					return nil, err
				}
			}
			cur, err := readReferral(ctx, tx, r, true)
			if err != nil {
				return nil, err
			}
			if err := aip.CheckEtag(cur.GetName(), st.etag, cur.GetEtag()); err != nil {
				return nil, err
			}
			ok := st.stay
			for _, from := range legal[st.to] {
				ok = ok || cur.GetState() == from
			}
			if !ok {
				return nil, apperr.InvalidTransition(cur.GetName(),
					strings.TrimPrefix(cur.GetState().String(), "REFERRAL_STATE_"), strings.TrimPrefix(st.to.String(), "REFERRAL_STATE_"))
			}
			now := s.cfg.Now()
			if st.ready != nil {
				if err := st.ready(cur, now); err != nil {
					return nil, err
				}
			}
			changed := true
			if st.apply != nil {
				err := st.apply(ctx, tx, r, now)
				changed = !errors.Is(err, errUnchanged)
				if err != nil && changed {
					return nil, err
				}
			}
			out := cur
			if !changed {
				// Read again: after waiting for the row's lock, cur's row
				// is the one committed since, but its history (joined in
				// the same statement) is of the snapshot taken before.
				if out, err = readReferral(ctx, tx, r, false); err != nil {
					return nil, err
				}
			}
			if changed {
				if out, err = s.stepped(ctx, tx, r, cur, st, now); err != nil {
					return nil, err
				}
				if !st.stay && !st.full && cur.GetHold() != "" && keepsSlot(cur.GetState()) && !keepsSlot(st.to) && st.to != completed {
					if err := returnConvertedSlot(ctx, tx, r, now); err != nil {
						return nil, err
					}
				}
			}
			if outsider {
				// Recorded last before the commit: a step refused for its
				// state or etag records nothing, a consent revoked since the
				// check rolls the step back, and only a failed commit leaves
				// a record of an answer that never went out (which a retry
				// with the same request id then records no second time).
				if err := s.cfg.Consent.Check(ctx, consentgate.ReferralPatient(out), out.GetName(), familiesv1.InformationKind_INFORMATION_KIND_REFERRALS,
					disclosureRequestID(st)); err != nil {
					return nil, err
				}
			}
			return out, nil
		})
	if err == nil && outsider && !ran {
		// A retry's stored answer is disclosed again. Allowed above took no
		// lock, so the record is asked for again under the first call's
		// request id: the families service checks it there under lock (a
		// revocation that answered since counts), records it again if only
		// a newer consent covers it now, else records nothing more; and
		// the answer carries the notice.
		if err := s.cfg.Consent.Check(ctx, consentgate.ReferralPatient(out), out.GetName(), familiesv1.InformationKind_INFORMATION_KIND_REFERRALS,
			disclosureRequestID(st)); err != nil {
			return nil, err
		}
	}
	if err != nil && outsider && tellsState(err) {
		// A refusal for the referral's state or readiness tells the EHR
		// that state (completed: the patient entered treatment), or the
		// intake's time: it discloses the referral as an answer would, and
		// is recorded as one, after the rollback. A consent revoked since
		// the check answers instead.
		// Under a request id of its own: a retry with the same request
		// id that then succeeds discloses the referral again, and must be
		// recorded apart from this refusal.
		id := disclosureRequestID(st)
		if id != "" {
			id += "-refused"
		}
		if cerr := s.cfg.Consent.Check(ctx, consentgate.ReferralPatient(before), before.GetName(), familiesv1.InformationKind_INFORMATION_KIND_REFERRALS, id); cerr != nil {
			return nil, cerr
		}
	}
	return out, err
}

// stepped writes what a step changed, besides what its apply set: the
// state, the history and the event, and reads the referral back.
func (s *Server) stepped(ctx context.Context, tx pgx.Tx, r ref, cur *referralsv1.Referral, st step, now time.Time) (*referralsv1.Referral, error) {
	// A step that stays never moves a referral: its apply updated the row
	// (and its version) with what it changed.
	if !st.stay {
		if _, err := tx.Exec(ctx, `UPDATE referrals SET state = $3, update_time = $4, version = version + 1
			WHERE clinic = $1 AND id = $2`, r.clinic, r.id, int16(st.to), now); err != nil {
			return nil, fmt.Errorf("update referral: %w", err)
		}
		reason := st.reason
		if reason == "" {
			reason = strings.ToLower(strings.TrimPrefix(st.to.String(), "REFERRAL_STATE_"))
		}
		if err := addEvent(ctx, tx, r, cur.GetState(), st.to, auth.Actor(ctx), reason, now); err != nil {
			return nil, err
		}
	}
	out, err := readReferral(ctx, tx, r, false)
	if err != nil {
		return nil, err
	}
	// One event type per transition, so that the waiting workflow and the
	// EHR can subscribe to exactly what they need.
	event := st.event
	if event == "" {
		event = strings.ToLower(strings.TrimPrefix(st.to.String(), "REFERRAL_STATE_"))
	}
	return out, emit(ctx, tx, r.clinic, "referral."+event, out.GetName(), out)
}

// tellsState reports whether a refused step's answer speaks of the
// referral's state or schedule.
func tellsState(err error) bool {
	switch apperr.Reason(err) {
	case apperr.ReasonInvalidTransition, apperr.ReasonTooEarly, apperr.ReasonNotReady:
		return true
	}
	// A completion refused for its entry time tells when the first contact
	// was (an EHR could search it out by trying times).
	for _, d := range status.Convert(err).Details() {
		// A follow-up refusal that speaks of the referral's services.
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			if _, ok := info.GetMetadata()["follow_up_service"]; ok {
				return true
			}
		}
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				// The entry time, or the zone the services are counted in
				// (that one is kept tells that they exist).
				switch v.GetField() {
				case "treatment_entry_time", "service_time", "time_zone":
					return true
				}
			}
		}
	}
	return false
}

// disclosureRequestID is the request id of the disclosure a step with a
// request id records: derived from it, so that it cannot meet an id the
// EHR chose for a call of its own.
func disclosureRequestID(st step) string {
	if st.requestID == "" {
		return ""
	}
	h := sha256.Sum256([]byte(svc + st.method + "\x00" + st.requestID))
	return "referral-step-" + hex.EncodeToString(h[:20])
}

// AcceptReferral implements the API.
func (s *Server) AcceptReferral(ctx context.Context, req *referralsv1.TransitionReferralRequest) (*referralsv1.Referral, error) {
	return s.transition(ctx, step{method: "AcceptReferral", name: req.GetName(), etag: req.GetEtag(),
		requestID: req.GetRequestId(), reason: req.GetReason(), to: accepted, req: req})
}

// RejectReferral implements the API.
func (s *Server) RejectReferral(ctx context.Context, req *referralsv1.RejectReferralRequest) (*referralsv1.Referral, error) {
	if req.GetRejection().GetReason() == referralsv1.RejectionReason_REJECTION_REASON_UNSPECIFIED {
		return nil, apperr.Field("rejection.reason", "is required, for example AT_CAPACITY")
	}
	return s.transition(ctx, step{method: "RejectReferral", name: req.GetName(), etag: req.GetEtag(),
		requestID: req.GetRequestId(), reason: req.GetRejection().GetReason().String(), to: rejected, req: req,
		full: req.GetRejection().GetReason() == referralsv1.RejectionReason_REJECTION_REASON_AT_CAPACITY,
		apply: func(ctx context.Context, tx pgx.Tx, r ref, now time.Time) error {
			if _, err := tx.Exec(ctx, `UPDATE referrals SET rejection_reason = $3, rejection_details = $4 WHERE clinic = $1 AND id = $2`,
				r.clinic, r.id, int16(req.GetRejection().GetReason()), req.GetRejection().GetDetails()); err != nil {
				return err
			}
			if req.GetRejection().GetReason() == referralsv1.RejectionReason_REJECTION_REASON_AT_CAPACITY {
				return s.noRoomAt(ctx, tx, r, now)
			}
			return nil
		}})
}

// keepsSlot reports whether a referral converted from a hold keeps, in
// state st, the place the hold took: until it completes (the place is the
// person's) or ends without them (rejected, cancelled, voided).
func keepsSlot(st state) bool {
	return st == requested || st == accepted || st == scheduled || st == noShow || st == onHold
}

// returnConvertedSlot gives back to its program the place referral r,
// converted from a hold, took and ended without using: the program had
// counted it free when the hold took it. Not when the program reported its
// capacity since the conversion (a rejection AT_CAPACITY among such
// reports): the report counts its places as they stand, this referral's
// among them or not. Nor to a deleted program, nor to one never reported
// (undeleted: it takes no one until it reports).
func returnConvertedSlot(ctx context.Context, tx pgx.Tx, r ref, now time.Time) error {
	if _, err := tx.Exec(ctx, `UPDATE programs p SET available_slots = p.available_slots + 1, update_time = $3, version = p.version + 1
		FROM referrals f WHERE f.clinic = $1 AND f.id = $2 AND p.clinic = f.clinic AND p.id = f.program_id
			AND p.delete_time IS NULL AND p.capacity_update_time <= f.create_time`, r.clinic, r.id, now); err != nil {
		return fmt.Errorf("give back the converted hold's place: %w", err)
	}
	return nil
}

// noRoomAt records that the program of referral r has no free slot, as it
// said turning r away for want of room: its last report is older news,
// and holds and matches would go on sending it people it turns away, each
// costing a round of rejection and a new referral. Places already held
// stay held. Its next capacity report, or a hold given back, opens it
// again. A program already shown full, or deleted (whose capacity no
// report changes either), is left as it is.
func (s *Server) noRoomAt(ctx context.Context, tx pgx.Tx, r ref, now time.Time) error {
	var program string
	err := tx.QueryRow(ctx, `UPDATE programs p SET available_slots = 0, capacity_update_time = $3, update_time = $3, version = p.version + 1
		FROM referrals f WHERE f.clinic = $1 AND f.id = $2 AND p.clinic = f.clinic AND p.id = f.program_id AND p.available_slots > 0
			AND p.delete_time IS NULL
		RETURNING p.id`, r.clinic, r.id, now).Scan(&program)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("mark the program full: %w", err)
	}
	_, err = capacityChanged(ctx, tx, ref{r.clinic, program})
	return err
}

// MarkReferralEnteredInError implements the API.
func (s *Server) MarkReferralEnteredInError(ctx context.Context, req *referralsv1.TransitionReferralRequest) (*referralsv1.Referral, error) {
	if strings.TrimSpace(req.GetReason()) == "" {
		return nil, apperr.Field("reason", "is required: what was wrong (the family, the person, the program or the service)")
	}
	return s.transition(ctx, step{method: "MarkReferralEnteredInError", name: req.GetName(), etag: req.GetEtag(),
		requestID: req.GetRequestId(), reason: req.GetReason(), to: voided, req: req})
}

// ScheduleReferral implements the API. Scheduling again (a new appointment,
// or a rebooking after a no-show) replaces the appointment.
func (s *Server) ScheduleReferral(ctx context.Context, req *referralsv1.ScheduleReferralRequest) (*referralsv1.Referral, error) {
	if req.GetIntakeAppointment().GetStartTime() == nil {
		return nil, apperr.Field("intake_appointment.start_time", "is required")
	}
	appt, err := protojson.Marshal(req.GetIntakeAppointment())
	if err != nil {
		return nil, fmt.Errorf("encode appointment: %w", err)
	}
	return s.transition(ctx, step{method: "ScheduleReferral", name: req.GetName(), etag: req.GetEtag(),
		requestID: req.GetRequestId(), reason: req.GetReason(), to: scheduled, req: req,
		check: func(now time.Time) error {
			// A program may book late an appointment that already began, but
			// not one long past, nor one beyond any program's booking horizon.
			start := req.GetIntakeAppointment().GetStartTime().AsTime()
			if start.Before(now.Add(-intakeBookedLate)) || start.After(now.Add(intakeHorizon)) {
				return apperr.Field("intake_appointment.start_time", "must lie between %d days ago and %d days from now",
					intakeBookedLate/(24*time.Hour), intakeHorizon/(24*time.Hour))
			}
			return nil
		},
		apply: func(ctx context.Context, tx pgx.Tx, r ref, _ time.Time) error {
			// The booking it holds, sent again (an EHR's retry without a
			// request id), is no second booking: no history, no event for
			// the webhooks, no new calendar version. jsonb compares by
			// content, whatever the order of the keys. A reason other than
			// the last step's is a step to record all the same.
			tag, err := tx.Exec(ctx, `UPDATE referrals SET appointment = $3 WHERE clinic = $1 AND id = $2
				AND (state <> $4 OR appointment IS DISTINCT FROM $3::jsonb OR $5::text NOT IN ('',
					COALESCE((SELECT e.reason FROM referral_events e WHERE e.clinic = $1 AND e.referral_id = $2 ORDER BY e.seq DESC LIMIT 1), '')))`,
				r.clinic, r.id, appt, int16(scheduled), req.GetReason())
			if err == nil && tag.RowsAffected() == 0 {
				return errUnchanged
			}
			return err
		}})
}

// How far back an intake appointment may be booked (a walk-in recorded the
// next day) and how far ahead (a waiting list of months).
const (
	intakeBookedLate = 7 * 24 * time.Hour
	intakeHorizon    = 366 * 24 * time.Hour
)

// clockSkew is how far in the future a reported time may lie: clocks drift.
const clockSkew = 5 * time.Minute

// reportedTime refuses a reported time (a first contact, an entry into
// treatment, a service) in the future, or before 1990: days to treatment
// count from a first contact, and an entry into treatment before it could
// never be recorded.
func reportedTime(field string, t *timestamppb.Timestamp, now time.Time) error {
	if t != nil && t.AsTime().After(now.Add(clockSkew)) {
		return apperr.Field(field, "must not be in the future")
	}
	if t != nil && t.AsTime().Before(aip.EarliestReported) {
		// An unset or default time (the epoch) sent as one: kept, it would
		// skew days to treatment and the clinic's summaries for good.
		return apperr.Field(field, "must not be before 1990 (an unset time? leave it out)")
	}
	return nil
}

// firstContact is a new referral's first contact: the one given, or else
// the family's (fam, nil when not read), unless that lies ahead: days to
// treatment count from when the family first came, not from a referral
// made by hand weeks later.
func firstContact(given *timestamppb.Timestamp, fam *familiesv1.Family, now time.Time) *timestamppb.Timestamp {
	if fc := fam.GetFirstContactTime(); given == nil && fc != nil && !fc.AsTime().After(now.Add(clockSkew)) {
		return fc
	}
	return given
}

// CompleteReferral implements the API: the person entered treatment.
func (s *Server) CompleteReferral(ctx context.Context, req *referralsv1.CompleteReferralRequest) (*referralsv1.Referral, error) {
	var entered *time.Time
	if req.GetTreatmentEntryTime() != nil {
		if err := reportedTime("treatment_entry_time", req.GetTreatmentEntryTime(), s.cfg.Now()); err != nil {
			return nil, err
		}
		t := req.GetTreatmentEntryTime().AsTime()
		entered = &t
	}
	return s.transition(ctx, step{method: "CompleteReferral", name: req.GetName(), etag: req.GetEtag(),
		requestID: req.GetRequestId(), reason: req.GetReason(), to: completed, req: req,
		apply: func(ctx context.Context, tx pgx.Tx, r ref, now time.Time) error {
			// Days to treatment count from first contact (or the referral):
			// an entry before that would report a negative wait. Without a
			// time given, the entry is now, or the first contact if that
			// lies (by clock skew) a little ahead: a caller who sent no time
			// is not refused for one.
			tag, err := tx.Exec(ctx, `UPDATE referrals SET treatment_entry_time = COALESCE($3, GREATEST($4, COALESCE(first_contact_time, create_time)))
				WHERE clinic = $1 AND id = $2 AND COALESCE($3, 'infinity'::timestamptz) >= COALESCE(first_contact_time, create_time)`,
				r.clinic, r.id, entered, now)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				return apperr.Field("treatment_entry_time", "must not be before the first contact (or, without one, the referral's creation)")
			}
			return nil
		}})
}

// engagementDays is the last day after the day of treatment entry on
// which HEDIS IET counts a further service towards engagement.
const engagementDays = 34

// daysBetween is how many dates lie from a's to b's, both read in loc.
func daysBetween(a, b time.Time, loc *time.Location) int {
	ay, am, ad := a.In(loc).Date()
	by, bm, bd := b.In(loc).Date()
	// Midnights in UTC are whole days apart, whatever loc's DST did.
	return int(time.Date(by, bm, bd, 0, 0, 0, 0, time.UTC).Sub(time.Date(ay, am, ad, 0, 0, 0, 0, time.UTC)) / (24 * time.Hour))
}

// keepZone keeps, with the referral, the zone its follow-up days are
// read in: the first one a report names. Until one does they are read in
// UTC (and read again in the zone once one is named, see
// recountFollowUps), so that a report from staff, who send none, does
// not bind the program's later ones. A report naming another zone than
// the one kept is refused: its days would not be counted alike. It
// returns the zone kept now ("" for none) and whether this report named
// it first.
func keepZone(ctx context.Context, tx pgx.Tx, r ref, asked string) (zone string, first bool, err error) {
	var kept *string
	if err := tx.QueryRow(ctx, `SELECT follow_up_zone FROM referrals WHERE clinic = $1 AND id = $2`, r.clinic, r.id).Scan(&kept); err != nil {
		return "", false, fmt.Errorf("read the follow-up zone: %w", err)
	}
	switch {
	case kept != nil && asked != "" && asked != *kept:
		return "", false, apperr.Field("time_zone", "is not the zone the services of %s are counted in (%s)", referralName(r.clinic, r.id), *kept)
	case kept != nil:
		return *kept, false, nil
	}
	return asked, asked != "", nil
}

// followUpRefusal is FAILED_PRECONDITION (or, for code NotFound, a
// missing service) for a follow-up report that speaks of the referral's
// services, recorded or retracted. Its follow_up_service metadata tells
// tellsState that the refusal discloses something of the referral.
func followUpRefusal(code codes.Code, reason string, r ref, key, msg string) error {
	md := map[string]string{"resource": referralName(r.clinic, r.id), "follow_up_service": key}
	if code != codes.NotFound {
		return apperr.FailedPrecondition(reason, msg, md)
	}
	st, err := status.New(code, msg).WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: apperr.Domain, Metadata: md})
	if err != nil {
		return status.Error(code, msg)
	}
	return st.Err()
}

// RecordFollowUpService implements the API: a service after treatment
// entry, counted towards engagement. The state stays COMPLETED; a service
// is recorded once per service id (or time).
func (s *Server) RecordFollowUpService(ctx context.Context, req *referralsv1.RecordFollowUpServiceRequest) (*referralsv1.Referral, error) {
	if req.GetServiceTime() == nil {
		return nil, apperr.Field("service_time", "is required")
	}
	if tz := req.GetTimeZone(); tz != "" && !aip.TimeZone(tz) {
		return nil, apperr.Field("time_zone", "is not an IANA time zone such as America/Chicago")
	}
	// Checked up front, as CompleteReferral does: this refusal tells
	// nothing of the referral (one before its entry time does).
	at := req.GetServiceTime().AsTime()
	if err := reportedTime("service_time", req.GetServiceTime(), s.cfg.Now()); err != nil {
		return nil, err
	}
	key := serviceKey(req.GetServiceId(), at)
	var entered time.Time
	return s.transition(ctx, step{method: "RecordFollowUpService", name: req.GetName(), etag: req.GetEtag(),
		requestID: req.GetRequestId(), to: completed, stay: true, event: "follow_up_recorded", req: req,
		ready: func(cur *referralsv1.Referral, _ time.Time) error {
			switch cur.GetState() {
			case rejected, cancelled, voided:
				// Closed without an entry: no service will ever follow.
				from := strings.TrimPrefix(cur.GetState().String(), "REFERRAL_STATE_")
				return apperr.FailedPrecondition(apperr.ReasonInvalidTransition,
					fmt.Sprintf("%s is %s: it ended without a treatment entry, so no service follows it", cur.GetName(), from),
					map[string]string{"resource": cur.GetName(), "from": from})
			}
			if cur.GetState() != completed {
				return apperr.NotReady(cur.GetName(), apperr.Violations{{Field: "state",
					Description: "is " + strings.TrimPrefix(cur.GetState().String(), "REFERRAL_STATE_") +
						": further services follow a treatment entry (COMPLETED)"}})
			}
			if entered = cur.GetTreatmentEntryTime().AsTime(); at.Before(entered) {
				return apperr.Field("service_time", "must not be before the treatment entry (%s)", entered.UTC().Format(time.RFC3339))
			}
			return nil
		},
		apply: func(ctx context.Context, tx pgx.Tx, r ref, now time.Time) error {
			zone, zoned, err := keepZone(ctx, tx, r, req.GetTimeZone())
			if err != nil {
				return err
			}
			same, err := sameService(ctx, tx, r, req.GetServiceId(), at, now)
			if err != nil {
				return err
			}
			if same == "" {
				tag, err := tx.Exec(ctx, `INSERT INTO referral_services (clinic, referral_id, service_key, service_time, recorded_by, create_time)
					VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING`,
					r.clinic, r.id, key, at, auth.Actor(ctx), now)
				if err != nil {
					return fmt.Errorf("record follow-up service: %w", err)
				}
				if tag.RowsAffected() == 1 {
					return recountFollowUps(ctx, tx, r, entered, zone, now)
				}
				same = key
			}
			// Recorded before: the same report again changes nothing,
			// but an id the program gave another time is a mistake
			// to tell it of, not to swallow.
			var (
				was       time.Time
				retracted bool
			)
			if err := tx.QueryRow(ctx, `SELECT v.service_time, EXISTS (SELECT 1 FROM referral_service_retractions x
					WHERE x.clinic = v.clinic AND x.referral_id = v.referral_id AND x.service_key = v.service_key)
				FROM referral_services v WHERE v.clinic = $1 AND v.referral_id = $2 AND v.service_key = $3`,
				r.clinic, r.id, same).Scan(&was, &retracted); err != nil {
				return fmt.Errorf("read the service recorded before: %w", err)
			}
			if retracted {
				// Answered as unchanged, the report would read as
				// counted while it is not.
				return followUpRefusal(codes.FailedPrecondition, apperr.ReasonAlreadyRecorded, r, key,
					fmt.Sprintf("this service of %s was recorded and then retracted; it cannot be recorded again", referralName(r.clinic, r.id)))
			}
			if !was.Equal(at.Truncate(time.Microsecond)) {
				return followUpRefusal(codes.FailedPrecondition, apperr.ReasonAlreadyRecorded, r, key,
					fmt.Sprintf("service %q of %s was recorded at another time (%s)", req.GetServiceId(), referralName(r.clinic, r.id), was.UTC().Format(time.RFC3339)))
			}
			if zoned {
				// Recorded before, but the first report naming a zone:
				// every day is read again in it.
				return recountFollowUps(ctx, tx, r, entered, zone, now)
			}
			return errUnchanged
		}})
}

// sameService is the key of a recorded service that a report of one,
// with the program's id for it or without, names under another key, or ""
// when there is none. Reported with an id: the service that id was given
// to before (see below). Reported without one: a service recorded with an
// id at that very time, one that stands first. A report with an id that
// finds neither its own record nor one given to it, but a service recorded
// without an id at its time, to which no id was given yet, gives it this
// one: the same service, told again with its id, counts once, and a
// retraction by either finds it.
func sameService(ctx context.Context, tx pgx.Tx, r ref, id string, at, now time.Time) (string, error) {
	at = at.Truncate(time.Microsecond)
	if id == "" {
		var key string
		err := tx.QueryRow(ctx, `SELECT v.service_key FROM referral_services v
			WHERE v.clinic = $1 AND v.referral_id = $2 AND v.service_time = $3 AND v.service_key LIKE 'id:%'
				AND NOT EXISTS (SELECT 1 FROM referral_services t WHERE t.clinic = v.clinic AND t.referral_id = v.referral_id AND t.service_key = $4)
			ORDER BY EXISTS (SELECT 1 FROM referral_service_retractions x
				WHERE x.clinic = v.clinic AND x.referral_id = v.referral_id AND x.service_key = v.service_key), v.service_key
			LIMIT 1`, r.clinic, r.id, at, serviceKey("", at)).Scan(&key)
		if errors.Is(err, pgx.ErrNoRows) {
			return "", nil
		}
		if err != nil {
			return "", fmt.Errorf("find the service reported: %w", err)
		}
		return key, nil
	}
	var given *string
	var own bool
	if err := tx.QueryRow(ctx, `SELECT (SELECT service_key FROM referral_service_ids WHERE clinic = $1 AND referral_id = $2 AND service_id = $3),
			EXISTS (SELECT 1 FROM referral_services WHERE clinic = $1 AND referral_id = $2 AND service_key = $4)`,
		r.clinic, r.id, id, serviceKey(id, at)).Scan(&given, &own); err != nil {
		return "", fmt.Errorf("find the service reported: %w", err)
	}
	switch {
	case given != nil:
		return *given, nil
	case own:
		return "", nil // its own record, which the insert finds
	}
	tag, err := tx.Exec(ctx, `INSERT INTO referral_service_ids (clinic, referral_id, service_id, service_key, create_time)
		SELECT v.clinic, v.referral_id, $3, v.service_key, $5 FROM referral_services v
		WHERE v.clinic = $1 AND v.referral_id = $2 AND v.service_key = $4
		ON CONFLICT DO NOTHING`, r.clinic, r.id, id, serviceKey("", at), now)
	if err != nil {
		return "", fmt.Errorf("give the service its id: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return "", nil // a new service, or the one at its time has an id
	}
	return serviceKey("", at), nil
}

// retractedKey is the key of the service a retraction names: by its id,
// the record that id was given to, if any; by its time, the service
// recorded without an id then, or else the one recorded with an id then,
// refused as ambiguous when several of those stand.
func retractedKey(ctx context.Context, tx pgx.Tx, r ref, id string, at time.Time) (string, error) {
	key := serviceKey(id, at)
	if id != "" {
		var given string
		err := tx.QueryRow(ctx, `SELECT service_key FROM referral_service_ids WHERE clinic = $1 AND referral_id = $2 AND service_id = $3`,
			r.clinic, r.id, id).Scan(&given)
		if errors.Is(err, pgx.ErrNoRows) {
			return key, nil
		}
		if err != nil {
			return "", fmt.Errorf("find the service to retract: %w", err)
		}
		return given, nil
	}
	rows, err := tx.Query(ctx, `SELECT v.service_key, NOT EXISTS (SELECT 1 FROM referral_service_retractions x
			WHERE x.clinic = v.clinic AND x.referral_id = v.referral_id AND x.service_key = v.service_key)
		FROM referral_services v WHERE v.clinic = $1 AND v.referral_id = $2 AND v.service_time = $3
		ORDER BY v.service_key = $4 DESC, 2 DESC, v.service_key`, r.clinic, r.id, at.Truncate(time.Microsecond), key)
	if err != nil {
		return "", fmt.Errorf("find the service to retract: %w", err)
	}
	type found struct {
		Key      string
		Standing bool
	}
	all, err := pgx.CollectRows(rows, pgx.RowToStructByPos[found])
	if err != nil {
		return "", fmt.Errorf("find the service to retract: %w", err)
	}
	switch {
	case len(all) == 0 || all[0].Key == key:
		return key, nil
	case len(all) > 1 && all[1].Standing:
		return "", followUpRefusal(codes.FailedPrecondition, apperr.ReasonAmbiguous, r, key,
			fmt.Sprintf("several services of %s were recorded at %s with ids: retract each by its service_id", referralName(r.clinic, r.id), at.UTC().Format(time.RFC3339Nano)))
	}
	return all[0].Key, nil
}

// recountFollowUps computes a referral's follow-up count and engagement
// again from its services that stand, their days read in zone (UTC for
// ""), the one the referral keeps, and writes them with the zone and a
// new version in one statement. Recomputed, not kept, so that a service
// reported late with an earlier time makes the person engaged earlier,
// one retracted stops counting, and a zone named after the first reports
// reads theirs again.
func recountFollowUps(ctx context.Context, tx pgx.Tx, r ref, entered time.Time, zone string, now time.Time) error {
	loc := time.UTC
	if zone != "" {
		l, err := time.LoadLocation(zone)
		if err != nil {
			return fmt.Errorf("count follow-up services: zone %q: %w", zone, err)
		}
		loc = l
	}
	rows, err := tx.Query(ctx, `SELECT v.service_time FROM referral_services v
		WHERE v.clinic = $1 AND v.referral_id = $2 AND NOT EXISTS (SELECT 1 FROM referral_service_retractions x
			WHERE x.clinic = v.clinic AND x.referral_id = v.referral_id AND x.service_key = v.service_key)
		ORDER BY v.service_time`, r.clinic, r.id)
	if err != nil {
		return fmt.Errorf("count follow-up services: %w", err)
	}
	times, err := pgx.CollectRows(rows, pgx.RowTo[time.Time])
	if err != nil {
		return fmt.Errorf("count follow-up services: %w", err)
	}
	var engaged *time.Time
	counted := 0
	for _, t := range times {
		if d := daysBetween(entered, t, loc); d >= 1 && d <= engagementDays {
			if counted++; counted == 2 {
				engaged = &t
				break
			}
		}
	}
	if _, err := tx.Exec(ctx, `UPDATE referrals SET follow_up_services = $3, engagement_time = $4,
			follow_up_zone = COALESCE(follow_up_zone, NULLIF($5, '')), update_time = $6, version = version + 1
		WHERE clinic = $1 AND id = $2`, r.clinic, r.id, len(times), engaged, zone, now); err != nil {
		return fmt.Errorf("count follow-up services: %w", err)
	}
	return nil
}

// serviceKey is how a follow-up service is keyed: by the program's id for
// it, or by its time without one.
func serviceKey(id string, at time.Time) string {
	if id != "" {
		return "id:" + id
	}
	return "time:" + at.UTC().Truncate(time.Microsecond).Format(time.RFC3339Nano)
}

// RetractFollowUpService implements the API.
func (s *Server) RetractFollowUpService(ctx context.Context, req *referralsv1.RetractFollowUpServiceRequest) (*referralsv1.Referral, error) {
	var vs apperr.Violations
	if (req.GetServiceId() == "") == (req.GetServiceTime() == nil) {
		vs.Add("service_id", "give the service's id, or its time (service_time) if it was recorded without one, not both")
	}
	if strings.TrimSpace(req.GetReason()) == "" {
		vs.Add("reason", "is required: say why the service was recorded in error")
	}
	if err := vs.Err(); err != nil {
		return nil, err
	}
	key := serviceKey(req.GetServiceId(), req.GetServiceTime().AsTime())
	what := "follow-up service " + strings.TrimPrefix(strings.TrimPrefix(key, "id:"), "time:")
	var entered time.Time
	return s.transition(ctx, step{method: "RetractFollowUpService", name: req.GetName(), etag: req.GetEtag(),
		requestID: req.GetRequestId(), reason: req.GetReason(), to: completed, stay: true,
		event: "follow_up_retracted", req: req,
		// Any state: a referral without services has none to retract
		// (NOT_FOUND below).
		ready: func(cur *referralsv1.Referral, _ time.Time) error {
			entered = cur.GetTreatmentEntryTime().AsTime()
			return nil
		},
		apply: func(ctx context.Context, tx pgx.Tx, r ref, now time.Time) error {
			key, err := retractedKey(ctx, tx, r, req.GetServiceId(), req.GetServiceTime().AsTime())
			if err != nil {
				return err
			}
			tag, err := tx.Exec(ctx, `INSERT INTO referral_service_retractions (clinic, referral_id, service_key, reason, retracted_by, retract_time)
				SELECT clinic, referral_id, service_key, $4, $5, $6 FROM referral_services
				WHERE clinic = $1 AND referral_id = $2 AND service_key = $3
				ON CONFLICT DO NOTHING`, r.clinic, r.id, key, req.GetReason(), auth.Actor(ctx), now)
			if err != nil {
				return fmt.Errorf("retract follow-up service: %w", err)
			}
			if tag.RowsAffected() == 0 {
				var recorded bool
				if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM referral_services WHERE clinic = $1 AND referral_id = $2 AND service_key = $3)`,
					r.clinic, r.id, key).Scan(&recorded); err != nil {
					return fmt.Errorf("read the service to retract: %w", err)
				}
				if !recorded {
					return followUpRefusal(codes.NotFound, apperr.ReasonNotFound, r, key, what+" of "+referralName(r.clinic, r.id)+" not found")
				}
				// Retracted before: the same retraction again changes
				// nothing, as the same report again does.
				return errUnchanged
			}
			zone, _, err := keepZone(ctx, tx, r, "")
			if err != nil {
				return err
			}
			return recountFollowUps(ctx, tx, r, entered, zone, now)
		}})
}

// MarkReferralNoShow implements the API.
func (s *Server) MarkReferralNoShow(ctx context.Context, req *referralsv1.TransitionReferralRequest) (*referralsv1.Referral, error) {
	return s.transition(ctx, step{method: "MarkReferralNoShow", name: req.GetName(), etag: req.GetEtag(),
		requestID: req.GetRequestId(), reason: req.GetReason(), to: noShow, req: req,
		ready: func(cur *referralsv1.Referral, now time.Time) error {
			// A no-show counts against the person and starts the intake
			// workflow's re-engagement: not before the appointment began.
			start := cur.GetIntakeAppointment().GetStartTime()
			if start != nil && now.Before(start.AsTime()) {
				return apperr.FailedPrecondition(apperr.ReasonTooEarly,
					fmt.Sprintf("%s: the intake appointment starts at %s; record a no-show after it has begun",
						cur.GetName(), start.AsTime().UTC().Format(time.RFC3339)),
					map[string]string{"resource": cur.GetName()})
			}
			return nil
		},
		apply: func(ctx context.Context, tx pgx.Tx, r ref, _ time.Time) error {
			_, err := tx.Exec(ctx, `UPDATE referrals SET no_show_count = no_show_count + 1 WHERE clinic = $1 AND id = $2`, r.clinic, r.id)
			return err
		}})
}

// PauseReferral implements the API: the program paused a booked intake.
// The reason is required: the counselor has to know what to wait for.
func (s *Server) PauseReferral(ctx context.Context, req *referralsv1.TransitionReferralRequest) (*referralsv1.Referral, error) {
	if strings.TrimSpace(req.GetReason()) == "" {
		return nil, apperr.Field("reason", "say why the intake is on hold, for example what the program waits for")
	}
	return s.transition(ctx, step{method: "PauseReferral", name: req.GetName(), etag: req.GetEtag(),
		requestID: req.GetRequestId(), reason: req.GetReason(), to: onHold, req: req})
}

// CancelReferral implements the API.
//
// The program (through the EHR) says why: the counselor then offers the
// next program and must know what went wrong with this one. The clinic's
// own staff may cancel without one.
func (s *Server) CancelReferral(ctx context.Context, req *referralsv1.TransitionReferralRequest) (*referralsv1.Referral, error) {
	if _, outsider := consentgate.Outsider(ctx); outsider && strings.TrimSpace(req.GetReason()) == "" {
		return nil, apperr.Field("reason", "say why the program calls the referral off")
	}
	return s.transition(ctx, step{method: "CancelReferral", name: req.GetName(), etag: req.GetEtag(),
		requestID: req.GetRequestId(), reason: req.GetReason(), to: cancelled, req: req})
}
