package interventions_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/consentgate"
)

// The EHR reads appointments only under the patient's consent, checked by
// the real families service and recorded in its accounting.
func TestEHRReadsNeedConsent(t *testing.T) {
	t.Parallel()
	f := setup(t)
	iv := f.draft(t, time.Now().Add(72*time.Hour))
	ehr := f.env.As("north", "ehr-1", auth.RoleEHR)

	// One that does not exist answers the same: the EHR cannot tell.
	_, err := f.client.GetIntervention(ehr, &interventionsv1.GetInterventionRequest{Name: "clinics/north/interventions/no-such-one"})
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != consentgate.ReasonConsentRequired {
		t.Fatalf("a missing intervention, to the EHR: reason %q", reason(st))
	}
	_, err = f.client.GetIntervention(ehr, &interventionsv1.GetInterventionRequest{Name: iv.GetName()})
	st := wantCode(t, err, codes.FailedPrecondition)
	if reason(st) != consentgate.ReasonConsentRequired {
		t.Fatalf("refusal reason %q", reason(st))
	}
	list, err := f.client.ListInterventions(ehr, &interventionsv1.ListInterventionsRequest{Parent: "clinics/north"})
	if err != nil || len(list.GetInterventions()) != 0 {
		t.Fatalf("EHR list without consent = %v, %v", list, err)
	}

	now := time.Now()
	co, err := f.families.CreateConsent(f.ctx, &familiesv1.CreateConsentRequest{Parent: f.family.GetName(), Consent: &familiesv1.Consent{
		Discloser:   "North Recovery Clinic",
		Information: []familiesv1.InformationKind{familiesv1.InformationKind_INFORMATION_KIND_APPOINTMENTS},
		Recipients:  []string{"ehr-1"}, Purposes: []familiesv1.Purpose{familiesv1.Purpose_PURPOSE_TREATMENT},
		ExpireTime: timestamppb.New(now.Add(24 * time.Hour)), Signer: "Sam", SignTime: timestamppb.New(now.Add(-time.Hour)),
		RevocationRightStated: true,
	}})
	if err != nil {
		t.Fatalf("CreateConsent: %v", err)
	}
	// A draft never scheduled is the program's own planning: under consent
	// too, the EHR neither reads nor lists it, and nothing is recorded.
	_, err = f.client.GetIntervention(ehr, &interventionsv1.GetInterventionRequest{Name: iv.GetName()})
	if !consentgate.Refused(err) {
		t.Fatalf("the EHR's read of a draft: %v; want the consent refusal", err)
	}
	if l, err := f.client.ListInterventions(ehr, &interventionsv1.ListInterventionsRequest{Parent: "clinics/north"}); err != nil || len(l.GetInterventions()) != 0 {
		t.Fatalf("the EHR's list with only a draft = %v, %v; want none", l, err)
	}
	if _, err := f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: iv.GetName()}); err != nil {
		t.Fatal(err)
	}
	seen, err := f.client.GetIntervention(ehr, &interventionsv1.GetInterventionRequest{Name: iv.GetName()})
	if err != nil {
		t.Fatalf("EHR read under consent: %v", err)
	}
	// An appointment, not the plan: no place, checklist or notes.
	if seen.GetStartTime() == nil || seen.GetPlace() != nil || len(seen.GetChecklist()) != 0 || seen.GetCarriedOverNotes() != "" {
		t.Fatalf("the EHR sees more than the appointment: %v", seen)
	}
	if full, err := f.client.GetIntervention(f.ctx, &interventionsv1.GetInterventionRequest{Name: iv.GetName()}); err != nil || full.GetPlace() == nil || len(full.GetChecklist()) == 0 {
		t.Fatalf("staff view lost the plan: %v, %v", full, err)
	}
	var md metadata.MD
	list, err = f.client.ListInterventions(ehr, &interventionsv1.ListInterventionsRequest{Parent: "clinics/north"}, grpc.Header(&md))
	if err != nil || len(list.GetInterventions()) != 1 {
		t.Fatalf("EHR list under consent = %v, %v", list, err)
	}
	if n := md.Get(consentgate.NoticeHeader); len(n) != 1 || n[0] != consentgate.Notice {
		t.Fatalf("a disclosed list carries no Part 2 notice: %v", md)
	}
	// The level is not in the appointment, so it cannot be filtered on.
	_, err = f.client.ListInterventions(ehr, &interventionsv1.ListInterventionsRequest{Parent: "clinics/north", Filter: "level = LEVEL_3"})
	wantCode(t, err, codes.InvalidArgument)
	if staff, err := f.client.ListInterventions(f.ctx, &interventionsv1.ListInterventionsRequest{Parent: "clinics/north",
		Filter: "level = " + strings.TrimPrefix(iv.GetLevel().String(), "ESCALATION_LEVEL_")}); err != nil || len(staff.GetInterventions()) != 1 {
		t.Fatalf("staff filter on the level: %v, %v", staff, err)
	}
	ds, err := f.families.ListDisclosures(f.ctx, &familiesv1.ListDisclosuresRequest{Parent: f.family.GetName()})
	if err != nil || len(ds.GetDisclosures()) != 2 || ds.GetDisclosures()[0].GetResource() != iv.GetName() ||
		ds.GetDisclosures()[0].GetConsent() != co.GetName() {
		t.Fatalf("accounting = %v, %v; want the read and the listed intervention", ds, err)
	}
	// Revocation stops the next read at once.
	if _, err := f.families.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: co.GetName()}); err != nil {
		t.Fatal(err)
	}
	_, err = f.client.GetIntervention(ehr, &interventionsv1.GetInterventionRequest{Name: iv.GetName()})
	wantCode(t, err, codes.FailedPrecondition)
}

// What the EHR sees of an intervention has its own version and update
// time: a change it cannot see (a checklist tick, a check-in, which
// follows only a meeting that ended without a yes) leaves both as they
// were, and a change it can see moves the version by one.
func TestEHRViewVersionCountsOnlyWhatItSees(t *testing.T) {
	t.Parallel()
	f := setup(t)
	iv := f.draft(t, f.clock.Now().Add(48*time.Hour))
	ehr := f.env.As("north", "ehr-1", auth.RoleEHR)
	now := time.Now()
	if _, err := f.families.CreateConsent(f.ctx, &familiesv1.CreateConsentRequest{Parent: f.family.GetName(), Consent: &familiesv1.Consent{
		Discloser:   "North Recovery Clinic",
		Information: []familiesv1.InformationKind{familiesv1.InformationKind_INFORMATION_KIND_APPOINTMENTS},
		Recipients:  []string{"ehr-1"}, Purposes: []familiesv1.Purpose{familiesv1.Purpose_PURPOSE_TREATMENT},
		ExpireTime: timestamppb.New(now.Add(240 * time.Hour)), Signer: "Sam", SignTime: timestamppb.New(now.Add(-time.Hour)),
		RevocationRightStated: true,
	}}); err != nil {
		t.Fatal(err)
	}
	read := func() *interventionsv1.Intervention {
		t.Helper()
		seen, err := f.client.GetIntervention(ehr, &interventionsv1.GetInterventionRequest{Name: iv.GetName()})
		if err != nil {
			t.Fatal(err)
		}
		return seen
	}
	// Nothing changed since the EHR's read, by the view's own clock.
	unchangedSince := func(seen *interventionsv1.Intervention) {
		t.Helper()
		if again := read(); !proto.Equal(again, seen) {
			t.Fatalf("a change the EHR cannot see changed its view:\nbefore %v\nafter  %v", seen, again)
		}
		list, err := f.client.ListInterventions(ehr, &interventionsv1.ListInterventionsRequest{Parent: "clinics/north",
			Filter: fmt.Sprintf("update_time > %q", seen.GetUpdateTime().AsTime().Format(time.RFC3339Nano))})
		if err != nil || len(list.GetInterventions()) != 0 {
			t.Fatalf("updated since the EHR's read, by its filter: %v, %v", list.GetInterventions(), err)
		}
	}
	_, err := f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: iv.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	scheduled := read()
	if _, err := f.client.UpdateChecklistItem(f.ctx, &interventionsv1.UpdateChecklistItemRequest{Name: iv.GetName(),
		Kind: interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_QUIET_PRIVATE_PLACE, Done: true}); err != nil {
		t.Fatal(err)
	}
	unchangedSince(scheduled)
	// An edit of the place, sending back the start time with nanoseconds
	// it is not stored to, changes nothing the EHR sees either.
	if _, err := f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{Intervention: &interventionsv1.Intervention{
		Name: iv.GetName(), StartTime: timestamppb.New(scheduled.GetStartTime().AsTime().Add(500)),
		Place: &interventionsv1.Place{Kind: &interventionsv1.Place_Video{Video: &interventionsv1.VideoPlace{Link: "https://video.example/room"}}}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"start_time", "place"}}}); err != nil {
		t.Fatal(err)
	}
	unchangedSince(scheduled)
	// A reschedule is a change the EHR sees: one step.
	if _, err := f.client.RescheduleIntervention(f.ctx, &interventionsv1.RescheduleInterventionRequest{Name: iv.GetName(),
		StartTime: timestamppb.New(f.clock.Now().Add(50 * time.Hour))}); err != nil {
		t.Fatal(err)
	}
	moved := read()
	was, _ := aip.ParseEtag(scheduled.GetEtag())
	now2, _ := aip.ParseEtag(moved.GetEtag())
	if now2 != was+1 || !moved.GetUpdateTime().AsTime().After(scheduled.GetUpdateTime().AsTime()) {
		t.Fatalf("after a reschedule the EHR's view went from %s to %s, update time %v to %v; want one step and a later time",
			scheduled.GetEtag(), moved.GetEtag(), scheduled.GetUpdateTime().AsTime(), moved.GetUpdateTime().AsTime())
	}
	f.clock.Advance(51 * time.Hour)
	if _, err := f.client.RecordOutcome(f.ctx, &interventionsv1.RecordOutcomeRequest{Name: iv.GetName(),
		Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_DECLINED}); err != nil {
		t.Fatal(err)
	}
	held := read()
	if held.GetState() != interventionsv1.InterventionState_INTERVENTION_STATE_COMPLETED || held.GetOutcome() != nil {
		t.Fatalf("the EHR's view of a declined meeting: %v", held)
	}
	// The check-in that follows a refusal must not show.
	if _, err := f.client.RecordCheckIn(f.ctx, &interventionsv1.RecordCheckInRequest{Name: iv.GetName(),
		CheckIn: &interventionsv1.RecordCheckInRequest_Number{Number: 1}}); err != nil {
		t.Fatal(err)
	}
	unchangedSince(held)
	// Staff see the intervention's own version move with each change.
	if full, err := f.client.GetIntervention(f.ctx, &interventionsv1.GetInterventionRequest{Name: iv.GetName()}); err != nil || full.GetEtag() == held.GetEtag() {
		t.Fatalf("the staff view: %v, %v", full.GetEtag(), err)
	}
	// A write by a replica a release behind, which knows nothing of the
	// view's version, counts as one the EHR can see.
	if _, err := f.pool.Exec(context.Background(), `UPDATE interventions SET version = version + 1, update_time = now()`); err != nil {
		t.Fatal(err)
	}
	if older := read(); older.GetEtag() == held.GetEtag() {
		t.Fatalf("an older replica's write left the EHR's etag at %s", older.GetEtag())
	}
}
