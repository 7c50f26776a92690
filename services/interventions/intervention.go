package interventions

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/boundaries"
	"github.com/handoff-health/handoff/services/consentgate"
	"github.com/handoff-health/handoff/services/idempotency"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/workflows/ids"
)

type istate = interventionsv1.InterventionState

const (
	draft     = interventionsv1.InterventionState_INTERVENTION_STATE_DRAFT
	scheduled = interventionsv1.InterventionState_INTERVENTION_STATE_SCHEDULED
	completed = interventionsv1.InterventionState_INTERVENTION_STATE_COMPLETED
	cancelled = interventionsv1.InterventionState_INTERVENTION_STATE_CANCELLED
)

// sharedUpdateTime and sharedVersion are the update time and version of
// what outside systems see of a row (see sharedChanged).
const (
	sharedUpdateTime = `COALESCE(shared_update_time, update_time)`
	sharedVersion    = `COALESCE(shared_version, version)`
)

const interventionSelect = `SELECT id, family, counselor, level, start_time, duration_seconds, time_zone, doc, state,
	reschedule_count, reschedule_reason, create_time, update_time, version,
	` + sharedUpdateTime + `, ` + sharedVersion + `, published FROM interventions`

var docJSON = protojson.MarshalOptions{UseProtoNames: true}

// docDecode reads doc leniently: a field a newer release added (read here
// during a rolling update, or after a rollback) is passed over, not an
// error that makes the row unreadable.
var docDecode = protojson.UnmarshalOptions{DiscardUnknown: true}

// encodeDoc keeps the nested, client-visible parts of an intervention.
func encodeDoc(iv *interventionsv1.Intervention) ([]byte, error) {
	b, err := docJSON.Marshal(&interventionsv1.Intervention{
		Place: iv.GetPlace(), Participants: iv.GetParticipants(), Checklist: iv.GetChecklist(),
		Outcome: iv.GetOutcome(), CheckIns: iv.GetCheckIns(), PreviousIntervention: iv.GetPreviousIntervention(),
		CarriedOverNotes: iv.GetCarriedOverNotes(), CancelReason: iv.GetCancelReason(),
	})
	if err != nil {
		return nil, fmt.Errorf("encode intervention: %w", err)
	}
	return b, nil
}

// scanIntervention reads a row. shared gives the version and update time
// of what outside systems see (see sharedChanged) instead of the
// intervention's own.
func scanIntervention(clinic string, shared bool) pgx.RowToFunc[*interventionsv1.Intervention] {
	return func(r pgx.CollectableRow) (*interventionsv1.Intervention, error) {
		var (
			id, family, counselor, zone string
			rescheduleReason            string
			level, state                int16
			start                       *time.Time
			duration, reschedules       int32
			doc                         []byte
			created, updated            time.Time
			sharedUpdated               time.Time
			version, sharedVersion      int64
			published                   bool
		)
		if err := r.Scan(&id, &family, &counselor, &level, &start, &duration, &zone, &doc, &state,
			&reschedules, &rescheduleReason, &created, &updated, &version, &sharedUpdated, &sharedVersion, &published); err != nil {
			return nil, err
		}
		iv := &interventionsv1.Intervention{}
		if err := docDecode.Unmarshal(doc, iv); err != nil {
			return nil, fmt.Errorf("decode intervention %s: %w", id, err)
		}
		iv.Name = interventionName(clinic, id)
		iv.Family, iv.Counselor, iv.TimeZone = family, counselor, zone
		iv.Level = interventionsv1.EscalationLevel(level)
		if start != nil {
			iv.StartTime = timestamppb.New(*start)
		}
		iv.ExpectedDuration = durationpb.New(time.Duration(duration) * time.Second)
		iv.State = interventionsv1.InterventionState(state)
		iv.RescheduleCount, iv.RescheduleReason, iv.Published = reschedules, rescheduleReason, published
		iv.WorkflowId = ids.Intervention(iv.Name)
		iv.CreateTime, iv.UpdateTime, iv.Etag = timestamppb.New(created), timestamppb.New(updated), aip.Etag(version)
		if shared {
			iv.UpdateTime, iv.Etag = timestamppb.New(sharedUpdated), aip.Etag(sharedVersion)
		}
		return iv, nil
	}
}

func readIntervention(ctx context.Context, q pgdb.Querier, r ref, lock bool) (*interventionsv1.Intervention, error) {
	sql := interventionSelect + ` WHERE clinic = $1 AND id = $2`
	if lock {
		sql += ` FOR UPDATE`
	}
	rows, err := q.Query(ctx, sql, r.clinic, r.id)
	// An outside system only reads; what it reads carries the version of
	// its view.
	_, out := consentgate.Outsider(ctx)
	return pgdb.One(rows, err, interventionName(r.clinic, r.id), scanIntervention(r.clinic, out))
}

func newIntervention() *interventionsv1.Intervention { return &interventionsv1.Intervention{} }

// defaultChecklist is the preparation every intervention starts with.
func defaultChecklist() []*interventionsv1.ChecklistItem {
	kinds := []interventionsv1.ChecklistItemKind{
		interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_QUIET_PRIVATE_PLACE,
		interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_PARTICIPANTS_BRIEFED,
		interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_PERSONAL_STATEMENTS_WRITTEN,
		interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_TALKING_POINTS_REVIEWED,
		interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_TREATMENT_OPTION_HELD,
		interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_SAFETY_SCREEN_CURRENT,
	}
	out := make([]*interventionsv1.ChecklistItem, len(kinds))
	for i, k := range kinds {
		out[i] = &interventionsv1.ChecklistItem{Kind: k}
	}
	return out
}

// checkShape checks the fields of an intervention that need no other
// service: family name, time zone, participants' shape.
func checkShape(vs *apperr.Violations, clinic string, iv *interventionsv1.Intervention) {
	if ids, err := aip.Parse(iv.GetFamily(), "clinics", "families"); err != nil {
		vs.Add("intervention.family", "%v", err)
	} else if ids[0] != clinic {
		vs.Add("intervention.family", "must be a family of the same clinic")
	}
	if iv.GetCounselor() == "" {
		vs.Add("intervention.counselor", "is required")
	}
	// A meeting has a length: a zero one would make an empty time range,
	// which the double-booking constraint cannot see.
	if d := iv.GetExpectedDuration().AsDuration(); d < 15*time.Minute || d > 8*time.Hour {
		vs.Add("intervention.expected_duration", "must be between 15 minutes and 8 hours")
	}
	if z := iv.GetTimeZone(); z != "" {
		if !aip.TimeZone(z) {
			vs.Add("intervention.time_zone", "unknown IANA time zone %q", z)
		}
	}
	seen := map[string]bool{}
	for i, p := range iv.GetParticipants() {
		if seen[p.GetMemberId()] {
			vs.Add(fmt.Sprintf("intervention.participants[%d].member_id", i), "member %q is listed twice", p.GetMemberId())
		}
		seen[p.GetMemberId()] = true
	}
	if prev := iv.GetPreviousIntervention(); prev != "" {
		if ids, err := aip.Parse(prev, "clinics", "interventions"); err != nil || ids[0] != clinic {
			vs.Add("intervention.previous_intervention", "must be an intervention of the same clinic")
		}
	}
}

// checkAddress refuses an in-person place whose address is spaces: the
// family would be sent reminders of a meeting at no place.
func checkAddress(vs *apperr.Violations, p *interventionsv1.Place) {
	if in := p.GetInPerson(); in != nil && in.GetAddress() != "" && strings.TrimSpace(in.GetAddress()) == "" {
		vs.Add("intervention.place.in_person.address", "is blank: give where the family meets")
	}
}

// checkFamily reads the family through the families service and checks
// that the participants are its members and, for a level-3 intervention,
// that a current safety screen that is not high risk exists.
func (s *Server) checkFamily(ctx context.Context, iv *interventionsv1.Intervention, forSchedule bool, stored map[string]bool) error {
	vs, err := s.familyProblems(ctx, iv, forSchedule, stored)
	if err != nil {
		return err
	}
	return vs.Err()
}

// familyProblems is checkFamily with the intervention's fields that do not
// fit the family (participants who are not members) as violations, for
// the caller to answer as its request's fault or its stored record's.
// Participants in stored (member ids already on the record) may have left
// the family since: an edit that keeps them is not refused for them.
func (s *Server) familyProblems(ctx context.Context, iv *interventionsv1.Intervention, forSchedule bool, stored map[string]bool) (apperr.Violations, error) {
	fam, err := s.cfg.Families.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: iv.GetFamily()})
	if err != nil {
		if apperr.IsCode(err, codes.NotFound) {
			return apperr.Violations{{Field: "intervention.family", Description: "no such family"}}, nil
		}
		return nil, fmt.Errorf("read family: %w", err)
	}
	// A new meeting, or one made more formal, is planning with the family,
	// which the clinic no longer does once its case is closed: the
	// family is made ACTIVE again first.
	if (stored == nil || forSchedule) && fam.GetState() == familiesv1.FamilyState_FAMILY_STATE_CLOSED {
		return nil, familyClosed(fam.GetName())
	}
	members := map[string]bool{}
	for _, m := range fam.GetMembers() {
		members[m.GetId()] = true
	}
	var vs apperr.Violations
	for i, p := range iv.GetParticipants() {
		if !members[p.GetMemberId()] && !stored[p.GetMemberId()] {
			vs.Add(fmt.Sprintf("intervention.participants[%d].member_id", i), "%q is not a member of %s", p.GetMemberId(), iv.GetFamily())
		}
	}
	if len(vs) > 0 {
		return vs, nil
	}
	// forSchedule is set for a draft being scheduled and for an edit that
	// raises a scheduled meeting's level; other edits of a scheduled
	// meeting are not a new one: the counselor decides whether to cancel it.
	// A high-risk screen grown old is EXPIRED, which for a meeting of level
	// 1 or 2 counts as missing; but the risk it found was never cleared.
	highRisk := fam.GetSafetyScreenStatus() == familiesv1.SafetyScreenStatus_SAFETY_SCREEN_STATUS_HIGH_RISK ||
		fam.GetLatestSafetyScreen().GetResult() == familiesv1.SafetyRisk_SAFETY_RISK_HIGH_RISK
	if forSchedule && highRisk {
		// Bringing the family together against the loved one's use can
		// raise the danger at home: no meeting of any level until the
		// newest screen is no longer high risk (a new screen).
		return nil, apperr.FailedPrecondition(apperr.ReasonSafetyScreen,
			fmt.Sprintf("the newest safety screen of %s is high risk: no intervention can be scheduled until it is not", fam.GetName()),
			map[string]string{"family": fam.GetName(), "safety_screen_status": fam.GetSafetyScreenStatus().String()})
	}
	if forSchedule && iv.GetLevel() == interventionsv1.EscalationLevel_ESCALATION_LEVEL_LEVEL_3 &&
		fam.GetSafetyScreenStatus() != familiesv1.SafetyScreenStatus_SAFETY_SCREEN_STATUS_CURRENT {
		return nil, apperr.FailedPrecondition(apperr.ReasonSafetyScreen,
			fmt.Sprintf("a level-3 intervention needs a current safety screen that is not high risk (%s: %s)",
				fam.GetName(), fam.GetSafetyScreenStatus()),
			map[string]string{"family": fam.GetName(), "safety_screen_status": fam.GetSafetyScreenStatus().String()})
	}
	if forSchedule && iv.GetLevel() == interventionsv1.EscalationLevel_ESCALATION_LEVEL_LEVEL_3 {
		// ARISE's formal intervention puts stated consequences to the
		// loved one: one without any is a confrontation with nothing
		// behind it, which the workflow never proposes either.
		stated, err := s.statesConsequence(ctx, fam.GetName())
		if err != nil {
			return nil, err
		}
		if !stated {
			return nil, apperr.FailedPrecondition(apperr.ReasonNoConsequence,
				fmt.Sprintf("a level-3 intervention states consequences: %s has no active boundary that states one; agree one first", fam.GetName()),
				map[string]string{"family": fam.GetName()})
		}
	}
	return nil, nil
}

// statesConsequence reports whether family has an active (or reinforced)
// boundary that states a consequence.
func (s *Server) statesConsequence(ctx context.Context, family string) (bool, error) {
	for token := ""; ; {
		page, err := s.cfg.Families.ListBoundaries(ctx, &familiesv1.ListBoundariesRequest{Parent: family, PageSize: 200, PageToken: token})
		if err != nil {
			return false, fmt.Errorf("list boundaries: %w", err)
		}
		if slices.ContainsFunc(page.GetBoundaries(), boundaries.StatesConsequence) {
			return true, nil
		}
		if token = page.GetNextPageToken(); token == "" {
			return false, nil
		}
	}
}

// checkSchedulable checks what a SCHEDULED intervention must have.
func (s *Server) checkSchedulable(iv *interventionsv1.Intervention) apperr.Violations {
	return s.checkMeeting(iv, true)
}

// checkMeeting checks a scheduled intervention's place and participants
// and, with newTime, that its time is a schedulable one. An edit that
// keeps the time of a meeting already scheduled does not check it again:
// once the meeting has begun its time is past, and its participants or
// notes may still change until the outcome is in.
func (s *Server) checkMeeting(iv *interventionsv1.Intervention, newTime bool) apperr.Violations {
	now := s.cfg.Now()
	var vs apperr.Violations
	switch {
	case !newTime:
	case iv.GetStartTime() == nil:
		vs.Add("intervention.start_time", "is required to schedule")
	case !iv.GetStartTime().AsTime().After(now):
		vs.Add("intervention.start_time", "must be in the future")
	case iv.GetStartTime().AsTime().After(now.Add(s.cfg.Horizon)):
		vs.Add("intervention.start_time", "must be within %s from now", s.cfg.Horizon)
	}
	if iv.GetPlace().GetInPerson() == nil && iv.GetPlace().GetVideo() == nil {
		vs.Add("intervention.place", "is required to schedule: in person or video")
	}
	if len(iv.GetParticipants()) == 0 {
		vs.Add("intervention.participants", "at least one family member must take part")
	}
	return vs
}

// CreateIntervention implements the API. A new intervention is a DRAFT.
func (s *Server) CreateIntervention(ctx context.Context, req *interventionsv1.CreateInterventionRequest) (*interventionsv1.Intervention, error) {
	clinic, err := parentClinic(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	iv := proto.Clone(req.GetIntervention()).(*interventionsv1.Intervention)
	if iv.GetLevel() == interventionsv1.EscalationLevel_ESCALATION_LEVEL_UNSPECIFIED {
		iv.Level = interventionsv1.EscalationLevel_ESCALATION_LEVEL_LEVEL_1
	}
	if iv.GetTimeZone() == "" {
		iv.TimeZone = "UTC"
	}
	if iv.GetExpectedDuration() == nil {
		iv.ExpectedDuration = durationpb.New(90 * time.Minute)
	}
	var vs apperr.Violations
	checkShape(&vs, clinic, iv)
	checkAddress(&vs, iv.GetPlace())
	if err := vs.Err(); err != nil {
		return nil, err
	}
	if out, ok, err := idempotency.Stored(ctx, s.pool, clinic, svc+"CreateIntervention", req.GetRequestId(), req, newIntervention); ok || err != nil {
		return out, err
	}
	if err := s.checkFamily(ctx, iv, false, nil); err != nil {
		return nil, err
	}
	iv.Checklist = defaultChecklist()
	iv.Outcome, iv.CheckIns, iv.CancelReason, iv.RescheduleReason = nil, nil, "", ""
	return idempotency.InTx(ctx, s.pool, clinic, svc+"CreateIntervention", req.GetRequestId(), req, newIntervention,
		func(tx pgx.Tx) (*interventionsv1.Intervention, error) {
			if prev := iv.GetPreviousIntervention(); prev != "" {
				// The next draft is found by it, and its notes carried
				// over: another family's meeting must not be named.
				var family string
				err := tx.QueryRow(ctx, `SELECT family FROM interventions WHERE clinic = $1 AND id = $2`, clinic, aip.ID(prev)).Scan(&family)
				if errors.Is(err, pgx.ErrNoRows) || (err == nil && family != iv.GetFamily()) {
					return nil, apperr.Field("intervention.previous_intervention", "must be an earlier intervention of the same family")
				}
				if err != nil {
					return nil, fmt.Errorf("read previous intervention: %w", err)
				}
			}
			doc, err := encodeDoc(iv)
			if err != nil {
				return nil, err
			}
			r := ref{clinic, aip.NewID()}
			start, end := span(iv)
			now := s.cfg.Now()
			if _, err := tx.Exec(ctx, `INSERT INTO interventions (clinic, id, family, counselor, level, start_time, end_time,
				duration_seconds, time_zone, doc, state, create_time, update_time)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)`,
				r.clinic, r.id, iv.GetFamily(), iv.GetCounselor(), int16(iv.GetLevel()), start, end,
				int32(iv.GetExpectedDuration().AsDuration()/time.Second), iv.GetTimeZone(), doc, int16(draft), now); err != nil {
				return nil, fmt.Errorf("insert intervention: %w", err)
			}
			out, err := readIntervention(ctx, tx, r, false)
			if err != nil {
				return nil, err
			}
			return out, emit(ctx, tx, clinic, "intervention.created", out.GetName(), out)
		})
}

// GetIntervention implements the API.
func (s *Server) GetIntervention(ctx context.Context, req *interventionsv1.GetInterventionRequest) (*interventionsv1.Intervention, error) {
	r, err := authorized(ctx, "name", req.GetName(), "interventions")
	if err != nil {
		return nil, err
	}
	out, err := readIntervention(ctx, s.pool, r, false)
	if err != nil {
		return nil, consentgate.Unseen(ctx, req.GetName(), err)
	}
	if _, outsider := consentgate.Outsider(ctx); outsider && !out.GetPublished() {
		// A draft never scheduled is the program's own planning: to an
		// outside system it is as a meeting that does not exist.
		return nil, consentgate.Refusal(req.GetName())
	}
	// The EHR's read is a disclosure (FHIR Appointment): consent first.
	if err := s.consent.Check(ctx, consentgate.LovedOne(out.GetFamily()), out.GetName(), familiesv1.InformationKind_INFORMATION_KIND_APPOINTMENTS, ""); err != nil {
		return nil, err
	}
	return appointmentForCaller(ctx, out), nil
}

var interventionFilter = map[string]aip.FilterField{
	"family":     {Column: "family", Kind: aip.String},
	"counselor":  {Column: "counselor", Kind: aip.String},
	"state":      {Column: "state", Kind: aip.Enum, Enum: aip.EnumLookup(interventionsv1.InterventionState_value, "INTERVENTION_STATE_")},
	"level":      {Column: "level", Kind: aip.Enum, Enum: aip.EnumLookup(interventionsv1.EscalationLevel_value, "ESCALATION_LEVEL_")},
	"start_time": {Column: "start_time", Kind: aip.Time},
	// For FHIR _lastUpdated searches.
	"update_time": {Column: "update_time", Kind: aip.Time},
}

// ListInterventions implements the API.
func (s *Server) ListInterventions(ctx context.Context, req *interventionsv1.ListInterventionsRequest) (*interventionsv1.ListInterventionsResponse, error) {
	clinic, err := parentClinic(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	scope, args := `clinic = $1`, []any{clinic}
	// An outside system's list is narrowed in SQL to the families whose
	// consent covers it, so pages and tokens reflect nothing else.
	covered, out, err := s.consent.Covered(ctx, req.GetParent(), familiesv1.InformationKind_INFORMATION_KIND_APPOINTMENTS)
	if err != nil {
		return nil, err
	}
	if out {
		// A meeting is the loved one's record: the members' own consents
		// (covered.MemberIDs) cover their referrals, not it.
		// Nor a draft never scheduled (see Intervention.published).
		scope, args = `clinic = $1 AND family = ANY($2::text[]) AND published`, []any{clinic, covered.Families}
	}
	fields := interventionFilter
	if err := auth.RequirePinned(ctx, aip.PinnedBy(req.GetFilter(), fields), "interventions", "family"); err != nil {
		return nil, err
	}
	if out {
		// The appointment an outside system sees has no level
		// (consentgate.Appointment); filtering on it would tell it.
		fields = aip.Without(interventionFilter, "level")
		// And on the update time of what it sees: the intervention's own
		// moves with changes the appointment leaves out.
		ut := fields["update_time"]
		ut.Column = sharedUpdateTime
		fields["update_time"] = ut // aip.Without made fields a copy
	}
	items, next, err := pgdb.ListPage(ctx, s.pool, "interventions", interventionSelect, scope, args,
		req, fields, scanIntervention(clinic, out), func(iv *interventionsv1.Intervention) string { return iv.GetName() })
	if err != nil {
		return nil, err
	}
	items, next, err = consentgate.Record(ctx, s.consent, req.GetParent(), items, next, familiesv1.InformationKind_INFORMATION_KIND_APPOINTMENTS,
		func(iv *interventionsv1.Intervention) consentgate.Patient {
			return consentgate.LovedOne(iv.GetFamily())
		},
		(*interventionsv1.Intervention).GetName)
	if err != nil {
		return nil, err
	}
	for i, iv := range items {
		items[i] = appointmentForCaller(ctx, iv)
	}
	return &interventionsv1.ListInterventionsResponse{Interventions: items, NextPageToken: next}, nil
}

var interventionUpdatable = []string{"counselor", "level", "start_time", "expected_duration", "time_zone", "place",
	"participants", "carried_over_notes"}

// UpdateIntervention implements the API. A scheduled intervention's time
// moves only through RescheduleIntervention, so that its workflow hears of it.
func (s *Server) UpdateIntervention(ctx context.Context, req *interventionsv1.UpdateInterventionRequest) (*interventionsv1.Intervention, error) {
	r, err := authorized(ctx, "intervention.name", req.GetIntervention().GetName(), "interventions")
	if err != nil {
		return nil, err
	}
	if out, ok, err := idempotency.Stored(ctx, s.pool, r.clinic, svc+"UpdateIntervention", req.GetRequestId(), req, newIntervention); ok || err != nil {
		return out, err
	}
	cur, err := readIntervention(ctx, s.pool, r, false)
	if err != nil {
		return nil, err
	}
	if st := cur.GetState(); st != draft && st != scheduled {
		// Said before the edit is checked: a cancelled meeting's family
		// may be gone, and the answer would name a field the caller did
		// not touch. The state is checked again under the lock.
		return nil, apperr.InvalidTransition(cur.GetName(), stateName(st), "UPDATED")
	}
	next := proto.Clone(cur).(*interventionsv1.Intervention)
	if err := aip.ApplyMask(next, req.GetIntervention(), req.GetUpdateMask().GetPaths(), interventionUpdatable); err != nil {
		return nil, apperr.Field("update_mask", "%v", err)
	}
	var vs apperr.Violations
	// What a create fills in when left out cannot be cleared later.
	if next.GetLevel() == interventionsv1.EscalationLevel_ESCALATION_LEVEL_UNSPECIFIED {
		vs.Add("intervention.level", "cannot be cleared; give a level")
	}
	if next.GetTimeZone() == "" {
		vs.Add("intervention.time_zone", "cannot be cleared; give an IANA time zone")
	}
	if next.GetExpectedDuration() == nil {
		vs.Add("intervention.expected_duration", "cannot be cleared; give a duration")
	}
	checkShape(&vs, r.clinic, next)
	// A place whose kind the mask cleared (place.in_person) is no place, as
	// clearing place itself gives.
	if p := next.GetPlace(); p != nil && p.GetKind() == nil {
		next.Place = nil
	}
	if a, b := next.GetPlace().GetInPerson(), cur.GetPlace().GetInPerson(); a.GetAddress() != b.GetAddress() || a.GetRoom() != b.GetRoom() {
		forgetQuietPlace(next, req.GetUpdateMask().GetPaths())
	}
	forgetBriefing(cur, next)
	// The request's own rules saw the body, not the result: a mask such
	// as place.in_person.address with no place in the body clears a field
	// those rules require. Only a place the update changes is checked, so
	// that one stored before this check does not block unrelated edits.
	if !proto.Equal(next.GetPlace(), cur.GetPlace()) {
		if err := apperr.CheckRules(&vs, "intervention.place", next.GetPlace()); err != nil {
			return nil, err
		}
		checkAddress(&vs, next.GetPlace())
	}
	if err := vs.Err(); err != nil {
		return nil, err
	}
	// A scheduled meeting's safety gates apply again only when the edit
	// raises its level: other edits (participants, notes) stay possible
	// whatever the screen says now, until the counselor cancels it.
	// A member who left the family since they were named does not block
	// every other edit of the meeting; naming a new one who is not a
	// member is refused.
	stored := map[string]bool{}
	for _, p := range cur.GetParticipants() {
		stored[p.GetMemberId()] = true
	}
	fvs, err := s.familyProblems(ctx, next, cur.GetState() == scheduled && next.GetLevel() > cur.GetLevel(), stored)
	if err != nil {
		return nil, err
	}
	if slices.ContainsFunc(fvs, func(v apperr.Violation) bool { return v.Field == "intervention.family" }) {
		// The family is not the request's to change: its record was
		// deleted, a precondition of the stored meeting's, as a move
		// answers it (checkNotClosed), not a field the caller sent.
		return nil, apperr.NotReady(cur.GetName(), apperr.Violations{{Field: "family", Description: "no such family: its record was deleted"}})
	}
	if err := fvs.Err(); err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.pool, r.clinic, svc+"UpdateIntervention", req.GetRequestId(), req, newIntervention,
		func(tx pgx.Tx) (*interventionsv1.Intervention, error) {
			locked, err := readIntervention(ctx, tx, r, true)
			if err != nil {
				return nil, err
			}
			if err := aip.CheckEtag(locked.GetName(), req.GetIntervention().GetEtag(), locked.GetEtag()); err != nil {
				return nil, err
			}
			if locked.GetEtag() != cur.GetEtag() {
				return nil, apperr.EtagMismatch(locked.GetName()) // changed while we read the family
			}
			switch locked.GetState() {
			case draft:
			case scheduled:
				if !sameSchedule(locked, next) {
					return nil, apperr.FailedPrecondition(apperr.ReasonInvalidTransition,
						"the time of a scheduled intervention changes through :reschedule", map[string]string{"resource": locked.GetName()})
				}
				// The time is unchanged (checked above).
				if err := s.checkMeeting(next, false).Err(); err != nil {
					return nil, err
				}
				// Someone taken off the meeting (perhaps for their safety)
				// hears no more of it: their reminders go with the change,
				// not when the workflow replans after the outbox.
				if removed := removedMembers(locked, next); len(removed) > 0 {
					if err := s.cancelRemindersTo(ctx, tx, r.clinic, locked.GetName(), "no longer taking part", removed); err != nil {
						return nil, err
					}
				}
				// So does a counselor handing the meeting to another.
				if locked.GetCounselor() != next.GetCounselor() {
					if err := s.cancelCounselorReminders(ctx, tx, r.clinic, locked.GetName(), locked.GetCounselor()); err != nil {
						return nil, err
					}
				}
			default:
				return nil, apperr.InvalidTransition(locked.GetName(), stateName(locked.GetState()), "UPDATED")
			}
			return s.save(ctx, tx, r, locked, next, locked.GetState(), "intervention.updated")
		})
}

// forgetQuietPlace takes back what was confirmed of a place the meeting
// has moved from (another address or room): a mask of
// place.in_person.address or place.in_person.room alone would otherwise
// carry the confirmation that the old room was quiet and private, and the
// ticked checklist item, over to a room nobody has seen. The new place is
// confirmed only if the update mask named the confirmation (then
// ApplyMask copied the request's); a body's value outside the mask counts
// for nothing (AIP-134).
func forgetQuietPlace(next *interventionsv1.Intervention, mask []string) {
	named := slices.ContainsFunc(mask, func(p string) bool {
		return p == "*" || p == "place" || p == "place.in_person" || p == "place.in_person.quiet_and_private_confirmed"
	})
	if in := next.GetPlace().GetInPerson(); in != nil && !named {
		in.QuietAndPrivateConfirmed = false
	}
	for _, it := range next.GetChecklist() {
		if it.GetKind() == interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_QUIET_PRIVATE_PLACE && it.GetDone() {
			it.Done, it.DoneBy, it.DoneTime = false, "", nil
		}
	}
}

// forgetBriefing unticks the checklist items that a change of
// participants from cur to next makes untrue: that every participant was
// briefed, once someone joins; that each who speaks wrote a statement,
// once someone speaks who did not (joining, or no longer an observer).
func forgetBriefing(cur, next *interventionsv1.Intervention) {
	speaking := func(p *interventionsv1.Participant) bool {
		return p.GetRole() != interventionsv1.ParticipantRole_PARTICIPANT_ROLE_OBSERVER
	}
	before := map[string]bool{} // member -> speaking
	for _, p := range cur.GetParticipants() {
		before[p.GetMemberId()] = speaking(p)
	}
	joined, speaks := false, false
	for _, p := range next.GetParticipants() {
		was, ok := before[p.GetMemberId()]
		joined = joined || !ok
		speaks = speaks || speaking(p) && !was
	}
	for _, it := range next.GetChecklist() {
		k := it.GetKind()
		if it.GetDone() && (k == interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_PARTICIPANTS_BRIEFED && joined ||
			k == interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_PERSONAL_STATEMENTS_WRITTEN && speaks) {
			it.Done, it.DoneBy, it.DoneTime = false, "", nil
		}
	}
}

// removedMembers returns the member ids among before's participants that
// after no longer names.
func removedMembers(before, after *interventionsv1.Intervention) []string {
	kept := map[string]bool{}
	for _, p := range after.GetParticipants() {
		kept[p.GetMemberId()] = true
	}
	var removed []string
	for _, p := range before.GetParticipants() {
		if !kept[p.GetMemberId()] {
			removed = append(removed, p.GetMemberId())
		}
	}
	return removed
}

// save writes every column of iv in state, and emits event. before is the
// intervention as stored, read under the lock: the version outside systems
// see moves only if what they see changed.
func (s *Server) save(ctx context.Context, tx pgx.Tx, r ref, before, iv *interventionsv1.Intervention, st istate, event string) (*interventionsv1.Intervention, error) {
	doc, err := encodeDoc(iv)
	if err != nil {
		return nil, err
	}
	start, end := span(iv)
	shared := sharedChanged(before, iv, st)
	if event == "intervention.updated" && !shared {
		// An edit outside systems cannot see (level, place, notes) has an
		// event of its own: the EHR's webhooks announce appointment
		// changes, and a notification of one would tell it something
		// changed that its view leaves out.
		event = "intervention.details_updated"
	}
	_, err = tx.Exec(ctx, `UPDATE interventions SET counselor = $3, level = $4, start_time = $5, end_time = $6,
		duration_seconds = $7, time_zone = $8, doc = $9, state = $10, reschedule_count = $11, update_time = $12,
		reschedule_reason = $13, version = version + 1,
		shared_version = `+sharedVersion+` + CASE WHEN $14 THEN 1 ELSE 0 END,
		shared_update_time = CASE WHEN $14 THEN $12 ELSE `+sharedUpdateTime+` END,
		shared_checked = version + 1
		WHERE clinic = $1 AND id = $2`, r.clinic, r.id, iv.GetCounselor(), int16(iv.GetLevel()),
		start, end, int32(iv.GetExpectedDuration().AsDuration()/time.Second), iv.GetTimeZone(), doc, int16(st),
		iv.GetRescheduleCount(), s.cfg.Now(), iv.GetRescheduleReason(), shared)
	if pgdb.IsExclusionViolation(err) {
		return nil, apperr.FailedPrecondition(apperr.ReasonDoubleBooked,
			fmt.Sprintf("counselor %s already has a scheduled intervention at that time", iv.GetCounselor()),
			map[string]string{"counselor": iv.GetCounselor()})
	}
	if err != nil {
		return nil, fmt.Errorf("save intervention: %w", err)
	}
	// After the counselor's check, which answers first for a meeting
	// that is both the counselor's and the family's second.
	// Only when the meeting becomes scheduled or its time changes: an edit,
	// a checklist tick or a check-in leaves the family's afternoon as it
	// was, and meetings that overlapped before this check stay editable.
	if bs, be := span(before); st == scheduled && (before.GetState() != scheduled || !sameSpan(start, end, bs, be)) {
		if err := familyFree(ctx, tx, r, iv, start, end); err != nil {
			return nil, err
		}
	}
	out, err := readIntervention(ctx, tx, r, false)
	if err != nil {
		return nil, err
	}
	return out, emit(ctx, tx, r.clinic, event, out.GetName(), out)
}

// sameSpan reports whether two spans (span) are one, to the microsecond
// the times are stored at.
func sameSpan(s1, e1, s2, e2 *time.Time) bool {
	same := func(a, b *time.Time) bool {
		return a == nil && b == nil || a != nil && b != nil && a.Truncate(time.Microsecond).Equal(b.Truncate(time.Microsecond))
	}
	return same(s1, s2) && same(e1, e2)
}

// familyFree refuses a scheduled meeting that overlaps another scheduled
// meeting of the same family: two workflows would each hold a treatment
// place for the one loved one, and the family would get two sets of
// reminders for one afternoon. Unlike a counselor's, the family's times
// are checked here, not by a constraint (one added to a table that may
// already hold such meetings would fail the migration): a lock on the
// family's meetings, held to the commit, makes racing requests take turns.
func familyFree(ctx context.Context, tx pgx.Tx, r ref, iv *interventionsv1.Intervention, start, end *time.Time) error {
	if start == nil {
		return nil
	}
	// Two statements: a statement sees what was committed when it began,
	// so a check in the statement that waited on the lock would miss the
	// meeting the holder committed meanwhile.
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('handoff-family-meetings/' || $1 || '/' || $2))`,
		r.clinic, iv.GetFamily()); err != nil {
		return fmt.Errorf("lock the family's meetings: %w", err)
	}
	var other string
	err := tx.QueryRow(ctx, `SELECT id FROM interventions WHERE clinic = $1 AND family = $2 AND state = $3 AND id <> $4
		AND tstzrange(start_time, end_time) && tstzrange($5, $6) ORDER BY start_time, id LIMIT 1`,
		r.clinic, iv.GetFamily(), int16(scheduled), r.id, *start, *end).Scan(&other)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check the family's other meetings: %w", err)
	}
	name := aip.Name("clinics/"+r.clinic, "interventions", other)
	return apperr.FailedPrecondition(apperr.ReasonFamilyBooked,
		fmt.Sprintf("the family already has a scheduled intervention at that time (%s): move or cancel one", name),
		map[string]string{"family": iv.GetFamily(), "intervention": name})
}

// sharedChanged reports whether saving after in state st changes what an
// outside system sees of before (consentgate.Appointment), the version and
// time aside.
func sharedChanged(before, after *interventionsv1.Intervention, st istate) bool {
	view := func(iv *interventionsv1.Intervention, st istate) *interventionsv1.Intervention {
		c := proto.Clone(iv).(*interventionsv1.Intervention)
		c.State = st
		// At the precision they are stored: a request's nanoseconds are
		// not a change.
		if c.StartTime != nil {
			c.StartTime = timestamppb.New(c.StartTime.AsTime().Truncate(time.Microsecond))
		}
		if c.ExpectedDuration != nil {
			c.ExpectedDuration = durationpb.New(c.ExpectedDuration.AsDuration().Truncate(time.Second))
		}
		a := consentgate.Appointment(c)
		a.UpdateTime, a.Etag = nil, ""
		return a
	}
	return !proto.Equal(view(before, before.GetState()), view(after, st))
}

// span returns the meeting's start and end, or nils without a start time.
func span(iv *interventionsv1.Intervention) (start, end *time.Time) {
	if iv.GetStartTime() == nil {
		return nil, nil
	}
	s := iv.GetStartTime().AsTime()
	e := s.Add(iv.GetExpectedDuration().AsDuration())
	return &s, &e
}

func stateName(s istate) string { return strings.TrimPrefix(s.String(), "INTERVENTION_STATE_") }

// DeleteIntervention implements the API: only drafts can be deleted.
func (s *Server) DeleteIntervention(ctx context.Context, req *interventionsv1.DeleteInterventionRequest) (*emptypb.Empty, error) {
	r, err := authorized(ctx, "name", req.GetName(), "interventions")
	if err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.pool, r.clinic, svc+"DeleteIntervention", req.GetRequestId(), req,
		func() *emptypb.Empty { return &emptypb.Empty{} },
		func(tx pgx.Tx) (*emptypb.Empty, error) {
			cur, err := readIntervention(ctx, tx, r, true)
			if err != nil {
				return nil, err
			}
			if err := aip.CheckEtag(cur.GetName(), req.GetEtag(), cur.GetEtag()); err != nil {
				return nil, err
			}
			if cur.GetState() != draft {
				return nil, apperr.InvalidTransition(cur.GetName(), stateName(cur.GetState()), "DELETED")
			}
			// A draft the boundary workflow proposed has a reminder to the
			// counselor about it, which would name a meeting gone.
			if err := s.cancelRemindersOf(ctx, tx, r.clinic, cur.GetName(), "intervention deleted"); err != nil {
				return nil, err
			}
			// The stored answers of its create and updates hold copies of it
			// (participants, notes): a retry must not get them back.
			if err := idempotency.ForgetResource(ctx, tx, r.clinic, cur.GetName()); err != nil {
				return nil, err
			}
			if _, err := tx.Exec(ctx, `DELETE FROM interventions WHERE clinic = $1 AND id = $2`, r.clinic, r.id); err != nil {
				return nil, fmt.Errorf("delete intervention: %w", err)
			}
			// The event carries what its consumers read (the holds'
			// release, the webhooks' routing of a draft to no one), not the
			// draft: the outbox row outlives it by days, and longer while
			// its lane is held up.
			gone := &interventionsv1.Intervention{Name: cur.GetName(), Family: cur.GetFamily(), State: cur.GetState(), Published: cur.GetPublished()}
			return &emptypb.Empty{}, emit(ctx, tx, r.clinic, "intervention.deleted", cur.GetName(), gone)
		})
}

// lockedStep runs fn on the locked intervention after the etag check, in the
// request's idempotent transaction.
func (s *Server) lockedStep(ctx context.Context, r ref, method, requestID, etag string, req proto.Message,
	fn func(tx pgx.Tx, cur *interventionsv1.Intervention) (*interventionsv1.Intervention, error)) (*interventionsv1.Intervention, error) {
	return idempotency.InTx(ctx, s.pool, r.clinic, svc+method, requestID, req, newIntervention,
		func(tx pgx.Tx) (*interventionsv1.Intervention, error) {
			cur, err := readIntervention(ctx, tx, r, true)
			if err != nil {
				return nil, err
			}
			if err := aip.CheckEtag(cur.GetName(), etag, cur.GetEtag()); err != nil {
				return nil, err
			}
			return fn(tx, cur)
		})
}

// ScheduleIntervention implements the API. The outbox event it writes in the
// same transaction starts the intervention workflow.
func (s *Server) ScheduleIntervention(ctx context.Context, req *interventionsv1.ScheduleInterventionRequest) (*interventionsv1.Intervention, error) {
	r, err := authorized(ctx, "name", req.GetName(), "interventions")
	if err != nil {
		return nil, err
	}
	if out, ok, err := idempotency.Stored(ctx, s.pool, r.clinic, svc+"ScheduleIntervention", req.GetRequestId(), req, newIntervention); ok || err != nil {
		return out, err
	}
	cur, err := readIntervention(ctx, s.pool, r, false)
	if err != nil {
		return nil, err
	}
	// What the stored draft lacks is a precondition, named by the draft's
	// fields (fixed with UpdateIntervention): the request itself is fine.
	if cur.GetState() == draft {
		vs, err := s.familyProblems(ctx, cur, true, nil)
		if err != nil {
			return nil, err
		}
		if len(vs) > 0 {
			return nil, apperr.NotReady(cur.GetName(), vs)
		}
	}
	return s.lockedStep(ctx, r, "ScheduleIntervention", req.GetRequestId(), req.GetEtag(), req,
		func(tx pgx.Tx, locked *interventionsv1.Intervention) (*interventionsv1.Intervention, error) {
			if locked.GetState() != draft {
				return nil, apperr.InvalidTransition(locked.GetName(), stateName(locked.GetState()), "SCHEDULED")
			}
			if locked.GetEtag() != cur.GetEtag() {
				return nil, apperr.EtagMismatch(locked.GetName())
			}
			if vs := s.checkSchedulable(locked); len(vs) > 0 {
				return nil, apperr.NotReady(locked.GetName(), vs)
			}
			return s.save(ctx, tx, r, locked, locked, scheduled, "intervention.scheduled")
		})
}

// sameSchedule reports whether two interventions have the same start,
// duration and time zone at the precision they are stored (the start to
// the microsecond, the duration to the second): a client sending back the
// nanoseconds it first gave has not changed the time.
func sameSchedule(a, b *interventionsv1.Intervention) bool {
	return sameStart(a, b) &&
		a.GetExpectedDuration().AsDuration().Truncate(time.Second) == b.GetExpectedDuration().AsDuration().Truncate(time.Second)
}

// sameStart reports whether a and b start at the same instant in the same
// zone: at most their lengths differ.
func sameStart(a, b *interventionsv1.Intervention) bool {
	return sameInstant(a, b) && a.GetTimeZone() == b.GetTimeZone()
}

// sameInstant reports whether a and b start at the same instant, at the
// precision the start is stored, whatever their zones and lengths.
func sameInstant(a, b *interventionsv1.Intervention) bool {
	sa, sb := a.GetStartTime(), b.GetStartTime()
	return sa == nil && sb == nil ||
		sa != nil && sb != nil && sa.AsTime().Truncate(time.Microsecond).Equal(sb.AsTime().Truncate(time.Microsecond))
}

// rescheduled is cur as req would move it.
func rescheduled(cur *interventionsv1.Intervention, req *interventionsv1.RescheduleInterventionRequest) *interventionsv1.Intervention {
	next := proto.Clone(cur).(*interventionsv1.Intervention)
	next.StartTime = req.GetStartTime()
	if req.GetExpectedDuration() != nil {
		next.ExpectedDuration = req.GetExpectedDuration()
	}
	if req.GetTimeZone() != "" {
		next.TimeZone = req.GetTimeZone()
	}
	return next
}

// checkNotClosed refuses moving iv, a meeting with a family whose case is
// closed (FAILED_PRECONDITION, FAMILY_CLOSED) or whose record was deleted
// (FAILED_PRECONDITION, RESOURCE_NOT_READY): the FamilyDeleted workflow
// cancels its meetings, and one moved meanwhile would have its reminders
// placed again for a family no longer on record.
func (s *Server) checkNotClosed(ctx context.Context, iv *interventionsv1.Intervention) error {
	family := iv.GetFamily()
	fam, err := s.cfg.Families.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: family})
	if apperr.IsCode(err, codes.NotFound) {
		return apperr.NotReady(iv.GetName(), apperr.Violations{{Field: "family", Description: "no such family: its record was deleted"}})
	}
	if err != nil {
		return fmt.Errorf("read family: %w", err)
	}
	if fam.GetState() == familiesv1.FamilyState_FAMILY_STATE_CLOSED {
		return familyClosed(fam.GetName())
	}
	return nil
}

// familyGone reports whether family's record was deleted or its case
// closed.
func (s *Server) familyGone(ctx context.Context, family string) (deleted, closed bool, err error) {
	fam, err := s.cfg.Families.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: family})
	if apperr.IsCode(err, codes.NotFound) {
		return true, false, nil
	}
	if err != nil {
		return false, false, fmt.Errorf("read family: %w", err)
	}
	return false, fam.GetState() == familiesv1.FamilyState_FAMILY_STATE_CLOSED, nil
}

// familyClosed is the refusal of planning with a closed family.
func familyClosed(family string) error {
	return apperr.FailedPrecondition(apperr.ReasonFamilyClosed,
		fmt.Sprintf("%s is CLOSED: set it ACTIVE again to plan a meeting with it", family), map[string]string{"family": family})
}

// RescheduleIntervention implements the API.
func (s *Server) RescheduleIntervention(ctx context.Context, req *interventionsv1.RescheduleInterventionRequest) (*interventionsv1.Intervention, error) {
	r, err := authorized(ctx, "name", req.GetName(), "interventions")
	if err != nil {
		return nil, err
	}
	if req.GetStartTime() == nil {
		return nil, apperr.Field("start_time", "is required")
	}
	if req.GetTimeZone() != "" && !aip.TimeZone(req.GetTimeZone()) {
		return nil, apperr.Field("time_zone", "unknown IANA time zone %q", req.GetTimeZone())
	}
	if out, ok, err := idempotency.Stored(ctx, s.pool, r.clinic, svc+"RescheduleIntervention", req.GetRequestId(), req, newIntervention); ok || err != nil {
		return out, err
	}
	// A meeting moved to another time is a new one for the family, which
	// the clinic does not plan once its case is closed. The FamilyClosed
	// workflow leaves a meeting that has begun, for its outcome; moved
	// into the future it would stand after the workflow passed. A new
	// length alone is not refused: the meeting running long goes on.
	read, err := readIntervention(ctx, s.pool, r, false)
	if err != nil {
		return nil, err
	}
	// A new zone is checked too: the meeting's reminders are made again.
	checked := read.GetState() == scheduled && !sameStart(rescheduled(read, req), read)
	if checked {
		if err := s.checkNotClosed(ctx, read); err != nil {
			return nil, err
		}
	}
	return s.lockedStep(ctx, r, "RescheduleIntervention", req.GetRequestId(), req.GetEtag(), req,
		func(tx pgx.Tx, cur *interventionsv1.Intervention) (*interventionsv1.Intervention, error) {
			if cur.GetState() != scheduled {
				return nil, apperr.InvalidTransition(cur.GetName(), stateName(cur.GetState()), "RESCHEDULED")
			}
			next := rescheduled(cur, req)
			// A new zone alone does not move the meeting either: its
			// reminders, which name its time in its zone, are made again
			// (so a closed family's is refused, above, and a begun one's
			// below), but it was not moved (not counted, nor checked again
			// as a new time).
			moves := !sameInstant(next, cur)
			rezoned := !moves && next.GetTimeZone() != cur.GetTimeZone()
			// Decided on the read before the lock: a move the family's
			// state was not checked for is not made on it. The meeting
			// changed since that read, whatever etag the caller sent.
			if !checked && (moves || rezoned) {
				return nil, apperr.EtagMismatch(cur.GetName())
			}
			// Times are kept to the microsecond.
			if sameSchedule(next, cur) {
				// Moved to where it is: nothing changes, and no event goes
				// out (the workflow would cancel and send every reminder
				// again, and the count would say the meeting moved).
				return cur, nil
			}
			// A new length alone keeps the time, which is not checked
			// again: a meeting running long is lengthened after it began.
			if vs := s.checkMeeting(next, moves); len(vs) > 0 {
				for i := range vs {
					if vs[i].Field == "intervention.start_time" {
						vs[i].Field = "start_time" // the new time is this request's own field
					}
				}
				return nil, vs.Err()
			}
			// A new length alone does not move the meeting: its reminders
			// name the same time and stand (the workflow keeps them too),
			// and the count of moves stays.
			if rezoned {
				if !cur.GetStartTime().AsTime().After(s.cfg.Now()) {
					// Begun: the workflow would take the new zone as a new
					// meeting and chase its outcome afresh, the counselor
					// and their supervisor told again.
					return nil, apperr.Field("time_zone", "cannot change once the meeting has begun")
				}
				if err := s.cancelRemindersOf(ctx, tx, r.clinic, cur.GetName(), "its time zone changed"); err != nil {
					return nil, err
				}
			}
			if !moves {
				return s.save(ctx, tx, r, cur, next, scheduled, "intervention.rescheduled")
			}
			next.RescheduleCount++
			next.RescheduleReason = req.GetReason()
			// The reminders name the old time; the workflow makes new ones.
			if err := s.cancelRemindersOf(ctx, tx, r.clinic, cur.GetName(), "rescheduled"); err != nil {
				return nil, err
			}
			return s.save(ctx, tx, r, cur, next, scheduled, "intervention.rescheduled")
		})
}

// CancelIntervention implements the API.
func (s *Server) CancelIntervention(ctx context.Context, req *interventionsv1.CancelInterventionRequest) (*interventionsv1.Intervention, error) {
	r, err := authorized(ctx, "name", req.GetName(), "interventions")
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(req.GetReason()) == "" {
		// Kept as the meeting's cancel_reason, for staff: spaces say nothing.
		return nil, apperr.Field("reason", "is blank: say why the meeting is called off")
	}
	// The workflows call off a scheduled meeting only for a family deleted
	// or closed; otherwise, its participants invited, that is the
	// counselor's to decide. A leaked worker token, good for every clinic,
	// must not call off every meeting. The families service is asked
	// before the transaction, which then holds no lock over the call.
	worker, checked, deleted, closed := auth.WorkerOnly(ctx), false, false, false
	if worker {
		if out, ok, err := idempotency.Stored(ctx, s.pool, r.clinic, svc+"CancelIntervention", req.GetRequestId(), req, newIntervention); ok || err != nil {
			return out, err
		}
		read, err := readIntervention(ctx, s.pool, r, false)
		if err != nil {
			return nil, err
		}
		// A draft it withdraws without asking.
		if read.GetState() == scheduled {
			if deleted, closed, err = s.familyGone(ctx, read.GetFamily()); err != nil {
				return nil, err
			}
			checked = true
		}
	}
	return s.lockedStep(ctx, r, "CancelIntervention", req.GetRequestId(), req.GetEtag(), req,
		func(tx pgx.Tx, cur *interventionsv1.Intervention) (*interventionsv1.Intervention, error) {
			if cur.GetState() != draft && cur.GetState() != scheduled {
				return nil, apperr.InvalidTransition(cur.GetName(), stateName(cur.GetState()), "CANCELLED")
			}
			if worker && cur.GetState() == scheduled && !checked {
				// Scheduled since it was read: read again, by a retry.
				return nil, status.Error(codes.Aborted, "the meeting was scheduled as it was being cancelled: retry")
			}
			if worker && cur.GetState() == scheduled && !deleted && !closed {
				return nil, status.Error(codes.PermissionDenied, "the worker calls off a scheduled meeting only of a family deleted or closed")
			}
			if worker && cur.GetState() == scheduled && closed && !cur.GetStartTime().AsTime().After(s.cfg.Now()) {
				// A closed family's meeting that has begun stays, for its
				// outcome (the FamilyClosed workflow lists only those to
				// come; this one began since it listed them).
				return nil, apperr.FailedPrecondition(apperr.ReasonInvalidTransition,
					cur.GetName()+" has begun: it stays, for its outcome, though the family's case was closed",
					map[string]string{"resource": cur.GetName(), "from": "SCHEDULED", "to": "CANCELLED"})
			}
			next := proto.Clone(cur).(*interventionsv1.Intervention)
			next.CancelReason = req.GetReason()
			if err := s.cancelRemindersOf(ctx, tx, r.clinic, cur.GetName(), "intervention cancelled"); err != nil {
				return nil, err
			}
			return s.save(ctx, tx, r, cur, next, cancelled, "intervention.cancelled")
		})
}

// RecordOutcome implements the API: once, and not before the start time.
func (s *Server) RecordOutcome(ctx context.Context, req *interventionsv1.RecordOutcomeRequest) (*interventionsv1.Intervention, error) {
	r, err := authorized(ctx, "name", req.GetName(), "interventions")
	if err != nil {
		return nil, err
	}
	var vs apperr.Violations
	switch req.GetKind() {
	case interventionsv1.OutcomeKind_OUTCOME_KIND_UNSPECIFIED:
		vs.Add("kind", "is required")
	case interventionsv1.OutcomeKind_OUTCOME_KIND_PARTIALLY_ACCEPTED:
		if len(req.GetAcceptedServices()) == 0 {
			vs.Add("accepted_services", "name the services the loved one accepted")
		}
	case interventionsv1.OutcomeKind_OUTCOME_KIND_ACCEPTED:
		// ACCEPTED hands the loved one to MAT intake: a list without any
		// medication says they took something else, which is a partial
		// yes: to intake for care, the boundary way for the rest.
		if len(req.GetAcceptedServices()) > 0 && !slices.ContainsFunc(req.GetAcceptedServices(), matService) {
			vs.Add("accepted_services", "ACCEPTED hands over to MAT intake: name a MAT service here or leave it empty, or record PARTIALLY_ACCEPTED for these services alone")
		}
	default:
		if len(req.GetAcceptedServices()) > 0 {
			vs.Add("accepted_services", "must be empty unless the loved one accepted something")
		}
	}
	if err := vs.Err(); err != nil {
		return nil, err
	}
	return s.lockedStep(ctx, r, "RecordOutcome", req.GetRequestId(), req.GetEtag(), req,
		func(tx pgx.Tx, cur *interventionsv1.Intervention) (*interventionsv1.Intervention, error) {
			if cur.GetState() == completed {
				return nil, apperr.FailedPrecondition(apperr.ReasonAlreadyRecorded,
					cur.GetName()+" already has an outcome; it is recorded once", map[string]string{"resource": cur.GetName()})
			}
			if cur.GetState() != scheduled {
				return nil, apperr.InvalidTransition(cur.GetName(), stateName(cur.GetState()), "COMPLETED")
			}
			if s.cfg.Now().Before(cur.GetStartTime().AsTime()) {
				return nil, apperr.FailedPrecondition(apperr.ReasonTooEarly,
					fmt.Sprintf("%s starts at %s: record the outcome after it has begun", cur.GetName(), cur.GetStartTime().AsTime().Format(time.RFC3339)),
					map[string]string{"resource": cur.GetName()})
			}
			next := proto.Clone(cur).(*interventionsv1.Intervention)
			next.Outcome = &interventionsv1.Outcome{Kind: req.GetKind(), AcceptedServices: req.GetAcceptedServices(),
				Notes: req.GetNotes(), RecordedBy: auth.Actor(ctx), RecordTime: timestamppb.New(s.cfg.Now())}
			// As a cancel does: the meeting's own reminders (of it coming
			// up, of its outcome overdue) stop now, not when the workflow
			// hears of the outcome.
			if err := s.cancelMeetingReminders(ctx, tx, r.clinic, cur.GetName(), "outcome recorded"); err != nil {
				return nil, err
			}
			return s.save(ctx, tx, r, cur, next, completed, "intervention.outcome_recorded")
		})
}

// workflowHeldNote is the note of a TREATMENT_OPTION_HELD item whose
// place the workflows held.
const workflowHeldNote = "held by the workflow"

// checklistOpen refuses a checklist update of a meeting past preparing:
// only a draft or a scheduled one is prepared.
func checklistOpen(iv *interventionsv1.Intervention) error {
	if iv.GetState() != draft && iv.GetState() != scheduled {
		return apperr.InvalidTransition(iv.GetName(), stateName(iv.GetState()), "CHECKLIST_UPDATED")
	}
	return nil
}

// UpdateChecklistItem implements the API.
func (s *Server) UpdateChecklistItem(ctx context.Context, req *interventionsv1.UpdateChecklistItemRequest) (*interventionsv1.Intervention, error) {
	r, err := authorized(ctx, "name", req.GetName(), "interventions")
	if err != nil {
		return nil, err
	}
	if req.GetKind() == interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_UNSPECIFIED {
		return nil, apperr.Field("kind", "is required")
	}
	if req.GetKind() == interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_TREATMENT_OPTION_HELD && req.GetDone() && req.GetHold() == "" {
		// The item says a place is held: ticked without the hold, the
		// checklist would claim one that nobody can convert or release.
		return nil, apperr.Field("hold", "is required to mark TREATMENT_OPTION_HELD done: the hold that keeps the place, clinics/{clinic}/holds/{hold}")
	}
	if h := req.GetHold(); h != "" {
		if req.GetKind() != interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_TREATMENT_OPTION_HELD {
			return nil, apperr.Field("hold", "only the TREATMENT_OPTION_HELD item names a hold")
		}
		if ids, err := aip.Parse(h, "clinics", "holds"); err != nil || ids[0] != r.clinic {
			return nil, apperr.Field("hold", "must be a hold of the same clinic, clinics/{clinic}/holds/{hold}")
		}
	}
	worker := auth.WorkerOnly(ctx)
	if worker && (req.GetKind() != interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_TREATMENT_OPTION_HELD || !req.GetDone()) {
		// The workflows tick the place they held, and nothing else: a
		// safety screen or a quiet room is the counselor's to confirm.
		return nil, status.Error(codes.PermissionDenied, "the worker may only mark TREATMENT_OPTION_HELD done, with the hold it made")
	}
	var hold *referralsv1.Hold
	if req.GetHold() != "" && s.cfg.Holds != nil {
		// A retry gets its first answer even if the hold has moved on since.
		method := svc + "UpdateChecklistItem"
		if out, ok, err := idempotency.Stored(ctx, s.pool, r.clinic, method, req.GetRequestId(), req, newIntervention); ok || err != nil {
			return out, err
		}
		if hold, err = s.checklistHold(ctx, r, req, worker); err != nil {
			// The first call may have ended since Stored looked, moving
			// the etag, or the hold on.
			return idempotency.Refused(ctx, s.pool, r.clinic, method, req.GetRequestId(), req, newIntervention, err)
		}
	}
	return s.lockedStep(ctx, r, "UpdateChecklistItem", req.GetRequestId(), req.GetEtag(), req,
		func(tx pgx.Tx, cur *interventionsv1.Intervention) (*interventionsv1.Intervention, error) {
			if err := checklistOpen(cur); err != nil {
				return nil, err
			}
			if hold != nil {
				if hold.GetFamily() != cur.GetFamily() {
					return nil, apperr.Field("hold", "is a hold of another family")
				}
				// The workflows find the hold to convert, or to give back on
				// a refusal or cancellation, by the intervention it names.
				if hold.GetIntervention() != cur.GetName() {
					return nil, apperr.Field("hold", "does not keep a place for this intervention: make the hold with HoldSlot naming %s", cur.GetName())
				}
			}
			next := proto.Clone(cur).(*interventionsv1.Intervention)
			i := slices.IndexFunc(next.GetChecklist(), func(it *interventionsv1.ChecklistItem) bool { return it.GetKind() == req.GetKind() })
			if i < 0 {
				next.Checklist = append(next.Checklist, &interventionsv1.ChecklistItem{Kind: req.GetKind()})
				i = len(next.Checklist) - 1
			}
			item := next.Checklist[i]
			wasDone, wasHold := item.GetDone(), item.GetHold()
			item.Done, item.Hold = req.GetDone(), req.GetHold()
			switch {
			case !worker:
				item.Note = req.GetNote()
			case hold != nil && (item.GetNote() == "" || item.GetNote() == workflowHeldNote || wasHold != "" && wasHold != item.GetHold()):
				// The worker's tick writes no note of its own: what a
				// counselor wrote of the place stays while the place does,
				// and the item says the workflows held it only when they
				// did (not a counselor's place they adopted, after one of
				// theirs went back).
				item.Note = ""
				if hold.GetWorkflowHeld() {
					item.Note = workflowHeldNote
				}
			}
			switch {
			case !req.GetDone():
				item.DoneBy, item.DoneTime = "", nil
			case !wasDone:
				item.DoneBy, item.DoneTime = auth.Actor(ctx), timestamppb.New(s.cfg.Now())
			}
			// An item done before keeps who did it and when: a note edited
			// later, or the worker ticking the hold it made, did not
			// prepare it again.
			return s.save(ctx, tx, r, cur, next, cur.GetState(), "intervention.checklist_updated")
		})
}

// checklistHold checks, before UpdateChecklistItem's step, the hold req
// names, and returns it. The intervention is asked first, as the step
// asks it: a call about one that does not exist, or is past its
// checklist, is told so, not what is wrong with its hold.
func (s *Server) checklistHold(ctx context.Context, r ref, req *interventionsv1.UpdateChecklistItemRequest, worker bool) (*referralsv1.Hold, error) {
	cur, err := readIntervention(ctx, s.pool, r, false)
	if err != nil {
		return nil, err
	}
	if err := aip.CheckEtag(cur.GetName(), req.GetEtag(), cur.GetEtag()); err != nil {
		return nil, err
	}
	if err := checklistOpen(cur); err != nil {
		return nil, err
	}
	if worker {
		return s.liveHoldOf(ctx, req.GetHold(), cur.GetName())
	}
	return s.readHold(ctx, req.GetHold(), req.GetDone())
}

// liveHoldOf finds hold among the live holds kept for intervention iv: the
// worker may not read holds by name, but lists those of an intervention,
// as it does to find them again. One not found is not the intervention's,
// or no longer keeps its place.
func (s *Server) liveHoldOf(ctx context.Context, name, iv string) (*referralsv1.Hold, error) {
	clinic := aip.Clinic(iv)
	for token := ""; ; {
		page, err := s.cfg.Holds.ListHolds(ctx, &referralsv1.ListHoldsRequest{Parent: "clinics/" + clinic,
			Filter: fmt.Sprintf("intervention = %q AND state = HELD", iv), PageToken: token})
		if err != nil {
			return nil, fmt.Errorf("list holds: %w", err)
		}
		for _, h := range page.GetHolds() {
			if h.GetName() == name {
				return h, nil
			}
		}
		if token = page.GetNextPageToken(); token == "" {
			return nil, apperr.Field("hold", "is not a hold keeping a place for %s", iv)
		}
	}
}

// readHold reads the hold a checklist item is to name. One marked done
// must still keep its place.
func (s *Server) readHold(ctx context.Context, name string, done bool) (*referralsv1.Hold, error) {
	h, err := s.cfg.Holds.GetHold(ctx, &referralsv1.GetHoldRequest{Name: name})
	if apperr.IsCode(err, codes.NotFound) {
		return nil, apperr.Field("hold", "no such hold")
	}
	if err == nil && h == nil {
		err = errors.New("no hold in the answer")
	}
	if err != nil {
		return nil, fmt.Errorf("read hold: %w", err)
	}
	if done && h.GetState() != referralsv1.HoldState_HOLD_STATE_HELD {
		return nil, apperr.Field("hold", "is %s: a place held is marked done with a hold that still keeps it",
			strings.TrimPrefix(h.GetState().String(), "HOLD_STATE_"))
	}
	return h, nil
}

// followedUp reports whether an outcome sends the family down the boundary
// path, whose check-ins RecordCheckIn records: the same rule as the
// intervention workflow's (a refusal, a no-show, or a partial acceptance
// of neither MAT nor inpatient or outpatient care, which it refers and
// then follows up like a refusal). A partial yes to care goes to intake,
// as a yes to MAT does, and no follow-up runs to hear its check-ins.
func followedUp(o *interventionsv1.Outcome) bool {
	switch o.GetKind() {
	case interventionsv1.OutcomeKind_OUTCOME_KIND_DECLINED, interventionsv1.OutcomeKind_OUTCOME_KIND_DID_NOT_ATTEND:
		return true
	case interventionsv1.OutcomeKind_OUTCOME_KIND_PARTIALLY_ACCEPTED:
		return !slices.ContainsFunc(o.GetAcceptedServices(), treatmentService)
	}
	return false
}

// RecordCheckIn implements the API.
func (s *Server) RecordCheckIn(ctx context.Context, req *interventionsv1.RecordCheckInRequest) (*interventionsv1.CheckIn, error) {
	r, err := authorized(ctx, "name", req.GetName(), "interventions")
	if err != nil {
		return nil, err
	}
	iv, err := s.lockedStep(ctx, r, "RecordCheckIn", req.GetRequestId(), req.GetEtag(), req,
		func(tx pgx.Tx, cur *interventionsv1.Intervention) (*interventionsv1.Intervention, error) {
			if !followedUp(cur.GetOutcome()) {
				return nil, apperr.FailedPrecondition(apperr.ReasonInvalidTransition,
					"check-ins follow only an intervention whose loved one did not accept treatment: declined, did not attend, or accepted only services other than MAT and inpatient or outpatient care",
					map[string]string{"resource": cur.GetName()})
			}
			number, err := checkInNumber(ctx, tx, r, cur, req)
			if err != nil {
				return nil, err
			}
			for _, c := range cur.GetCheckIns() {
				if c.GetNumber() == number || (req.GetDueTime() != nil && proto.Equal(c.GetDueTime(), req.GetDueTime())) {
					return nil, apperr.FailedPrecondition(apperr.ReasonAlreadyRecorded,
						fmt.Sprintf("check-in %d of %s was already answered", c.GetNumber(), cur.GetName()), map[string]string{"resource": cur.GetName()})
				}
			}
			next := proto.Clone(cur).(*interventionsv1.Intervention)
			next.CheckIns = append(next.CheckIns, &interventionsv1.CheckIn{Number: number, DueTime: req.GetDueTime(),
				WindowOfOpportunity: req.GetWindowOfOpportunity(), NewWarningSigns: req.GetNewWarningSigns(), Notes: req.GetNotes(),
				RecordedBy: auth.Actor(ctx), RecordTime: timestamppb.New(s.cfg.Now())})
			return s.save(ctx, tx, r, cur, next, cur.GetState(), "intervention.check_in_recorded")
		})
	if err != nil {
		return nil, err
	}
	return iv.GetCheckIns()[len(iv.GetCheckIns())-1], nil
}

// checkInNumber is the number of the check-in req answers. By due time,
// it is one more than the intervention's CHECK_IN reminders due before it
// (one per check-in, but a failed one that was sent again: its resend, a
// reminder of the same message made after it failed and due after it,
// stands for it; a check-in whose last try failed too, its retries spent,
// still counts once), so that answering out of order numbers each
// check-in as its reminder did. The workflows number each check-in's
// message, which a resend copies.
// A check-in is one the reminders name: a due time no reminder has, or a
// number past the reminders made so far, would be stored under the
// number of a check-in still to come, and that one's real answer refused
// as already given. Without such reminders (an intervention followed up
// before they named it) the next number is the only one to come.
func checkInNumber(ctx context.Context, tx pgx.Tx, r ref, cur *interventionsv1.Intervention, req *interventionsv1.RecordCheckInRequest) (int32, error) {
	var before, all, at int32
	if err := tx.QueryRow(ctx, `SELECT count(*) FILTER (WHERE due_time < $5 AND stands), count(*) FILTER (WHERE stands),
			count(*) FILTER (WHERE due_time = $5)
		FROM (SELECT r.due_time, r.state <> $4 OR NOT EXISTS (SELECT 1 FROM reminders n
				WHERE n.clinic = r.clinic AND n.related_resource = r.related_resource AND n.kind = r.kind
				AND n.message = r.message AND n.due_time > r.due_time AND n.create_time >= r.update_time) AS stands
			FROM reminders r WHERE r.clinic = $1 AND r.related_resource = $2 AND r.kind = $3) c`,
		r.clinic, cur.GetName(), int16(interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN), int16(rFailed),
		req.GetDueTime().AsTime()).Scan(&before, &all, &at); err != nil {
		return 0, fmt.Errorf("number the check-in: %w", err)
	}
	if n := req.GetNumber(); n != 0 {
		last := all
		if all == 0 {
			last = int32(len(cur.GetCheckIns()) + 1)
		}
		if n > last {
			return 0, apperr.Field("number", "%s has no check-in %d yet: its reminders name %d", cur.GetName(), n, last)
		}
		return n, nil
	}
	if at == 0 {
		return 0, apperr.Field("due_time", "no check-in of %s is due at %s: give the due time of its CHECK_IN reminder, or its number",
			cur.GetName(), req.GetDueTime().AsTime().UTC().Format(time.RFC3339Nano))
	}
	return before + 1, nil
}

// appointmentForCaller cuts an intervention to what an outside system's
// consent to appointments covers (consentgate.Appointment).
func appointmentForCaller(ctx context.Context, iv *interventionsv1.Intervention) *interventionsv1.Intervention {
	if _, out := consentgate.Outsider(ctx); !out {
		return iv
	}
	return consentgate.Appointment(iv)
}

// treatmentService says whether k is treatment that a yes to hands the
// loved one to intake: a medication, or inpatient, outpatient or intensive
// outpatient care (the workflow's IsMAT and IsCare).
func treatmentService(k interventionsv1.ServiceKind) bool {
	switch k {
	case interventionsv1.ServiceKind_SERVICE_KIND_INPATIENT, interventionsv1.ServiceKind_SERVICE_KIND_OUTPATIENT,
		interventionsv1.ServiceKind_SERVICE_KIND_INTENSIVE_OUTPATIENT:
		return true
	}
	return matService(k)
}

// matService says whether k is a medication for opioid use disorder.
func matService(k interventionsv1.ServiceKind) bool {
	switch k {
	case interventionsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE, interventionsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE,
		interventionsv1.ServiceKind_SERVICE_KIND_MAT_NALTREXONE:
		return true
	}
	return false
}
