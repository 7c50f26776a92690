package interventions_test

import (
	"bytes"
	"context"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/families"
	"github.com/handoff-health/handoff/services/grpcserver"
	"github.com/handoff-health/handoff/services/interventions"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
	"github.com/handoff-health/handoff/services/servicetest"
)

type clock struct{ offset atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

type fixture struct {
	env      *servicetest.Env
	pool     *pgxpool.Pool
	clock    *clock
	client   interventionsv1.InterventionsServiceClient
	families familiesv1.FamiliesServiceClient
	ctx      context.Context // counselor of clinic "north"
	worker   context.Context
	family   *familiesv1.Family
}

func setup(t testing.TB) *fixture {
	t.Helper()
	return setupWith(t, nil)
}

// setupWith is setup with the service's view of the families service
// passed through wrap.
func setupWith(t testing.TB, wrap func(familiesv1.FamiliesServiceClient) familiesv1.FamiliesServiceClient) *fixture {
	t.Helper()
	return setupHolds(t, wrap, nil)
}

// setupHolds is setupWith with holds as the service's referrals client.
func setupHolds(t testing.TB, wrap func(familiesv1.FamiliesServiceClient) familiesv1.FamiliesServiceClient,
	holds referralsv1.ReferralsServiceClient) *fixture {
	t.Helper()
	_, famSchema := pgtest.Schema(t, families.Migrations()...)
	pool, schema := pgtest.Schema(t, interventions.Migrations()...)
	c := &clock{}
	env := servicetest.Start(t, families.Policy(), func(s *grpc.Server) {
		familiesv1.RegisterFamiliesServiceServer(s, families.New(pgtest.App(t, famSchema), families.Config{}))
	})
	famClient := familiesv1.NewFamiliesServiceClient(env.Conn)
	seen := famClient
	if wrap != nil {
		seen = wrap(famClient)
	}
	ivSrv := interventions.New(pgtest.App(t, schema), interventions.Config{Families: seen, Holds: holds, Now: c.Now})
	conn := env.AlsoWith(t, grpcserver.Config{Policy: interventions.Policy(), Credentials: ivSrv.Credentials(), Audit: ivSrv.Auditor()}, func(s *grpc.Server) {
		interventionsv1.RegisterInterventionsServiceServer(s, ivSrv)
	})
	f := &fixture{env: env, pool: pool, clock: c, client: interventionsv1.NewInterventionsServiceClient(conn), families: famClient,
		ctx: env.Counselor("north"), worker: env.As(auth.AnyClinic, "worker", auth.RoleWorker)}
	fam, err := famClient.CreateFamily(f.ctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: &familiesv1.Family{
		LovedOne:  &familiesv1.LovedOne{GivenName: "Sam", MayContactDirectly: false},
		Counselor: "counselor-1",
		Members: []*familiesv1.Member{
			{Id: "mom", GivenName: "Ana", Relationship: familiesv1.Relationship_RELATIONSHIP_PARENT, ConsentToContact: true,
				ContactChannels: []*familiesv1.ContactChannel{{Kind: familiesv1.ChannelKind_CHANNEL_KIND_SMS, Value: "+15555550100"}}},
			{Id: "bro", GivenName: "Luis", Relationship: familiesv1.Relationship_RELATIONSHIP_SIBLING},
		}}})
	if err != nil {
		t.Fatalf("CreateFamily: %v", err)
	}
	f.family = fam
	return f
}

// scheduled is a draft for start, scheduled.
func (f *fixture) scheduled(t testing.TB, start time.Time) *interventionsv1.Intervention {
	t.Helper()
	iv, err := f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: f.draft(t, start).GetName()})
	if err != nil {
		t.Fatal(err)
	}
	return iv
}

func (f *fixture) draft(t testing.TB, start time.Time) *interventionsv1.Intervention {
	t.Helper()
	iv, err := f.client.CreateIntervention(f.ctx, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north",
		Intervention: &interventionsv1.Intervention{Family: f.family.GetName(), Counselor: "counselor-1",
			StartTime: timestamppb.New(start), ExpectedDuration: durationpb.New(time.Hour), TimeZone: "America/Chicago",
			Place: &interventionsv1.Place{Kind: &interventionsv1.Place_InPerson{InPerson: &interventionsv1.InPersonPlace{
				Address: "12 Elm St", QuietAndPrivateConfirmed: true}}},
			Participants: []*interventionsv1.Participant{{MemberId: "mom", Role: interventionsv1.ParticipantRole_PARTICIPANT_ROLE_LEAD_SPEAKER}}}})
	if err != nil {
		t.Fatalf("CreateIntervention: %v", err)
	}
	return iv
}

func wantCode(t *testing.T, err error, want codes.Code) *status.Status {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != want {
		t.Fatalf("got %v (%v), want %v", st.Code(), err, want)
	}
	return st
}

// fieldOf is the first field violation's field, or "".
func fieldOf(st *status.Status) string {
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 {
			return br.GetFieldViolations()[0].GetField()
		}
	}
	return ""
}

func reason(st *status.Status) string {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}

func TestInterventionLifecycle(t *testing.T) {
	t.Parallel()
	f := setup(t)
	start := f.clock.Now().Add(48 * time.Hour)
	iv := f.draft(t, start)
	if iv.GetState() != interventionsv1.InterventionState_INTERVENTION_STATE_DRAFT || len(iv.GetChecklist()) != 6 ||
		iv.GetLevel() != interventionsv1.EscalationLevel_ESCALATION_LEVEL_LEVEL_1 || iv.GetWorkflowId() != "intervention/"+iv.GetName() {
		t.Fatalf("draft = %v", iv)
	}
	iv, err := f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{
		Intervention: &interventionsv1.Intervention{Name: iv.GetName(), Etag: iv.GetEtag(), Participants: []*interventionsv1.Participant{
			{MemberId: "mom", Role: interventionsv1.ParticipantRole_PARTICIPANT_ROLE_LEAD_SPEAKER},
			{MemberId: "bro", Role: interventionsv1.ParticipantRole_PARTICIPANT_ROLE_SUPPORT}}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"participants"}}})
	if err != nil || len(iv.GetParticipants()) != 2 {
		t.Fatalf("UpdateIntervention = %v, %v", iv, err)
	}
	iv, err = f.client.UpdateChecklistItem(f.ctx, &interventionsv1.UpdateChecklistItemRequest{Name: iv.GetName(),
		Kind: interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_QUIET_PRIVATE_PLACE, Done: true, Note: "living room, Sunday"})
	if err != nil || !iv.GetChecklist()[0].GetDone() || iv.GetChecklist()[0].GetDoneBy() != "counselor-1" {
		t.Fatalf("UpdateChecklistItem = %v, %v", iv.GetChecklist(), err)
	}
	_, err = f.client.RecordOutcome(f.ctx, &interventionsv1.RecordOutcomeRequest{Name: iv.GetName(), Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_ACCEPTED})
	wantCode(t, err, codes.FailedPrecondition) // not scheduled yet
	iv, err = f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: iv.GetName()})
	if err != nil || iv.GetState() != interventionsv1.InterventionState_INTERVENTION_STATE_SCHEDULED {
		t.Fatalf("ScheduleIntervention = %v, %v", iv, err)
	}
	_, err = f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: iv.GetName()})
	wantCode(t, err, codes.FailedPrecondition)
	_, err = f.client.DeleteIntervention(f.ctx, &interventionsv1.DeleteInterventionRequest{Name: iv.GetName()})
	wantCode(t, err, codes.FailedPrecondition)
	start = start.Add(24 * time.Hour)
	iv, err = f.client.RescheduleIntervention(f.ctx, &interventionsv1.RescheduleInterventionRequest{Name: iv.GetName(),
		StartTime: timestamppb.New(start), Reason: "family asked for Monday"})
	if err != nil || iv.GetRescheduleCount() != 1 || iv.GetStartTime().AsTime().Sub(start).Abs() >= time.Microsecond ||
		iv.GetRescheduleReason() != "family asked for Monday" {
		t.Fatalf("RescheduleIntervention = %v, %v", iv, err)
	}
	if got, err := f.client.GetIntervention(f.ctx, &interventionsv1.GetInterventionRequest{Name: iv.GetName()}); err != nil || got.GetRescheduleReason() != "family asked for Monday" {
		t.Fatalf("the stored reschedule reason: %v, %v", got, err)
	}
	// A field a newer release stored (this one read during a rolling
	// update, or after a rollback) leaves the row readable.
	if _, err := f.pool.Exec(context.Background(), `UPDATE interventions SET doc = doc || '{"field_of_a_later_release": 1}'::jsonb`); err != nil {
		t.Fatal(err)
	}
	if got, err := f.client.GetIntervention(f.ctx, &interventionsv1.GetInterventionRequest{Name: iv.GetName()}); err != nil || got.GetRescheduleCount() != 1 {
		t.Fatalf("a row with a field of a later release: %v, %v", got, err)
	}
	// Moved to where it is: nothing changes, and no event tells the
	// workflow to send every reminder again.
	countEvents := func() int {
		t.Helper()
		var n int
		if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE event_type = 'handoff.interventions.v1.intervention.rescheduled'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	rescheduled := countEvents()
	same, err := f.client.RescheduleIntervention(f.ctx, &interventionsv1.RescheduleInterventionRequest{Name: iv.GetName(),
		StartTime: timestamppb.New(start), Reason: "confirming Monday"})
	if err != nil || same.GetRescheduleCount() != 1 || same.GetEtag() != iv.GetEtag() || countEvents() != rescheduled {
		t.Fatalf("a reschedule to the same time: %v, %v; %d events, were %d", same, err, countEvents(), rescheduled)
	}
	// An edit that sends back the time as the client first gave it, to the
	// nanosecond, does not change the time: the start is stored to the
	// microsecond and the duration to the second.
	edited, err := f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{
		Intervention: &interventionsv1.Intervention{Name: iv.GetName(), StartTime: timestamppb.New(start.Truncate(time.Microsecond).Add(500)),
			ExpectedDuration: durationpb.New(iv.GetExpectedDuration().AsDuration() + 500), Participants: iv.GetParticipants()},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"start_time", "expected_duration", "participants"}}})
	if err != nil || edited.GetRescheduleCount() != 1 {
		t.Fatalf("an edit with the same time in nanoseconds: %v, %v", edited, err)
	}
	iv = edited
	st := wantCode(t, func() error {
		_, err := f.client.RecordOutcome(f.ctx, &interventionsv1.RecordOutcomeRequest{Name: iv.GetName(), Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_DECLINED})
		return err
	}(), codes.FailedPrecondition)
	if reason(st) != "TOO_EARLY" {
		t.Fatalf("early outcome reason = %q", reason(st))
	}
	f.clock.Advance(73 * time.Hour)
	iv, err = f.client.RecordOutcome(f.ctx, &interventionsv1.RecordOutcomeRequest{Name: iv.GetName(),
		Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_DECLINED, Notes: "not ready"})
	if err != nil || iv.GetState() != interventionsv1.InterventionState_INTERVENTION_STATE_COMPLETED || iv.GetOutcome().GetRecordedBy() != "counselor-1" {
		t.Fatalf("RecordOutcome = %v, %v", iv, err)
	}
	st = wantCode(t, func() error {
		_, err := f.client.RecordOutcome(f.ctx, &interventionsv1.RecordOutcomeRequest{Name: iv.GetName(), Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_ACCEPTED})
		return err
	}(), codes.FailedPrecondition)
	if reason(st) != "ALREADY_RECORDED" {
		t.Fatalf("duplicate outcome reason = %q", reason(st))
	}
	ci, err := f.client.RecordCheckIn(f.ctx, &interventionsv1.RecordCheckInRequest{Name: iv.GetName(),
		CheckIn: &interventionsv1.RecordCheckInRequest_Number{Number: 1}, WindowOfOpportunity: true})
	if err != nil || ci.GetNumber() != 1 || !ci.GetWindowOfOpportunity() {
		t.Fatalf("RecordCheckIn = %v, %v", ci, err)
	}
	_, err = f.client.RecordCheckIn(f.ctx, &interventionsv1.RecordCheckInRequest{Name: iv.GetName(),
		CheckIn: &interventionsv1.RecordCheckInRequest_Number{Number: 1}})
	wantCode(t, err, codes.FailedPrecondition)
	// With no reminders naming check-ins, the next is the only one to
	// come: a later number would take a check-in that has not come yet.
	_, err = f.client.RecordCheckIn(f.ctx, &interventionsv1.RecordCheckInRequest{Name: iv.GetName(),
		CheckIn: &interventionsv1.RecordCheckInRequest_Number{Number: 3}})
	if st := wantCode(t, err, codes.InvalidArgument); fieldOf(st) != "number" {
		t.Fatalf("violation on %q, want number", fieldOf(st))
	}

	other := f.draft(t, f.clock.Now().Add(time.Hour))
	other, err = f.client.CancelIntervention(f.ctx, &interventionsv1.CancelInterventionRequest{Name: other.GetName(), Reason: "family moved"})
	if err != nil || other.GetState() != interventionsv1.InterventionState_INTERVENTION_STATE_CANCELLED || other.GetCancelReason() != "family moved" {
		t.Fatalf("CancelIntervention = %v, %v", other, err)
	}
	_, err = f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: other.GetName()})
	wantCode(t, err, codes.FailedPrecondition)
	third := f.draft(t, f.clock.Now().Add(time.Hour))
	if _, err := f.client.DeleteIntervention(f.ctx, &interventionsv1.DeleteInterventionRequest{Name: third.GetName()}); err != nil {
		t.Fatal(err)
	}
	list, err := f.client.ListInterventions(f.ctx, &interventionsv1.ListInterventionsRequest{Parent: "clinics/north",
		Filter: `family = "` + f.family.GetName() + `" AND state = COMPLETED`})
	if err != nil || len(list.GetInterventions()) != 1 {
		t.Fatalf("ListInterventions = %v, %v", list, err)
	}
	var events []string
	rows, _ := f.pool.Query(context.Background(), `SELECT event_type FROM outbox WHERE resource = $1 ORDER BY id`, iv.GetName())
	for rows.Next() {
		var e string
		_ = rows.Scan(&e)
		events = append(events, e)
	}
	want := []string{"created", "updated", "checklist_updated", "scheduled", "rescheduled", "details_updated", "outcome_recorded", "check_in_recorded"}
	if len(events) != len(want) {
		t.Fatalf("outbox = %v", events)
	}
	for i, e := range want {
		if events[i] != "handoff.interventions.v1.intervention."+e {
			t.Fatalf("outbox[%d] = %s, want %s", i, events[i], e)
		}
	}
}

// Two concurrent schedule requests for one counselor's overlapping slot:
// exactly one wins; the constraint in PostgreSQL decides.
// scheduleAtOnce schedules the drafts side by side, and returns each
// one's error.
func (f *fixture) scheduleAtOnce(drafts ...*interventionsv1.Intervention) []error {
	var wg sync.WaitGroup
	errs := make([]error, len(drafts))
	for i, iv := range drafts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: iv.GetName()})
		}()
	}
	wg.Wait()
	return errs
}

func TestCounselorCannotBeDoubleBooked(t *testing.T) {
	t.Parallel()
	f := setup(t)
	start := f.clock.Now().Add(24 * time.Hour)
	a := f.draft(t, start)
	b := f.draft(t, start.Add(30*time.Minute))
	errs := f.scheduleAtOnce(a, b)
	won := 0
	for _, err := range errs {
		if err == nil {
			won++
			continue
		}
		if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != "COUNSELOR_DOUBLE_BOOKED" {
			t.Fatalf("loser's reason = %q", reason(st))
		}
	}
	if won != 1 {
		t.Fatalf("%d schedules won, want exactly 1 (%v)", won, errs)
	}
	// Back to back is fine.
	c := f.draft(t, start.Add(90*time.Minute)) // right after the later of the two: ranges are half-open
	if _, err := f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: c.GetName()}); err != nil {
		t.Fatalf("adjacent slot: %v", err)
	}
}

// A family is not in two scheduled meetings at once, whoever leads them:
// each would hold a treatment place for the one loved one, and send the
// family its own reminders. Racing schedules take turns; the loser is told
// which meeting it met. Back to back is fine.
func TestFamilyCannotBeDoubleBooked(t *testing.T) {
	t.Parallel()
	f := setup(t)
	start := f.clock.Now().Add(24 * time.Hour)
	led := func(by string, at time.Time) *interventionsv1.Intervention {
		iv := f.draft(t, at)
		iv, err := f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{
			Intervention: &interventionsv1.Intervention{Name: iv.GetName(), Counselor: by},
			UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"counselor"}}})
		if err != nil {
			t.Fatal(err)
		}
		return iv
	}
	a, b := led("counselor-1", start), led("counselor-2", start.Add(30*time.Minute))
	errs := f.scheduleAtOnce(a, b)
	var winner, loser *interventionsv1.Intervention
	for i, err := range errs {
		iv := []*interventionsv1.Intervention{a, b}[i]
		if err == nil {
			winner = iv
			continue
		}
		loser = iv
		if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != "FAMILY_DOUBLE_BOOKED" {
			t.Fatalf("loser's reason = %q (%v)", reason(st), err)
		}
	}
	if winner == nil || loser == nil {
		t.Fatalf("schedules: %v; want exactly one to win", errs)
	}
	if !strings.Contains(status.Convert(errs[slices.Index([]*interventionsv1.Intervention{a, b}, loser)]).Message(), winner.GetName()) {
		t.Errorf("the refusal does not name the meeting it met, %s", winner.GetName())
	}
	got, err := f.client.GetIntervention(f.ctx, &interventionsv1.GetInterventionRequest{Name: loser.GetName()})
	if err != nil || got.GetState() != interventionsv1.InterventionState_INTERVENTION_STATE_DRAFT {
		t.Fatalf("the refused meeting: %v, %v; want it left a draft", got.GetState(), err)
	}
	// Meetings that overlapped before this check (made by an older
	// release) stay editable: an edit that keeps their time, as a
	// checklist tick, is not refused for the overlap.
	if _, err := f.pool.Exec(context.Background(), `UPDATE interventions SET state = $1 WHERE id = $2`,
		int16(interventionsv1.InterventionState_INTERVENTION_STATE_SCHEDULED), strings.TrimPrefix(loser.GetName(), "clinics/north/interventions/")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.UpdateChecklistItem(f.ctx, &interventionsv1.UpdateChecklistItemRequest{Name: loser.GetName(),
		Kind: interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_PARTICIPANTS_BRIEFED, Done: true}); err != nil {
		t.Fatalf("a checklist tick on a meeting that overlapped before: %v", err)
	}
	// Back to back, after the later of the two: scheduled.
	c := led("counselor-3", start.Add(90*time.Minute))
	if _, err := f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: c.GetName()}); err != nil {
		t.Fatalf("the family's next slot: %v", err)
	}
	// Moved onto the other scheduled meeting: refused, and left where it was.
	_, err = f.client.RescheduleIntervention(f.ctx, &interventionsv1.RescheduleInterventionRequest{Name: c.GetName(),
		StartTime: winner.GetStartTime(), Reason: "the family asked"})
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != "FAMILY_DOUBLE_BOOKED" {
		t.Fatalf("a move onto the other meeting: reason %q", reason(st))
	}
	if got, err := f.client.GetIntervention(f.ctx, &interventionsv1.GetInterventionRequest{Name: c.GetName()}); err != nil ||
		!got.GetStartTime().AsTime().Equal(c.GetStartTime().AsTime()) {
		t.Fatalf("the refused move: %v, %v; want the meeting where it was", got.GetStartTime().AsTime(), err)
	}
}

func TestSchedulingRules(t *testing.T) {
	t.Parallel()
	f := setup(t)
	// A participant who is not a member.
	_, err := f.client.CreateIntervention(f.ctx, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north",
		Intervention: &interventionsv1.Intervention{Family: f.family.GetName(), Counselor: "counselor-1",
			Participants: []*interventionsv1.Participant{{MemberId: "stranger", Role: interventionsv1.ParticipantRole_PARTICIPANT_ROLE_SUPPORT}}}})
	wantCode(t, err, codes.InvalidArgument)
	// Level 3 needs a current, not high-risk safety screen.
	iv := f.draft(t, f.clock.Now().Add(24*time.Hour))
	iv, err = f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{
		Intervention: &interventionsv1.Intervention{Name: iv.GetName(), Level: interventionsv1.EscalationLevel_ESCALATION_LEVEL_LEVEL_3},
		UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"level"}}})
	if err != nil {
		t.Fatal(err)
	}
	st := wantCode(t, func() error {
		_, err := f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: iv.GetName()})
		return err
	}(), codes.FailedPrecondition)
	if reason(st) != "SAFETY_SCREEN_REQUIRED" {
		t.Fatalf("reason = %q", reason(st))
	}
	if _, err := f.families.CreateSafetyScreen(f.ctx, &familiesv1.CreateSafetyScreenRequest{Parent: f.family.GetName(),
		SafetyScreen: &familiesv1.SafetyScreen{Result: familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK}}); err != nil {
		t.Fatal(err)
	}
	// It also needs an active boundary that states a consequence: one
	// only proposed, or one without a consequence, is not enough.
	f.boundary(t, "No cash.", "", true)
	f.boundary(t, "No rides to buy.", "We stop driving you.", false)
	st = wantCode(t, func() error {
		_, err := f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: iv.GetName()})
		return err
	}(), codes.FailedPrecondition)
	if reason(st) != "CONSEQUENCE_REQUIRED" {
		t.Fatalf("reason = %q", reason(st))
	}
	if got, err := f.client.GetIntervention(f.ctx, &interventionsv1.GetInterventionRequest{Name: iv.GetName()}); err != nil ||
		got.GetState() != interventionsv1.InterventionState_INTERVENTION_STATE_DRAFT || got.GetEtag() != iv.GetEtag() {
		t.Fatalf("a refused schedule changed the draft: %v, %v", got, err)
	}
	f.boundary(t, "No money for rent.", "You find your own place.", true)
	if _, err := f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: iv.GetName()}); err != nil {
		t.Fatalf("with a screen and a consequence: %v", err)
	}
	// A high-risk screen stops a meeting of any level, until a newer one
	// is not high risk.
	screen := func(r familiesv1.SafetyRisk) {
		t.Helper()
		f.clock.Advance(time.Minute)
		if _, err := f.families.CreateSafetyScreen(f.ctx, &familiesv1.CreateSafetyScreenRequest{Parent: f.family.GetName(),
			SafetyScreen: &familiesv1.SafetyScreen{Result: r}}); err != nil {
			t.Fatal(err)
		}
	}
	screen(familiesv1.SafetyRisk_SAFETY_RISK_HIGH_RISK)
	first := f.draft(t, f.clock.Now().Add(48*time.Hour))
	if first.GetLevel() != interventionsv1.EscalationLevel_ESCALATION_LEVEL_LEVEL_1 {
		t.Fatalf("draft level %v", first.GetLevel())
	}
	st = wantCode(t, func() error {
		_, err := f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: first.GetName()})
		return err
	}(), codes.FailedPrecondition)
	if reason(st) != "SAFETY_SCREEN_REQUIRED" {
		t.Fatalf("level 1 under a high-risk screen: reason %q", reason(st))
	}
	screen(familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK)
	if _, err := f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: first.GetName()}); err != nil {
		t.Fatalf("level 1 after a newer screen: %v", err)
	}
	// In the past, and too far ahead: the draft is not ready (its field
	// named, to fix with UpdateIntervention), the request was fine.
	for _, at := range []time.Time{f.clock.Now().Add(-time.Hour), f.clock.Now().Add(400 * 24 * time.Hour)} {
		d := f.draft(t, at)
		_, err := f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: d.GetName()})
		st := wantCode(t, err, codes.FailedPrecondition)
		var subject string
		for _, det := range st.Details() {
			if pf, ok := det.(*errdetails.PreconditionFailure); ok && len(pf.GetViolations()) > 0 {
				subject = pf.GetViolations()[0].GetSubject()
			}
		}
		if reason(st) != "RESOURCE_NOT_READY" || subject != "intervention.start_time" {
			t.Fatalf("a draft at %v: reason %q, precondition on %q", at, reason(st), subject)
		}
	}
	// A reschedule's new time is the request's own field.
	_, err = f.client.RescheduleIntervention(f.ctx, &interventionsv1.RescheduleInterventionRequest{Name: first.GetName(),
		StartTime: timestamppb.New(f.clock.Now().Add(-time.Hour)), Reason: "x"})
	if st := wantCode(t, err, codes.InvalidArgument); fieldOf(st) != "start_time" {
		t.Fatalf("reschedule into the past: violation on %q, want start_time", fieldOf(st))
	}
	// Another clinic cannot see or touch it.
	_, err = f.client.GetIntervention(f.env.Counselor("south"), &interventionsv1.GetInterventionRequest{Name: iv.GetName()})
	wantCode(t, err, codes.NotFound)
	_, err = f.client.CancelIntervention(f.env.Counselor("south"), &interventionsv1.CancelInterventionRequest{Name: iv.GetName(), Reason: "x"})
	wantCode(t, err, codes.NotFound)
	// Bad shapes.
	_, err = f.client.CreateIntervention(f.ctx, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north",
		Intervention: &interventionsv1.Intervention{Family: "clinics/south/families/x", Counselor: "c"}})
	wantCode(t, err, codes.InvalidArgument)
	_, err = f.client.CreateIntervention(f.ctx, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north",
		Intervention: &interventionsv1.Intervention{Family: f.family.GetName(), Counselor: "c", TimeZone: "Nowhere/Land"}})
	wantCode(t, err, codes.InvalidArgument)
	// "Local" is the worker's own zone, which differs between machines.
	_, err = f.client.CreateIntervention(f.ctx, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north",
		Intervention: &interventionsv1.Intervention{Family: f.family.GetName(), Counselor: "c", TimeZone: "Local"}})
	wantCode(t, err, codes.InvalidArgument)
	_, err = f.client.CreateIntervention(f.ctx, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north",
		Intervention: &interventionsv1.Intervention{Family: f.family.GetName(), Counselor: "c",
			Place: &interventionsv1.Place{Kind: &interventionsv1.Place_Video{Video: &interventionsv1.VideoPlace{Link: "not a link"}}}}})
	wantCode(t, err, codes.InvalidArgument)
}

// A filter on the reminder state goes by the service's clock, as the
// state each reminder reports and the claim do, not the database's.
func TestReminderStateFilterUsesTheServiceClock(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.clock.Advance(time.Hour) // the service's clock an hour ahead of the database's
	rem, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
		Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
			Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS},
		DueTime: timestamppb.New(time.Now().Add(30 * time.Minute)), Kind: interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_UPCOMING,
		Message: "Reminder: family meeting tomorrow.", RelatedResource: "clinics/north/interventions/x"}})
	if err != nil {
		t.Fatal(err)
	}
	if rem.GetState() != interventionsv1.ReminderState_REMINDER_STATE_DUE {
		t.Fatalf("state = %v, want DUE by the service's clock", rem.GetState())
	}
	for filter, want := range map[string]int{"state = DUE": 1, "state = SCHEDULED": 0} {
		got, err := f.client.ListReminders(f.env.As("north", "admin-1", auth.RoleClinicAdmin), &interventionsv1.ListRemindersRequest{Parent: "clinics/north", Filter: filter})
		if err != nil || len(got.GetReminders()) != want {
			t.Fatalf("reminders where %s: %v, %v; want %d", filter, got.GetReminders(), err, want)
		}
	}
	auto := f.env.As("north", "sms-gateway", auth.RoleReminders)
	if _, err := f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: rem.GetName(), Claimant: "sms-1",
		LeaseDuration: durationpb.New(time.Minute)}); err != nil {
		t.Fatalf("claiming the reminder listed as due: %v", err)
	}
}

// A new length alone does not move the meeting: its reminders stand, the
// count of moves and its reason stay, and the workflow still hears of it
// (a treatment slot held until the old end may need taking again).
func TestLongerMeetingKeepsItsReminders(t *testing.T) {
	t.Parallel()
	f := setup(t)
	iv := f.draft(t, time.Now().Add(48*time.Hour))
	iv, err := f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: iv.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	rem, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
		Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
			Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS},
		DueTime: timestamppb.New(time.Now().Add(time.Hour)), Kind: interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_UPCOMING,
		Message: "Reminder: family meeting in two days at 6 pm.", RelatedResource: iv.GetName()}})
	if err != nil {
		t.Fatal(err)
	}
	events := func() (n int) {
		t.Helper()
		if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE resource = $1
			AND event_type = 'handoff.interventions.v1.intervention.rescheduled'`, iv.GetName()).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	longer, err := f.client.RescheduleIntervention(f.ctx, &interventionsv1.RescheduleInterventionRequest{Name: iv.GetName(),
		StartTime: iv.GetStartTime(), TimeZone: iv.GetTimeZone(), ExpectedDuration: durationpb.New(3 * time.Hour), Reason: "more to say"})
	if err != nil {
		t.Fatal(err)
	}
	if longer.GetExpectedDuration().AsDuration() != 3*time.Hour || longer.GetRescheduleCount() != 0 || longer.GetRescheduleReason() != "" ||
		!longer.GetStartTime().AsTime().Equal(iv.GetStartTime().AsTime()) {
		t.Fatalf("after a new length = %v; want 3 h, the same start, no move counted", longer)
	}
	if got, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: rem.GetName()}); err != nil ||
		got.GetState() != interventionsv1.ReminderState_REMINDER_STATE_SCHEDULED {
		t.Fatalf("the meeting's reminder after a new length = %v, %v; want SCHEDULED still", got, err)
	}
	if n := events(); n != 1 {
		t.Fatalf("%d rescheduled events; want 1, for the workflow", n)
	}
	// A new zone alone does not move the meeting: no move counted, the
	// reason kept; but the reminder, naming its time in the old zone, goes.
	rezoned, err := f.client.RescheduleIntervention(f.ctx, &interventionsv1.RescheduleInterventionRequest{Name: iv.GetName(),
		StartTime: iv.GetStartTime(), TimeZone: "America/Denver", Reason: "the family is in Denver"})
	if err != nil || rezoned.GetRescheduleCount() != 0 || rezoned.GetRescheduleReason() != "" || rezoned.GetTimeZone() != "America/Denver" ||
		!rezoned.GetStartTime().AsTime().Equal(iv.GetStartTime().AsTime()) {
		t.Fatalf("after a new zone = %v, %v; want the same start in Denver, no move counted", rezoned, err)
	}
	if got, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: rem.GetName()}); err != nil ||
		got.GetState() != interventionsv1.ReminderState_REMINDER_STATE_CANCELLED {
		t.Fatalf("the meeting's reminder after a new zone = %v, %v; want CANCELLED", got, err)
	}
	if n := events(); n != 2 {
		t.Fatalf("%d rescheduled events; want 2, for the workflow to remind again", n)
	}
	// Moved, it counts, and the reminder naming the old time goes.
	moved, err := f.client.RescheduleIntervention(f.ctx, &interventionsv1.RescheduleInterventionRequest{Name: iv.GetName(),
		StartTime: timestamppb.New(iv.GetStartTime().AsTime().Add(time.Hour)), Reason: "later"})
	if err != nil || moved.GetRescheduleCount() != 1 || moved.GetRescheduleReason() != "later" || moved.GetExpectedDuration().AsDuration() != 3*time.Hour {
		t.Fatalf("after a move = %v, %v; want one move, its reason, the length kept", moved, err)
	}
	if got, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: rem.GetName()}); err != nil ||
		got.GetState() != interventionsv1.ReminderState_REMINDER_STATE_CANCELLED {
		t.Fatalf("the meeting's reminder after a move = %v, %v; want CANCELLED", got, err)
	}
}

// A meeting running long is lengthened after it began; moved, it goes to
// a time to come, never to the past.
func TestBegunMeetingIsLengthenedNotMoved(t *testing.T) {
	t.Parallel()
	f := setup(t)
	iv := f.scheduled(t, f.clock.Now().Add(time.Hour))
	f.clock.Advance(90 * time.Minute)
	longer, err := f.client.RescheduleIntervention(f.ctx, &interventionsv1.RescheduleInterventionRequest{Name: iv.GetName(),
		StartTime: iv.GetStartTime(), ExpectedDuration: durationpb.New(3 * time.Hour)})
	if err != nil || longer.GetExpectedDuration().AsDuration() != 3*time.Hour || longer.GetRescheduleCount() != 0 {
		t.Fatalf("a begun meeting lengthened: %v, %v; want 3 h, no move counted", longer, err)
	}
	// Its zone is not changed once it began: the workflow would chase its
	// outcome afresh. Refused as the zone's fault, not as a move.
	_, err = f.client.RescheduleIntervention(f.ctx, &interventionsv1.RescheduleInterventionRequest{Name: iv.GetName(),
		StartTime: iv.GetStartTime(), TimeZone: "America/Denver"})
	if st := wantCode(t, err, codes.InvalidArgument); fieldOf(st) != "time_zone" {
		t.Fatalf("a begun meeting's zone changed: %v; want time_zone refused", err)
	}
	for _, at := range []time.Time{iv.GetStartTime().AsTime().Add(-time.Minute), f.clock.Now().Add(time.Hour)} {
		_, err := f.client.RescheduleIntervention(f.ctx, &interventionsv1.RescheduleInterventionRequest{Name: iv.GetName(),
			StartTime: timestamppb.New(at), Reason: "moved"})
		if at.Before(f.clock.Now()) {
			if st := wantCode(t, err, codes.InvalidArgument); fieldOf(st) != "start_time" {
				t.Fatalf("a begun meeting moved to %v: %v; want start_time refused", at, err)
			}
		} else if err != nil {
			t.Fatalf("a begun meeting moved ahead to %v: %v", at, err)
		}
	}
}

// Cancelling or moving a meeting cancels its reminders in the same
// transaction: none can be claimed and sent, with the old time or for no
// meeting, while the workflow has yet to hear of it. Others' reminders are
// left alone, and the automation's view of one leaves out why it was
// cancelled and which workflow made it.
func TestCancelAndRescheduleCancelTheMeetingsReminders(t *testing.T) {
	t.Parallel()
	f := setup(t)
	auto := f.env.As("north", "sms-gateway", auth.RoleReminders)
	remind := func(related string) *interventionsv1.Reminder {
		t.Helper()
		rem, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
			Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
				Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS},
			DueTime: timestamppb.New(time.Now().Add(-time.Second)), Kind: interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_UPCOMING,
			Message: "Reminder: family meeting tomorrow at 6 pm.", RelatedResource: related}})
		if err != nil {
			t.Fatal(err)
		}
		return rem
	}
	for _, step := range []string{"cancel", "reschedule"} {
		iv := f.draft(t, time.Now().Add(48*time.Hour))
		iv, err := f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: iv.GetName()})
		if err != nil {
			t.Fatal(err)
		}
		due, claimed, other := remind(iv.GetName()), remind(iv.GetName()), remind("clinics/north/interventions/another")
		if _, err := f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: claimed.GetName(), Claimant: "sms-1",
			LeaseDuration: durationpb.New(time.Minute)}); err != nil {
			t.Fatal(err)
		}
		switch step {
		case "cancel":
			_, err = f.client.CancelIntervention(f.ctx, &interventionsv1.CancelInterventionRequest{Name: iv.GetName(), Reason: "family asked"})
		case "reschedule":
			_, err = f.client.RescheduleIntervention(f.ctx, &interventionsv1.RescheduleInterventionRequest{Name: iv.GetName(),
				StartTime: timestamppb.New(time.Now().Add(72 * time.Hour).Truncate(time.Second))})
		}
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		for _, rem := range []*interventionsv1.Reminder{due, claimed} {
			got, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: rem.GetName()})
			if err != nil || got.GetState() != interventionsv1.ReminderState_REMINDER_STATE_CANCELLED || got.GetCancelReason() == "" {
				t.Fatalf("%s: reminder after it = %v, %v; want CANCELLED with a reason", step, got, err)
			}
			seen, err := f.client.GetReminder(auto, &interventionsv1.GetReminderRequest{Name: rem.GetName()})
			if err != nil || seen.GetCancelReason() != "" || seen.GetOriginWorkflow() != "" || seen.GetRelatedResource() != rem.GetRelatedResource() ||
				seen.GetState() != interventionsv1.ReminderState_REMINDER_STATE_CANCELLED {
				t.Fatalf("%s: the automation's view = %v, %v; want CANCELLED and nothing of why", step, seen, err)
			}
		}
		_, err = f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: due.GetName(), Claimant: "sms-2",
			LeaseDuration: durationpb.New(time.Minute)})
		wantCode(t, err, codes.FailedPrecondition)
		_, err = f.client.CompleteReminder(auto, &interventionsv1.CompleteReminderRequest{Name: claimed.GetName(), Claimant: "sms-1",
			Result: interventionsv1.DeliveryResult_DELIVERY_RESULT_DELIVERED})
		wantCode(t, err, codes.FailedPrecondition)
		if got, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: other.GetName()}); err != nil ||
			got.GetState() != interventionsv1.ReminderState_REMINDER_STATE_DUE {
			t.Fatalf("%s: another meeting's reminder = %v, %v; want DUE", step, got, err)
		}
		// A workflow yet to hear of the change makes no new reminder of
		// the meeting, or none naming its old time; a moved meeting still
		// gets them, for its new time.
		again := func(at *timestamppb.Timestamp) error {
			_, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
				Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
					Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS},
				Kind: interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_UPCOMING, Message: "Reminder: family meeting tomorrow at 6 pm.",
				RelatedResource: iv.GetName()}, MeetingStartTime: at})
			return err
		}
		moved, err := f.client.GetIntervention(f.ctx, &interventionsv1.GetInterventionRequest{Name: iv.GetName()})
		if err != nil {
			t.Fatal(err)
		}
		if step == "cancel" {
			err := again(nil)
			wantCode(t, err, codes.FailedPrecondition)
			if apperr.Reason(err) != interventions.ReasonMeetingNotScheduled {
				t.Fatalf("a reminder of a cancelled meeting: %v; want %s", err, interventions.ReasonMeetingNotScheduled)
			}
		} else {
			for _, at := range []*timestamppb.Timestamp{nil, moved.GetStartTime()} {
				if err := again(at); err != nil {
					t.Fatalf("a reminder of the moved meeting at %v: %v", at, err)
				}
			}
			err := again(iv.GetStartTime())
			if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != interventions.ReasonMeetingNotScheduled ||
				!strings.Contains(st.Message(), "moved") {
				t.Fatalf("a reminder naming the meeting's old time: %v; want %s", st.Message(), interventions.ReasonMeetingNotScheduled)
			}
		}
		// Each cancellation went out as an event, so webhook deliveries of
		// the reminders are withdrawn.
		var n int
		if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE event_type = $1 AND resource = ANY($2)`,
			"handoff.interventions.v1.reminder.cancelled", []string{due.GetName(), claimed.GetName()}).Scan(&n); err != nil || n != 2 {
			t.Fatalf("%s: %d reminder.cancelled events, %v; want 2", step, n, err)
		}
	}
	// The automation may not filter on what its view leaves out.
	_, err := f.client.ListReminders(auto, &interventionsv1.ListRemindersRequest{Parent: "clinics/north",
		Filter: `origin_workflow = "mat-intake/clinics/north/interventions/another"`})
	wantCode(t, err, codes.InvalidArgument)
	list, err := f.client.ListReminders(auto, &interventionsv1.ListRemindersRequest{Parent: "clinics/north"})
	if err != nil || len(list.GetReminders()) == 0 {
		t.Fatalf("the automation's list: %v, %v", list, err)
	}
	for _, r := range list.GetReminders() {
		if r.GetCancelReason() != "" || r.GetOriginWorkflow() != "" || r.GetKind() != interventionsv1.ReminderKind_REMINDER_KIND_UNSPECIFIED {
			t.Fatalf("the automation's list shows %v", r)
		}
	}
	// Nor does it see a reminder's kind (an overdose alert's) or the record
	// under a family it is about (the warning sign): only the family. Its
	// filters follow its view.
	sign := f.family.GetName() + "/warningSigns/w1"
	alert, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
		Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR, Id: "c1",
			Channel: interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP}, DueTime: timestamppb.Now(),
		Kind: interventionsv1.ReminderKind_REMINDER_KIND_OVERDOSE_ALERT, Message: "Please call the family today.", RelatedResource: sign}})
	if err != nil {
		t.Fatal(err)
	}
	if seen, err := f.client.GetReminder(auto, &interventionsv1.GetReminderRequest{Name: alert.GetName()}); err != nil ||
		seen.GetKind() != interventionsv1.ReminderKind_REMINDER_KIND_UNSPECIFIED || seen.GetRelatedResource() != f.family.GetName() {
		t.Fatalf("the automation's view of an overdose alert = %v, %v; want no kind, the family only", seen, err)
	}
	if own, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: alert.GetName()}); err != nil ||
		own.GetKind() != interventionsv1.ReminderKind_REMINDER_KIND_OVERDOSE_ALERT || own.GetRelatedResource() != sign {
		t.Fatalf("the worker's view = %v, %v; want all of it", own, err)
	}
	_, err = f.client.ListReminders(auto, &interventionsv1.ListRemindersRequest{Parent: "clinics/north", Filter: "kind = OVERDOSE_ALERT"})
	wantCode(t, err, codes.InvalidArgument)
	for filter, want := range map[string]int{fmt.Sprintf("related_resource = %q", f.family.GetName()): 1, fmt.Sprintf("related_resource = %q", sign): 0} {
		got, err := f.client.ListReminders(auto, &interventionsv1.ListRemindersRequest{Parent: "clinics/north", Filter: filter})
		if err != nil || len(got.GetReminders()) != want {
			t.Fatalf("the automation's reminders where %s: %v, %v; want %d", filter, got.GetReminders(), err, want)
		}
	}
}

// A reminder not sent by its send-by time (the recipient's quiet hours
// begin then) is not claimed: it fails, with an event for its workflow to
// send it again after them. One still in time is claimed as ever.
func TestClaimPastSendByFailsTheReminder(t *testing.T) {
	t.Parallel()
	f := setup(t)
	auto := f.env.As("north", "sms-gateway", auth.RoleReminders)
	now := time.Now()
	remind := func(due, by time.Time) (*interventionsv1.Reminder, error) {
		return f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
			Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
				Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS},
			DueTime: timestamppb.New(due), SendByTime: timestamppb.New(by), Kind: interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN,
			Message: "Your counselor will check in with you soon.", RelatedResource: f.family.GetName()}})
	}
	_, err := remind(now, now.Add(-time.Minute))
	if st := wantCode(t, err, codes.InvalidArgument); fieldOf(st) != "reminder.send_by_time" {
		t.Fatalf("send by before due: field %q", fieldOf(st))
	}
	// Out of reach: never claimed, its webhook delivery waiting as long;
	// or an unset time sent as one.
	for _, due := range []time.Time{time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC), time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)} {
		_, err := remind(due, due.Add(time.Hour))
		if st := wantCode(t, err, codes.InvalidArgument); fieldOf(st) != "reminder.due_time" {
			t.Fatalf("a reminder due %v: field %q; want reminder.due_time", due, fieldOf(st))
		}
	}
	if _, err := remind(now, now.AddDate(3, 0, 0)); fieldOf(wantCode(t, err, codes.InvalidArgument)) != "reminder.send_by_time" {
		t.Fatalf("a reminder to send by three years from now: %v; want a violation of reminder.send_by_time", err)
	}
	// Within two horizons: a follow-up after the furthest meeting.
	if _, err := remind(now.Add(700*24*time.Hour), now.Add(700*24*time.Hour+time.Hour)); err != nil {
		t.Fatalf("a reminder due 700 days from now: %v", err)
	}
	late, err := remind(now.Add(-2*time.Hour), now.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	inTime, err := remind(now.Add(-time.Minute), now.Add(time.Hour))
	if err != nil || !inTime.GetSendByTime().AsTime().Equal(now.Add(time.Hour).Truncate(time.Microsecond)) {
		t.Fatalf("reminder in time: %v, %v", inTime, err)
	}
	claim := func(r *interventionsv1.Reminder) (*interventionsv1.Reminder, error) {
		return f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: r.GetName(), Claimant: "sms-1",
			LeaseDuration: durationpb.New(time.Minute)})
	}
	claimOnce := func(r *interventionsv1.Reminder) (*interventionsv1.Reminder, error) {
		return f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: r.GetName(), Claimant: "sms-1",
			LeaseDuration: durationpb.New(time.Minute), RequestId: "claim-late-1"})
	}
	_, err = claimOnce(late)
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != "QUIET_HOURS" {
		t.Fatalf("claim past send-by: reason %q", reason(st))
	}
	got, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: late.GetName()})
	if err != nil || got.GetState() != interventionsv1.ReminderState_REMINDER_STATE_FAILED || !strings.Contains(got.GetFailureReason(), "quiet hours") {
		t.Fatalf("reminder past send-by after a claim = %v, %v; want FAILED for quiet hours", got, err)
	}
	// Claimed again, or the first claim retried (its answer was lost):
	// the same refusal, and failed once.
	_, err = claim(late)
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != "QUIET_HOURS" {
		t.Fatalf("claim of a reminder failed past send-by: reason %q, %q", reason(st), st.Message())
	}
	_, err = claimOnce(late)
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != "QUIET_HOURS" {
		t.Fatalf("retried claim of a reminder failed past send-by: reason %q, %q", reason(st), st.Message())
	}
	var n int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE event_type = $1 AND resource = $2`,
		"handoff.interventions.v1.reminder.failed", late.GetName()).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d reminder.failed events, %v; want 1, for its workflow", n, err)
	}
	if claimed, err := claim(inTime); err != nil || claimed.GetState() != interventionsv1.ReminderState_REMINDER_STATE_CLAIMED {
		t.Fatalf("claim in time: %v, %v", claimed, err)
	}
	// Past the send-by time a claim is not extended (a lease taken before
	// ends then), and its claimant still reports.
	soon, err := remind(now.Add(-time.Minute), now.Add(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: soon.GetName(), Claimant: "sms-1",
		LeaseDuration: durationpb.New(10 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Minute)
	_, err = f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: soon.GetName(), Claimant: "sms-1",
		LeaseDuration: durationpb.New(10 * time.Minute)})
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != "QUIET_HOURS" || !strings.Contains(st.Message(), "not extended") {
		t.Fatalf("extending a claim past send-by: reason %q, %q", reason(st), st.Message())
	}
	if done, err := f.client.CompleteReminder(auto, &interventionsv1.CompleteReminderRequest{Name: soon.GetName(), Claimant: "sms-1",
		Result: interventionsv1.DeliveryResult_DELIVERY_RESULT_DELIVERED}); err != nil || done.GetState() != interventionsv1.ReminderState_REMINDER_STATE_DELIVERED {
		t.Fatalf("the claimant's report past send-by: %v, %v", done, err)
	}
	// Its own lease run out long before (past the grace a claimant has to
	// report): the reminder fails, and the claimant is told so, not to
	// report.
	gone, err := remind(f.clock.Now().Add(-time.Minute), f.clock.Now().Add(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	first, err := f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: gone.GetName(), Claimant: "sms-1",
		LeaseDuration: durationpb.New(10 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(10 * time.Minute)
	_, err = f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: gone.GetName(), Claimant: "sms-1",
		LeaseDuration: durationpb.New(10 * time.Minute)})
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != "QUIET_HOURS" || strings.Contains(st.Message(), "report") {
		t.Fatalf("a claim by the claimant whose lease ran out past the grace: %q, %q; want QUIET_HOURS, the reminder failed", reason(st), st.Message())
	}
	if got, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: gone.GetName()}); err != nil ||
		got.GetState() != interventionsv1.ReminderState_REMINDER_STATE_FAILED {
		t.Fatalf("the reminder: %v, %v; want FAILED", got, err)
	}
	// An extension sent with the etag of the claimant's lease, as after
	// a lost answer: the failure, not a version it cannot know.
	_, err = f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: gone.GetName(), Claimant: "sms-1",
		Etag: first.GetEtag(), LeaseDuration: durationpb.New(10 * time.Minute)})
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != "QUIET_HOURS" {
		t.Fatalf("an extension of the lease after the reminder failed past send-by: %q, %q; want QUIET_HOURS", reason(st), st.Message())
	}
	// The claim that failed the late reminder committed a change: its
	// record goes with it (OK), and the refusal is recorded too. A claim
	// refused without a change is recorded once.
	for name, want := range map[string][]string{late.GetName(): {"OK", "FAILED_PRECONDITION", "FAILED_PRECONDITION", "FAILED_PRECONDITION"},
		inTime.GetName(): {"OK"}, soon.GetName(): {"OK", "FAILED_PRECONDITION"}} {
		rows, err := f.pool.Query(context.Background(), `SELECT outcome FROM audit_log WHERE method LIKE '%/ClaimReminder' AND resource = $1 ORDER BY id`, name)
		if err != nil {
			t.Fatal(err)
		}
		got, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("audit of the claims of %s: %v, %v; want %v", name, got, err, want)
		}
	}
}

// A claimant extends its lease with the etag its claim returned; without
// it the claim is refused, so two workers wrongly sharing one claimant id
// do not both win. A stale etag is ABORTED, and a retry of the claim with
// its request id gets the claim's answer.
func TestClaimExtendedOnlyWithTheClaimsEtag(t *testing.T) {
	t.Parallel()
	f := setup(t)
	auto := f.env.As("north", "sms-gateway", auth.RoleReminders)
	rem, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
		Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
			Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS},
		DueTime: timestamppb.New(time.Now().Add(-time.Second)), Kind: interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN,
		Message: "Your counselor will check in with you soon.", RelatedResource: f.family.GetName()}})
	if err != nil {
		t.Fatal(err)
	}
	claim := func(etag, requestID string) (*interventionsv1.Reminder, error) {
		return f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: rem.GetName(), Claimant: "sms-1",
			LeaseDuration: durationpb.New(time.Minute), Etag: etag, RequestId: requestID})
	}
	first, err := claim("", "claim-1")
	if err != nil {
		t.Fatal(err)
	}
	// The same id without the etag: another worker, or one that lost the
	// answer and did not retry with its request id.
	_, err = claim("", "")
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != "LEASE_HELD" || !strings.Contains(st.Message(), "etag") {
		t.Fatalf("a claim of a reminder its claimant holds, without the etag: %q, %q; want LEASE_HELD", reason(st), st.Message())
	}
	if again, err := claim("", "claim-1"); err != nil || again.GetEtag() != first.GetEtag() {
		t.Fatalf("the claim retried with its request id = %v, %v; want its answer", again, err)
	}
	f.clock.Advance(30 * time.Second)
	extended, err := claim(first.GetEtag(), "")
	if err != nil || !extended.GetLeaseExpireTime().AsTime().After(first.GetLeaseExpireTime().AsTime()) ||
		extended.GetAttemptCount() != first.GetAttemptCount() {
		t.Fatalf("extended = %v, %v; want a later lease, the same attempt", extended, err)
	}
	_, err = claim(first.GetEtag(), "")
	wantCode(t, err, codes.Aborted)
	if _, err := claim(extended.GetEtag(), ""); err != nil {
		t.Fatalf("extended again with the newer etag: %v", err)
	}
}

// A claim retried with its request id after its lease ran out, and
// another worker took the reminder, is refused: answered from the first
// claim's record, the worker would send on a lease it no longer holds.
// And a lease ends at the send-by time at the latest.
func TestRetriedClaimDoesNotReviveALapsedLease(t *testing.T) {
	t.Parallel()
	f := setup(t)
	auto := f.env.As("north", "sms-gateway", auth.RoleReminders)
	remind := func(by *timestamppb.Timestamp) *interventionsv1.Reminder {
		t.Helper()
		rem, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
			Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
				Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS},
			DueTime: timestamppb.New(f.clock.Now().Add(-time.Second)), SendByTime: by, Kind: interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN,
			Message: "Your counselor will check in with you soon.", RelatedResource: f.family.GetName()}})
		if err != nil {
			t.Fatal(err)
		}
		return rem
	}
	rem := remind(nil)
	claim := func(claimant, requestID string) (*interventionsv1.Reminder, error) {
		return f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: rem.GetName(), Claimant: claimant,
			LeaseDuration: durationpb.New(time.Minute), RequestId: requestID})
	}
	first, err := claim("sms-1", "claim-a")
	if err != nil {
		t.Fatal(err)
	}
	if again, err := claim("sms-1", "claim-a"); err != nil || again.GetEtag() != first.GetEtag() {
		t.Fatalf("a retry while the lease holds: %v, %v; want the claim's answer", again, err)
	}
	f.clock.Advance(2 * time.Minute)
	if _, err := claim("sms-2", "claim-b"); err != nil {
		t.Fatalf("another worker after the lease ran out: %v", err)
	}
	_, err = claim("sms-1", "claim-a")
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != "CLAIM_LAPSED" {
		t.Fatalf("the first claim retried after another took the reminder: reason %q, %q; want CLAIM_LAPSED", reason(st), st.Message())
	}

	by := f.clock.Now().Add(30 * time.Second).Truncate(time.Microsecond)
	soon := remind(timestamppb.New(by))
	got, err := f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: soon.GetName(), Claimant: "sms-1",
		LeaseDuration: durationpb.New(time.Hour)})
	if err != nil || !got.GetLeaseExpireTime().AsTime().Equal(by) {
		t.Fatalf("an hour's lease 30 s before the send-by time: ends %v, %v; want at %v", got.GetLeaseExpireTime().AsTime(), err, by)
	}
}

// A reminder of a meeting coming up that nobody claimed before the
// meeting began (the automation was down) is cancelled at its claim, not
// sent late; a check-in about the same meeting still goes.
func TestReminderOfABegunMeetingIsCancelledAtItsClaim(t *testing.T) {
	t.Parallel()
	f := setup(t)
	auto := f.env.As("north", "sms-gateway", auth.RoleReminders)
	iv := f.scheduled(t, f.clock.Now().Add(2*time.Hour))
	remind := func(kind interventionsv1.ReminderKind) *interventionsv1.Reminder {
		t.Helper()
		rem, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", MeetingStartTime: iv.GetStartTime(),
			Reminder: &interventionsv1.Reminder{
				Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
					Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS},
				DueTime: timestamppb.New(f.clock.Now().Add(time.Hour)), Kind: kind,
				Message: "Reminder: family meeting soon.", RelatedResource: iv.GetName()}})
		if err != nil {
			t.Fatal(err)
		}
		return rem
	}
	upcoming, checkIn := remind(interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_UPCOMING), remind(interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN)
	claim := func(rem *interventionsv1.Reminder) (*interventionsv1.Reminder, error) {
		return f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: rem.GetName(), Claimant: "sms-1",
			LeaseDuration: durationpb.New(time.Minute)})
	}
	// One claimed in time by a worker that then died: its claim lapses.
	lapsed := remind(interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_UPCOMING)
	f.clock.Advance(90 * time.Minute)
	if _, err := f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: lapsed.GetName(), Claimant: "sms-0",
		LeaseDuration: durationpb.New(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(90 * time.Minute) // an hour into the meeting
	_, err := claim(lapsed)
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != "MEETING_BEGUN" {
		t.Fatalf("claim of a lapsed claim of a meeting begun: reason %q; want MEETING_BEGUN", reason(st))
	}
	if got, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: lapsed.GetName()}); err != nil ||
		got.GetState() != interventionsv1.ReminderState_REMINDER_STATE_CANCELLED {
		t.Fatalf("the lapsed claim's reminder: %v, %v; want CANCELLED", got, err)
	}
	_, err = claim(upcoming)
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != "MEETING_BEGUN" {
		t.Fatalf("claim of a reminder of a meeting begun an hour ago: reason %q; want MEETING_BEGUN", reason(st))
	}
	got, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: upcoming.GetName()})
	if err != nil || got.GetState() != interventionsv1.ReminderState_REMINDER_STATE_CANCELLED || !strings.Contains(got.GetCancelReason(), "began") {
		t.Fatalf("the reminder after its claim: %v, %v; want CANCELLED, the meeting began", got, err)
	}
	var n int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE event_type = $1 AND resource = $2`,
		"handoff.interventions.v1.reminder.cancelled", upcoming.GetName()).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d reminder.cancelled events, %v; want 1", n, err)
	}
	if c, err := claim(checkIn); err != nil || c.GetState() != interventionsv1.ReminderState_REMINDER_STATE_CLAIMED {
		t.Fatalf("a check-in about the meeting: %v, %v; want it claimed", c, err)
	}
}

// Reminders are claimed exactly once by racing automation workers.
func TestReminderClaims(t *testing.T) {
	t.Parallel()
	f := setup(t)
	create := func(r *interventionsv1.Reminder) (*interventionsv1.Reminder, error) {
		return f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: r})
	}
	rem, err := create(&interventionsv1.Reminder{
		Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
			Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS},
		DueTime: timestamppb.New(time.Now().Add(-time.Second)), Kind: interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_UPCOMING,
		Message: "Reminder: family meeting tomorrow at 6 pm at 12 Elm St.", RelatedResource: "clinics/north/interventions/x"})
	if err != nil {
		t.Fatal(err)
	}
	if rem.GetState() != interventionsv1.ReminderState_REMINDER_STATE_DUE {
		t.Fatalf("state = %v, want DUE", rem.GetState())
	}
	// A workflow asking for others' reminders leaves out its own.
	for filter, want := range map[string]int{`origin_workflow != "boundary/f1"`: 1, `origin_workflow = "boundary/f1"`: 0} {
		got, err := f.client.ListReminders(f.env.As("north", "admin-1", auth.RoleClinicAdmin), &interventionsv1.ListRemindersRequest{Parent: "clinics/north", Filter: filter})
		if err != nil || len(got.GetReminders()) != want {
			t.Fatalf("reminders where %s: %v, %v; want %d", filter, got.GetReminders(), err, want)
		}
	}
	// Health details, a loved one without permission, a member without consent.
	for name, r := range map[string]*interventionsv1.Reminder{
		"sensitive": {Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR, Id: "c1",
			Channel: interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP}, DueTime: timestamppb.Now(),
			Kind: interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN, Message: "Ask about the methadone dose"},
		"in-app to a member": {Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
			Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP}, DueTime: timestamppb.Now(),
			Kind: interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN, Message: "Checking in."},
		"about another clinic's meeting": {Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR, Id: "c1",
			Channel: interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP}, DueTime: timestamppb.Now(), RelatedResource: "clinics/south/interventions/x",
			Kind: interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN, Message: "Checking in."},
		// A meeting's kind naming no meeting is checked for its family as
		// any other (before, it was not checked at all).
		// A staff reminder naming a family names the one it is about:
		// deleting that family must cancel it.
		"a staff reminder tagged with another family": {Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR,
			Id: "c1", Family: "clinics/north/families/another", Channel: interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP}, DueTime: timestamppb.Now(),
			RelatedResource: f.family.GetName(), Kind: interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN, Message: "Checking in."},
		"a meeting's kind about another family": {Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER,
			Id: "mom", Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS}, DueTime: timestamppb.Now(),
			RelatedResource: "clinics/north/families/another", Kind: interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_UPCOMING,
			Message: "Reminder: family meeting tomorrow."},
	} {
		_, err := create(r)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v", name, err)
		}
	}
	_, err = create(&interventionsv1.Reminder{Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_LOVED_ONE,
		Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS}, DueTime: timestamppb.Now(),
		Kind: interventionsv1.ReminderKind_REMINDER_KIND_INTAKE_UPCOMING, Message: "See you tomorrow at 9."})
	wantCode(t, err, codes.FailedPrecondition)
	_, err = create(&interventionsv1.Reminder{Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER,
		Id: "bro", Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS}, DueTime: timestamppb.Now(),
		Kind: interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN, Message: "Checking in."})
	wantCode(t, err, codes.FailedPrecondition)
	// Counselors cannot create reminders; automation cannot read families.
	_, err = f.client.CreateReminder(f.ctx, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: rem})
	wantCode(t, err, codes.PermissionDenied)

	auto := f.env.As("north", "sms-gateway", auth.RoleReminders)
	due, err := f.client.ListReminders(auto, &interventionsv1.ListRemindersRequest{Parent: "clinics/north", Filter: "state = DUE AND channel = SMS"})
	if err != nil || len(due.GetReminders()) != 1 {
		t.Fatalf("due reminders = %v, %v", due, err)
	}
	var wins atomic.Int32
	var winner atomic.Value
	var wg sync.WaitGroup
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			claimant := []string{"w0", "w1", "w2", "w3", "w4"}[i]
			_, err := f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: rem.GetName(), Claimant: claimant,
				LeaseDuration: durationpb.New(time.Minute)})
			if err == nil {
				wins.Add(1)
				winner.Store(claimant)
			} else if status.Code(err) != codes.FailedPrecondition {
				t.Errorf("claim: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d claims won, want 1", wins.Load())
	}
	due, _ = f.client.ListReminders(auto, &interventionsv1.ListRemindersRequest{Parent: "clinics/north", Filter: "state = DUE"})
	if len(due.GetReminders()) != 0 {
		t.Fatalf("a claimed reminder is still listed as due")
	}
	_, err = f.client.CompleteReminder(auto, &interventionsv1.CompleteReminderRequest{Name: rem.GetName(), Claimant: "someone-else",
		Result: interventionsv1.DeliveryResult_DELIVERY_RESULT_DELIVERED})
	wantCode(t, err, codes.FailedPrecondition)
	// A failure without its reason is refused and changes nothing.
	_, err = f.client.CompleteReminder(auto, &interventionsv1.CompleteReminderRequest{Name: rem.GetName(), Claimant: winner.Load().(string),
		Result: interventionsv1.DeliveryResult_DELIVERY_RESULT_FAILED})
	wantCode(t, err, codes.InvalidArgument)
	// A delivery is taken whatever text comes with it, which is not kept:
	// a refused report would have the message sent again.
	done, err := f.client.CompleteReminder(auto, &interventionsv1.CompleteReminderRequest{Name: rem.GetName(), Claimant: winner.Load().(string),
		Result: interventionsv1.DeliveryResult_DELIVERY_RESULT_DELIVERED, Reason: "accepted for +15551234567"})
	if err != nil || done.GetState() != interventionsv1.ReminderState_REMINDER_STATE_DELIVERED || done.GetAttemptCount() != 1 || done.GetFailureReason() != "" {
		t.Fatalf("CompleteReminder = %v, %v", done, err)
	}
	_, err = f.client.CancelReminder(f.worker, &interventionsv1.CancelReminderRequest{Name: rem.GetName()})
	wantCode(t, err, codes.FailedPrecondition)

	// A claimant reporting after its lease ran out: accepted while nobody
	// claimed the reminder since (the message went out; refusing would have
	// it sent twice), refused once someone has.
	lapse := func(claimants ...string) *interventionsv1.Reminder {
		r, err := create(&interventionsv1.Reminder{Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR,
			Id: "counselor-1", Channel: interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP}, DueTime: timestamppb.New(f.clock.Now()),
			Kind: interventionsv1.ReminderKind_REMINDER_KIND_REENGAGEMENT, Message: "Please call the family today."})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range claimants {
			if _, err := f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: r.GetName(), Claimant: c,
				LeaseDuration: durationpb.New(time.Second)}); err != nil {
				t.Fatalf("claim by %s: %v", c, err)
			}
			f.clock.Advance(2 * time.Second)
		}
		return r
	}
	late := lapse("w-late")
	got, err := f.client.CompleteReminder(auto, &interventionsv1.CompleteReminderRequest{Name: late.GetName(), Claimant: "w-late",
		Result: interventionsv1.DeliveryResult_DELIVERY_RESULT_DELIVERED})
	if err != nil || got.GetState() != interventionsv1.ReminderState_REMINDER_STATE_DELIVERED {
		t.Fatalf("report after the lease ran out, nobody else claiming = %v, %v; want DELIVERED", got, err)
	}
	// A failure whose reason quotes the destination or the message is
	// taken, and kept without them: the API promises no address is stored
	// with a reminder, and a refused report would leave it to be sent
	// again to the same address.
	bounced := lapse("w-fail")
	got, err = f.client.CompleteReminder(auto, &interventionsv1.CompleteReminderRequest{Name: bounced.GetName(), Claimant: "w-fail",
		Result: interventionsv1.DeliveryResult_DELIVERY_RESULT_FAILED,
		Reason: "21614 at 10:00:00: +1 (555) 123-4567 is not a mobile number; body '" + bounced.GetMessage() + "'; cc sam.rivera@example.org; was (555) 123-9876, 555.123.0000"})
	if want := "21614 at 10:00:00: [address] is not a mobile number; body '[message]'; cc [address]; was [address], [address]"; err != nil ||
		got.GetState() != interventionsv1.ReminderState_REMINDER_STATE_FAILED || got.GetFailureReason() != want {
		t.Fatalf("a failure quoting the destination = %v, %q, %v; want FAILED with %q", got.GetState(), got.GetFailureReason(), err, want)
	}
	// Reminders are listed by when they were made, too.
	for _, c := range []struct {
		op   string
		want bool
	}{{"<", true}, {">=", false}} {
		at := f.clock.Now().Add(time.Minute).UTC().Format(time.RFC3339Nano)
		got, err := f.client.ListReminders(auto, &interventionsv1.ListRemindersRequest{Parent: "clinics/north",
			Filter: fmt.Sprintf("recipient_id = %q AND create_time %s %q", "counselor-1", c.op, at)})
		found := false
		for _, r := range got.GetReminders() {
			found = found || r.GetName() == late.GetName()
		}
		if err != nil || found != c.want {
			t.Fatalf("create_time %s a minute from now: found %v, %v; want %v", c.op, found, err, c.want)
		}
	}
	taken := lapse("w-late", "w-next")
	_, err = f.client.CompleteReminder(auto, &interventionsv1.CompleteReminderRequest{Name: taken.GetName(), Claimant: "w-late",
		Result: interventionsv1.DeliveryResult_DELIVERY_RESULT_DELIVERED})
	wantCode(t, err, codes.FailedPrecondition)
}

func TestTalkingPointsFollowBarriers(t *testing.T) {
	t.Parallel()
	f := setup(t)
	// Recorded against the kinds' numeric order: the answer follows the family.
	for _, k := range []familiesv1.BarrierKind{familiesv1.BarrierKind_BARRIER_KIND_MISINFORMATION, familiesv1.BarrierKind_BARRIER_KIND_FEAR_OF_WITHDRAWAL} {
		if _, err := f.families.CreateBarrier(f.ctx, &familiesv1.CreateBarrierRequest{Parent: f.family.GetName(), Barrier: &familiesv1.Barrier{Kind: k}}); err != nil {
			t.Fatal(err)
		}
	}
	admin := f.env.As("north", "admin", auth.RoleClinicAdmin)
	own, err := f.client.CreateTalkingPoint(admin, &interventionsv1.CreateTalkingPointRequest{Parent: "clinics/north",
		TalkingPoint: &interventionsv1.TalkingPoint{BarrierKind: interventionsv1.BarrierKind_BARRIER_KIND_MISINFORMATION,
			Prompt: "What would you want to know from someone who has been on medication?", Fact: "Our peer mentors are on MAT themselves.", Source: "Clinic peer program"}})
	if err != nil {
		t.Fatal(err)
	}
	// Its creation is recorded by its name, though no event names it.
	var recorded string
	if err := f.pool.QueryRow(context.Background(), `SELECT resource FROM audit_log WHERE method LIKE '%/CreateTalkingPoint'`).Scan(&recorded); err != nil || recorded != own.GetName() {
		t.Fatalf("the talking point's creation recorded as %q (%v); want %s", recorded, err, own.GetName())
	}
	iv := f.draft(t, f.clock.Now().Add(24*time.Hour))
	resp, err := f.client.GetTalkingPoints(f.ctx, &interventionsv1.GetTalkingPointsRequest{Name: iv.GetName()})
	if err != nil || len(resp.GetBarriers()) != 2 {
		t.Fatalf("GetTalkingPoints = %v, %v", resp, err)
	}
	if first := resp.GetBarriers()[0].GetBarrierKind(); first != interventionsv1.BarrierKind_BARRIER_KIND_MISINFORMATION {
		t.Fatalf("first barrier kind %v, want the first recorded, MISINFORMATION", first)
	}
	var seenOwn, seenMethadone bool
	for _, b := range resp.GetBarriers() {
		for _, tp := range b.GetTalkingPoints() {
			seenOwn = seenOwn || tp.GetName() == own.GetName()
			seenMethadone = seenMethadone || (tp.GetBuiltIn() && b.GetBarrierKind() == interventionsv1.BarrierKind_BARRIER_KIND_MISINFORMATION &&
				tp.GetFact() != "" && strings.Contains(tp.GetFact(), "methadone") && strings.Contains(tp.GetFact(), "33%"))
		}
	}
	if !seenOwn || !seenMethadone {
		t.Fatalf("talking points miss the clinic's own (%v) or the seed's methadone finding (%v): %v", seenOwn, seenMethadone, resp)
	}
	list, _ := f.client.ListTalkingPoints(f.ctx, &interventionsv1.ListTalkingPointsRequest{Parent: "clinics/north", Filter: "barrier_kind = FEAR_OF_WITHDRAWAL"})
	for _, tp := range list.GetTalkingPoints() {
		if tp.GetBuiltIn() {
			_, err := f.client.DeleteTalkingPoint(admin, &interventionsv1.DeleteTalkingPointRequest{Name: tp.GetName()})
			wantCode(t, err, codes.FailedPrecondition)
			return
		}
	}
	t.Fatal("no built-in talking point for fear of withdrawal")
}

func BenchmarkScheduleAndGet(b *testing.B) {
	f := setup(b)
	base := f.clock.Now().Add(24 * time.Hour)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Each meeting in its own two-hour slot so none collide.
		iv := f.draft(b, base.Add(time.Duration(i)*2*time.Hour))
		if _, err := f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: iv.GetName()}); err != nil {
			b.Fatal(err)
		}
		if _, err := f.client.GetIntervention(f.ctx, &interventionsv1.GetInterventionRequest{Name: iv.GetName()}); err != nil {
			b.Fatal(err)
		}
	}
}

func digest(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	var out string
	for _, table := range []string{"interventions", "reminders", "talking_points", "outbox", "idempotency_keys"} {
		var d *string
		if err := pool.QueryRow(context.Background(), `SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM `+table+` t`).Scan(&d); err != nil {
			t.Fatal(err)
		}
		if d != nil {
			out += table + ":" + *d + " "
		}
	}
	return out
}

// Bad input and illegal transitions get the right code and change nothing.
func TestBadInputChangesNothing(t *testing.T) {
	t.Parallel()
	f := setup(t)
	iv := f.draft(t, f.clock.Now().Add(24*time.Hour))
	done := f.draft(t, f.clock.Now().Add(48*time.Hour))
	if _, err := f.client.CancelIntervention(f.ctx, &interventionsv1.CancelInterventionRequest{Name: done.GetName(), Reason: "x"}); err != nil {
		t.Fatal(err)
	}
	south := f.env.Counselor("south")
	cases := []struct {
		name string
		ctx  context.Context
		call func(context.Context) error
		code codes.Code
	}{
		{"empty create", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateIntervention(ctx, &interventionsv1.CreateInterventionRequest{})
			return err
		}, codes.InvalidArgument},
		{"wrong enum", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateIntervention(ctx, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north",
				Intervention: &interventionsv1.Intervention{Family: f.family.GetName(), Counselor: "c", Level: 9}})
			return err
		}, codes.InvalidArgument},
		{"oversized reason", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CancelIntervention(ctx, &interventionsv1.CancelInterventionRequest{Name: iv.GetName(), Reason: strings.Repeat("x", 5000)})
			return err
		}, codes.InvalidArgument},
		// Spaces say nothing: told to everyone invited, and kept.
		{"blank cancel reason", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CancelIntervention(ctx, &interventionsv1.CancelInterventionRequest{Name: iv.GetName(), Reason: "   "})
			return err
		}, codes.InvalidArgument},
		{"an address of spaces", f.ctx, func(ctx context.Context) error {
			_, err := f.client.UpdateIntervention(ctx, &interventionsv1.UpdateInterventionRequest{Intervention: &interventionsv1.Intervention{Name: iv.GetName(),
				Place: &interventionsv1.Place{Kind: &interventionsv1.Place_InPerson{InPerson: &interventionsv1.InPersonPlace{Address: "  "}}}},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"place"}}})
			return err
		}, codes.InvalidArgument},
		{"created at an address of spaces", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateIntervention(ctx, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north",
				Intervention: &interventionsv1.Intervention{Family: f.family.GetName(), Counselor: "counselor-1",
					Place: &interventionsv1.Place{Kind: &interventionsv1.Place_InPerson{InPerson: &interventionsv1.InPersonPlace{Address: "\t"}}}}})
			return err
		}, codes.InvalidArgument},
		{"malformed name", f.ctx, func(ctx context.Context) error {
			_, err := f.client.ScheduleIntervention(ctx, &interventionsv1.ScheduleInterventionRequest{Name: "interventions/x"})
			return err
		}, codes.InvalidArgument},
		{"another clinic's intervention", south, func(ctx context.Context) error {
			_, err := f.client.ScheduleIntervention(ctx, &interventionsv1.ScheduleInterventionRequest{Name: iv.GetName()})
			return err
		}, codes.NotFound},
		{"a previous intervention that does not exist", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateIntervention(ctx, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north",
				Intervention: &interventionsv1.Intervention{Family: f.family.GetName(), Counselor: "counselor-1",
					PreviousIntervention: "clinics/north/interventions/none"}})
			return err
		}, codes.InvalidArgument},
		{"place held without its hold", f.ctx, func(ctx context.Context) error {
			_, err := f.client.UpdateChecklistItem(ctx, &interventionsv1.UpdateChecklistItemRequest{Name: iv.GetName(),
				Kind: interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_TREATMENT_OPTION_HELD, Done: true})
			return err
		}, codes.InvalidArgument},
		{"hold of another clinic", f.ctx, func(ctx context.Context) error {
			_, err := f.client.UpdateChecklistItem(ctx, &interventionsv1.UpdateChecklistItemRequest{Name: iv.GetName(),
				Kind: interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_TREATMENT_OPTION_HELD, Hold: "clinics/south/holds/h"})
			return err
		}, codes.InvalidArgument},
		{"reschedule a draft", f.ctx, func(ctx context.Context) error {
			_, err := f.client.RescheduleIntervention(ctx, &interventionsv1.RescheduleInterventionRequest{Name: iv.GetName(),
				StartTime: timestamppb.New(f.clock.Now().Add(72 * time.Hour))})
			return err
		}, codes.FailedPrecondition},
		{"schedule a cancelled one", f.ctx, func(ctx context.Context) error {
			_, err := f.client.ScheduleIntervention(ctx, &interventionsv1.ScheduleInterventionRequest{Name: done.GetName()})
			return err
		}, codes.FailedPrecondition},
		{"outcome on a draft", f.ctx, func(ctx context.Context) error {
			_, err := f.client.RecordOutcome(ctx, &interventionsv1.RecordOutcomeRequest{Name: iv.GetName(), Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_DECLINED})
			return err
		}, codes.FailedPrecondition},
		{"partial outcome without services", f.ctx, func(ctx context.Context) error {
			_, err := f.client.RecordOutcome(ctx, &interventionsv1.RecordOutcomeRequest{Name: iv.GetName(), Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_PARTIALLY_ACCEPTED})
			return err
		}, codes.InvalidArgument},
		{"accepted without the medication it hands over to (PARTIALLY_ACCEPTED says that)", f.ctx, func(ctx context.Context) error {
			_, err := f.client.RecordOutcome(ctx, &interventionsv1.RecordOutcomeRequest{Name: iv.GetName(), Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_ACCEPTED,
				AcceptedServices: []interventionsv1.ServiceKind{interventionsv1.ServiceKind_SERVICE_KIND_INPATIENT}})
			return err
		}, codes.InvalidArgument},
		{"stale etag", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CancelIntervention(ctx, &interventionsv1.CancelInterventionRequest{Name: iv.GetName(), Reason: "x", Etag: "v99"})
			return err
		}, codes.Aborted},
		{"check-in without a refusal", f.ctx, func(ctx context.Context) error {
			_, err := f.client.RecordCheckIn(ctx, &interventionsv1.RecordCheckInRequest{Name: iv.GetName(),
				CheckIn: &interventionsv1.RecordCheckInRequest_Number{Number: 1}})
			return err
		}, codes.FailedPrecondition},
		{"reminder automation may not plan", f.env.As("north", "sms", auth.RoleReminders), func(ctx context.Context) error {
			_, err := f.client.CancelIntervention(ctx, &interventionsv1.CancelInterventionRequest{Name: iv.GetName(), Reason: "x"})
			return err
		}, codes.PermissionDenied},
		{"cleared duration (an empty time range would slip past the double-booking constraint)", f.ctx, func(ctx context.Context) error {
			_, err := f.client.UpdateIntervention(ctx, &interventionsv1.UpdateInterventionRequest{
				Intervention: &interventionsv1.Intervention{Name: iv.GetName()},
				UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"expected_duration"}}})
			return err
		}, codes.InvalidArgument},
		{"cleared level", f.ctx, func(ctx context.Context) error {
			_, err := f.client.UpdateIntervention(ctx, &interventionsv1.UpdateInterventionRequest{
				Intervention: &interventionsv1.Intervention{Name: iv.GetName()},
				UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"level"}}})
			return err
		}, codes.InvalidArgument},
		{"cleared time zone", f.ctx, func(ctx context.Context) error {
			_, err := f.client.UpdateIntervention(ctx, &interventionsv1.UpdateInterventionRequest{
				Intervention: &interventionsv1.Intervention{Name: iv.GetName()},
				UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"time_zone"}}})
			return err
		}, codes.InvalidArgument},
		{"bad filter", f.ctx, func(ctx context.Context) error {
			_, err := f.client.ListInterventions(ctx, &interventionsv1.ListInterventionsRequest{Parent: "clinics/north", Filter: "start_time >= yesterday"})
			return err
		}, codes.InvalidArgument},
		{"counselor reminder about another clinic's family", f.worker, func(ctx context.Context) error {
			_, err := f.client.CreateReminder(ctx, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
				Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR, Id: "counselor-1",
					Family: "clinics/south/families/f1", Channel: interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP},
				Kind: interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_UPCOMING, Message: "Family meeting tomorrow."}})
			return err
		}, codes.InvalidArgument},
	}
	before := digest(t, f.pool)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantCode(t, tc.call(tc.ctx), tc.code)
			if after := digest(t, f.pool); after != before {
				t.Fatal("database changed")
			}
		})
	}
}

// Check-ins are recorded for every outcome the workflow follows up on the
// boundary path.
func TestCheckInsFollowTheBoundaryPath(t *testing.T) {
	t.Parallel()
	f := setup(t)
	// A partial acceptance of neither MAT nor care goes down the boundary
	// path too (the workflow's rule), so its check-ins are recorded; one
	// with either goes to intake and has none.
	for _, c := range []struct {
		accepted []interventionsv1.ServiceKind
		code     codes.Code
	}{
		{[]interventionsv1.ServiceKind{interventionsv1.ServiceKind_SERVICE_KIND_HARM_REDUCTION_NALOXONE}, codes.OK},
		{[]interventionsv1.ServiceKind{interventionsv1.ServiceKind_SERVICE_KIND_HARM_REDUCTION_NALOXONE,
			interventionsv1.ServiceKind_SERVICE_KIND_MAT_NALTREXONE}, codes.FailedPrecondition},
		// A partial yes to care goes to intake too: no follow-up runs to
		// hear a check-in.
		{[]interventionsv1.ServiceKind{interventionsv1.ServiceKind_SERVICE_KIND_FAMILY_COUNSELING,
			interventionsv1.ServiceKind_SERVICE_KIND_OUTPATIENT}, codes.FailedPrecondition},
	} {
		p := f.draft(t, f.clock.Now().Add(72*time.Hour))
		if _, err := f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: p.GetName()}); err != nil {
			t.Fatal(err)
		}
		f.clock.Advance(73 * time.Hour)
		if _, err := f.client.RecordOutcome(f.ctx, &interventionsv1.RecordOutcomeRequest{Name: p.GetName(),
			Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_PARTIALLY_ACCEPTED, AcceptedServices: c.accepted}); err != nil {
			t.Fatal(err)
		}
		_, err := f.client.RecordCheckIn(f.ctx, &interventionsv1.RecordCheckInRequest{Name: p.GetName(),
			CheckIn: &interventionsv1.RecordCheckInRequest_Number{Number: 1}})
		if status.Code(err) != c.code {
			t.Fatalf("check-in after a partial acceptance of %v = %v, want %s", c.accepted, err, c.code)
		}
	}

}

// Until the outcome is in, a scheduled meeting's participants and notes
// may change, also once it has begun and after a high-risk screen; its
// time still changes only through reschedule.
func TestScheduledMeetingStaysEditable(t *testing.T) {
	t.Parallel()
	f := setup(t)
	iv := f.scheduled(t, f.clock.Now().Add(72*time.Hour))
	// A level-3 meeting, which needs a current screen to be scheduled.
	if _, err := f.families.CreateSafetyScreen(f.ctx, &familiesv1.CreateSafetyScreenRequest{Parent: f.family.GetName(),
		SafetyScreen: &familiesv1.SafetyScreen{Result: familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK}}); err != nil {
		t.Fatal(err)
	}
	f.boundary(t, "No money for rent.", "You find your own place.", true)
	iv3 := f.draft(t, f.clock.Now().Add(96*time.Hour))
	if _, err := f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{
		Intervention: &interventionsv1.Intervention{Name: iv3.GetName(), Level: interventionsv1.EscalationLevel_ESCALATION_LEVEL_LEVEL_3},
		UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"level"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: iv3.GetName()}); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(72*time.Hour + 10*time.Minute) // the meeting is under way
	if _, err := f.families.CreateSafetyScreen(f.ctx, &familiesv1.CreateSafetyScreenRequest{Parent: f.family.GetName(),
		SafetyScreen: &familiesv1.SafetyScreen{Result: familiesv1.SafetyRisk_SAFETY_RISK_HIGH_RISK}}); err != nil {
		t.Fatal(err)
	}
	got, err := f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{
		Intervention: &interventionsv1.Intervention{Name: iv.GetName(), CarriedOverNotes: "he left the room after ten minutes"},
		UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"carried_over_notes"}}})
	if err != nil || got.GetCarriedOverNotes() == "" {
		t.Fatalf("editing a meeting under way: %v, %v", got, err)
	}
	if _, err := f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{
		Intervention: &interventionsv1.Intervention{Name: iv3.GetName(), CarriedOverNotes: "bring the letters"},
		UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"carried_over_notes"}}}); err != nil {
		t.Fatalf("editing a scheduled level-3 meeting after a high-risk screen: %v", err)
	}
	// Raising a scheduled meeting's level checks the screen again: to
	// level 3, and to level 2, which a high-risk screen forbids as well.
	for _, level := range []interventionsv1.EscalationLevel{interventionsv1.EscalationLevel_ESCALATION_LEVEL_LEVEL_3,
		interventionsv1.EscalationLevel_ESCALATION_LEVEL_LEVEL_2} {
		_, err = f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{
			Intervention: &interventionsv1.Intervention{Name: iv.GetName(), Level: level},
			UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"level"}}})
		wantCode(t, err, codes.FailedPrecondition)
	}
	// Lowering one is no new risk: the counselor may.
	if _, err := f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{
		Intervention: &interventionsv1.Intervention{Name: iv3.GetName(), Level: interventionsv1.EscalationLevel_ESCALATION_LEVEL_LEVEL_2},
		UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"level"}}}); err != nil {
		t.Fatalf("lowering a scheduled meeting's level after a high-risk screen: %v", err)
	}
	_, err = f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{
		Intervention: &interventionsv1.Intervention{Name: iv.GetName(), StartTime: timestamppb.New(f.clock.Now().Add(time.Hour))},
		UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"start_time"}}})
	wantCode(t, err, codes.FailedPrecondition)
}

// A reminder created without a due time is due now by the service's clock,
// so that a workflow step tried twice (its "now" moved) sends the same
// request under its request id and gets the first reminder back, where a
// due time of its own would have been refused as a reused id.
func TestReminderDueNowByTheServiceClock(t *testing.T) {
	t.Parallel()
	f := setup(t)
	req := func() *interventionsv1.CreateReminderRequest {
		return &interventionsv1.CreateReminderRequest{Parent: "clinics/north", RequestId: "step-1", Reminder: &interventionsv1.Reminder{
			Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR, Id: "counselor-1",
				Channel: interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP},
			Kind: interventionsv1.ReminderKind_REMINDER_KIND_REENGAGEMENT, Message: "Please call the family today.",
			RelatedResource: "clinics/north/referrals/r1"}}
	}
	before := time.Now()
	first, err := f.client.CreateReminder(f.worker, req())
	if err != nil {
		t.Fatal(err)
	}
	if due := first.GetDueTime().AsTime(); due.Before(before.Add(-time.Second)) || due.After(time.Now().Add(time.Second)) ||
		first.GetState() != interventionsv1.ReminderState_REMINDER_STATE_DUE {
		t.Fatalf("created without a due time: due %v, state %v; want due now", due, first.GetState())
	}
	time.Sleep(10 * time.Millisecond)
	again, err := f.client.CreateReminder(f.worker, req())
	if err != nil || again.GetName() != first.GetName() || !again.GetDueTime().AsTime().Equal(first.GetDueTime().AsTime()) {
		t.Fatalf("retry = %v, %v; want the first reminder %s", again, err, first.GetName())
	}
	// The same id with a due time of its own is another request.
	moved := req()
	moved.Reminder.DueTime = timestamppb.Now()
	_, err = f.client.CreateReminder(f.worker, moved)
	wantCode(t, err, codes.InvalidArgument)
}

// A draft may follow an earlier intervention of its own family, not of
// another: the next meeting is found by it, and its notes carried over.
func TestPreviousInterventionIsOfTheSameFamily(t *testing.T) {
	t.Parallel()
	f := setup(t)
	first := f.draft(t, f.clock.Now().Add(24*time.Hour))
	create := func(family string) error {
		_, err := f.client.CreateIntervention(f.ctx, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north",
			Intervention: &interventionsv1.Intervention{Family: family, Counselor: "counselor-1", PreviousIntervention: first.GetName()}})
		return err
	}
	if err := create(f.family.GetName()); err != nil {
		t.Fatalf("a draft after the family's own meeting: %v", err)
	}
	other, err := f.families.CreateFamily(f.ctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/north",
		Family: &familiesv1.Family{LovedOne: &familiesv1.LovedOne{GivenName: "Lee"}, Counselor: "counselor-1"}})
	if err != nil {
		t.Fatal(err)
	}
	st := wantCode(t, create(other.GetName()), codes.InvalidArgument)
	if !strings.Contains(st.Message(), "previous_intervention") && !strings.Contains(fmt.Sprint(st.Details()), "previous_intervention") {
		t.Fatalf("refusal %v does not name previous_intervention", st)
	}
}

// A member who left the family after being named a participant does not
// block every other edit of the meeting; naming someone new who is not a
// member is still refused.
func TestParticipantWhoLeftDoesNotBlockEdits(t *testing.T) {
	t.Parallel()
	f := setup(t)
	iv, err := f.client.CreateIntervention(f.ctx, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north",
		Intervention: &interventionsv1.Intervention{Family: f.family.GetName(), Counselor: "counselor-1",
			Participants: []*interventionsv1.Participant{
				{MemberId: "mom", Role: interventionsv1.ParticipantRole_PARTICIPANT_ROLE_LEAD_SPEAKER},
				{MemberId: "bro", Role: interventionsv1.ParticipantRole_PARTICIPANT_ROLE_SUPPORT}}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.families.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{
		Family:     &familiesv1.Family{Name: f.family.GetName(), Members: f.family.GetMembers()[:1]},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"members"}}}); err != nil {
		t.Fatal(err)
	}
	place := &interventionsv1.Place{Kind: &interventionsv1.Place_Video{Video: &interventionsv1.VideoPlace{Link: "https://video.example/x"}}}
	if _, err := f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{
		Intervention: &interventionsv1.Intervention{Name: iv.GetName(), Place: place},
		UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"place"}}}); err != nil {
		t.Fatalf("changing the place of a meeting whose participant left the family: %v", err)
	}
	_, err = f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{
		Intervention: &interventionsv1.Intervention{Name: iv.GetName(), Participants: append(iv.GetParticipants(),
			&interventionsv1.Participant{MemberId: "stranger", Role: interventionsv1.ParticipantRole_PARTICIPANT_ROLE_SUPPORT})},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"participants"}}})
	wantCode(t, err, codes.InvalidArgument)
}

// withdrawnAfterFirstRead is the families service as the interventions
// service sees it while a member withdraws consent: the first read of the
// family has mom reachable, every later one not.
type withdrawnAfterFirstRead struct {
	familiesv1.FamiliesServiceClient
	reads atomic.Int32
	// blips is how many reads after the first find the service down.
	blips int32
	// regranted, once set, has the member reachable again.
	regranted atomic.Bool
	// removed takes the members off the family, instead of their
	// consent, after the first read.
	removed bool
	// second, if set, runs at the second read, before it answers.
	second func()
}

func (w *withdrawnAfterFirstRead) GetFamily(ctx context.Context, in *familiesv1.GetFamilyRequest, opts ...grpc.CallOption) (*familiesv1.Family, error) {
	fam, err := w.FamiliesServiceClient.GetFamily(ctx, in, opts...)
	n := w.reads.Add(1)
	if n == 2 && w.second != nil {
		w.second()
	}
	if n > 1 && n <= 1+w.blips {
		return nil, status.Error(codes.Unavailable, "families service restarting")
	}
	if err == nil && n > 1 && !w.regranted.Load() {
		for _, m := range fam.GetMembers() {
			m.ConsentToContact = false
		}
		if w.removed {
			fam.Members = nil
		}
	}
	return fam, err
}

// Consent withdrawn while a reminder is being made: the workflow that
// cancels the member's pending reminders may have listed them before this
// one was stored, so the service asks again after storing it and cancels
// it, answering CONTACT_NOT_ALLOWED as if it had been refused outright.
// A member removed meanwhile gets the same answer, on the first call as on
// its retries.
func TestReminderMadeAsContactIsWithdrawnIsCancelled(t *testing.T) {
	t.Parallel()
	for _, blips := range []int32{0, 2} {
		t.Run(fmt.Sprintf("%d failed reads", blips), func(t *testing.T) { reminderMadeAsContactIsWithdrawn(t, blips, false) })
	}
	t.Run("member removed", func(t *testing.T) { reminderMadeAsContactIsWithdrawn(t, 0, true) })
}

// reminderMadeAsContactIsWithdrawn runs the race with the families service
// failing blips reads after the first: it is asked again until it answers.
// With removed, the member leaves the family instead of withdrawing.
func reminderMadeAsContactIsWithdrawn(t *testing.T, blips int32, removed bool) {
	families := &withdrawnAfterFirstRead{blips: blips, removed: removed}
	f := setupWith(t, func(c familiesv1.FamiliesServiceClient) familiesv1.FamiliesServiceClient {
		families.FamiliesServiceClient = c
		return families
	})
	req := &interventionsv1.CreateReminderRequest{Parent: "clinics/north", RequestId: "withdrawn-1",
		Reminder: &interventionsv1.Reminder{Kind: interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN, Message: "How are you doing?",
			Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
				Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS}}}
	_, err := f.client.CreateReminder(f.worker, req)
	st := wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(fmt.Sprint(st.Details()), "CONTACT_NOT_ALLOWED") {
		t.Fatalf("refusal %v; want CONTACT_NOT_ALLOWED", st.Details())
	}
	// The caller, not having heard, tries again: it is refused again, not
	// handed the reminder as first stored, and nothing new is made.
	_, err = f.client.CreateReminder(f.worker, req)
	st = wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(fmt.Sprint(st.Details()), "CONTACT_NOT_ALLOWED") {
		t.Fatalf("refusal of the retry %v; want CONTACT_NOT_ALLOWED", st.Details())
	}
	// Consent given again does not revive the cancelled reminder: a retry
	// is still refused, not told the reminder stands.
	families.regranted.Store(true)
	_, err = f.client.CreateReminder(f.worker, req)
	st = wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(fmt.Sprint(st.Details()), "CONTACT_NOT_ALLOWED") {
		t.Fatalf("refusal of the retry after consent came back %v; want CONTACT_NOT_ALLOWED", st.Details())
	}
	list, err := f.client.ListReminders(f.env.As("north", "admin-1", auth.RoleClinicAdmin), &interventionsv1.ListRemindersRequest{Parent: "clinics/north"})
	if err != nil || len(list.GetReminders()) != 1 || list.GetReminders()[0].GetState() != interventionsv1.ReminderState_REMINDER_STATE_CANCELLED {
		t.Fatalf("reminders after the withdrawal: %v, %v; want the one made, cancelled", list.GetReminders(), err)
	}
}

// A reminder made as contact was withdrawn, which the withdrawal's own
// workflow cancelled before the call could: the reminder was made, and the
// call and its retry both answer with it.
func TestReminderCancelledByTheWithdrawalMeanwhile(t *testing.T) {
	t.Parallel()
	families := &withdrawnAfterFirstRead{}
	f := setupWith(t, func(c familiesv1.FamiliesServiceClient) familiesv1.FamiliesServiceClient {
		families.FamiliesServiceClient = c
		return families
	})
	families.second = func() {
		list, err := f.client.ListReminders(f.env.As("north", "admin-1", auth.RoleClinicAdmin), &interventionsv1.ListRemindersRequest{Parent: "clinics/north"})
		if err != nil {
			t.Error(err)
			return
		}
		for _, r := range list.GetReminders() {
			if _, err := f.client.CancelReminder(f.worker, &interventionsv1.CancelReminderRequest{Name: r.GetName(), Reason: "contact withdrawn"}); err != nil {
				t.Error(err)
			}
		}
	}
	req := &interventionsv1.CreateReminderRequest{Parent: "clinics/north", RequestId: "withdrawn-2",
		Reminder: &interventionsv1.Reminder{Kind: interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN, Message: "How are you doing?",
			Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
				Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS}}}
	first, err := f.client.CreateReminder(f.worker, req)
	if err != nil || first.GetName() == "" {
		t.Fatalf("the call: %v, %v; want the reminder made", first, err)
	}
	again, err := f.client.CreateReminder(f.worker, req)
	if err != nil || again.GetName() != first.GetName() {
		t.Fatalf("its retry: %v, %v; want the same answer, %s", again.GetName(), err, first.GetName())
	}
	if got, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: first.GetName()}); err != nil ||
		got.GetState() != interventionsv1.ReminderState_REMINDER_STATE_CANCELLED || got.GetCancelReason() != "contact withdrawn" {
		t.Fatalf("the reminder: %v, %v; want cancelled by the withdrawal", got, err)
	}
}

// A check-in answered by its reminder's due time takes the number of that
// reminder among the intervention's CHECK_IN reminders (a failed one's
// resend standing for it), so answering out of order neither takes
// another's number nor is refused as answered.
func TestCheckInsAnsweredOutOfOrder(t *testing.T) {
	t.Parallel()
	f := setup(t)
	iv := f.declined(t)
	now := f.clock.Now().UTC().Truncate(time.Second)
	due := map[string]time.Time{"1": now.Add(24 * time.Hour), "2": now.Add(7 * 24 * time.Hour),
		"2 resent": now.Add(7*24*time.Hour + time.Hour), "3": now.Add(30 * 24 * time.Hour)}
	names := map[string]string{}
	// Made in the order of their due times, as the workflow makes them:
	// a resend after the reminder it sends again.
	for _, k := range []string{"1", "2", "2 resent", "3"} {
		d := due[k]
		rem, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
			Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR, Id: "counselor-1",
				Channel: interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP},
			Kind: interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN, RelatedResource: iv.GetName(), DueTime: timestamppb.New(d),
			Message: "Check in with the family and record what they tell you."}})
		if err != nil {
			t.Fatal(err)
		}
		names[k] = rem.GetName()
	}
	// The first reminder of check-in 2 failed; its resend stands for it.
	if _, err := f.pool.Exec(context.Background(), `UPDATE reminders SET state = $1 WHERE id = $2`,
		int16(interventionsv1.ReminderState_REMINDER_STATE_FAILED), names["2"][strings.LastIndex(names["2"], "/")+1:]); err != nil {
		t.Fatal(err)
	}
	byDue := func(d time.Time) (*interventionsv1.CheckIn, error) {
		return f.client.RecordCheckIn(f.ctx, &interventionsv1.RecordCheckInRequest{Name: iv.GetName(),
			CheckIn: &interventionsv1.RecordCheckInRequest_DueTime{DueTime: timestamppb.New(d)}})
	}
	if ci, err := f.client.RecordCheckIn(f.ctx, &interventionsv1.RecordCheckInRequest{Name: iv.GetName(),
		CheckIn: &interventionsv1.RecordCheckInRequest_Number{Number: 2}}); err != nil || ci.GetNumber() != 2 {
		t.Fatalf("check-in 2 by number: %v, %v", ci, err)
	}
	if ci, err := byDue(due["1"]); err != nil || ci.GetNumber() != 1 {
		t.Fatalf("check-in 1 by due time, after 2: %v, %v; want number 1", ci, err)
	}
	_, err := byDue(due["2 resent"])
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != "ALREADY_RECORDED" {
		t.Fatalf("check-in 2 again, by its resend's due time: %v", err)
	}
	if ci, err := byDue(due["3"]); err != nil || ci.GetNumber() != 3 {
		t.Fatalf("check-in 3 by due time: %v, %v; want number 3", ci, err)
	}
	// A due time no reminder has, or a number past the reminders, names
	// no check-in: stored, it would take the number of one still to come
	// and have that one's real answer refused.
	_, err = byDue(now.Add(365 * 24 * time.Hour))
	if st := wantCode(t, err, codes.InvalidArgument); fieldOf(st) != "due_time" {
		t.Fatalf("violation on %q, want due_time", fieldOf(st))
	}
	_, err = f.client.RecordCheckIn(f.ctx, &interventionsv1.RecordCheckInRequest{Name: iv.GetName(),
		CheckIn: &interventionsv1.RecordCheckInRequest_Number{Number: 4}})
	if st := wantCode(t, err, codes.InvalidArgument); fieldOf(st) != "number" {
		t.Fatalf("violation on %q, want number", fieldOf(st))
	}
	got, err := f.client.GetIntervention(f.ctx, &interventionsv1.GetInterventionRequest{Name: iv.GetName()})
	if err != nil || len(got.GetCheckIns()) != 3 {
		t.Fatalf("after the refused answers: %d check-ins, %v; want 3", len(got.GetCheckIns()), err)
	}
}

// A mask that clears a field the proto requires (the address, with no
// place in the body) is refused on that field, as sending it empty is, and
// the meeting keeps its address.
func TestUpdateCannotClearARequiredPlaceField(t *testing.T) {
	t.Parallel()
	f := setup(t)
	iv := f.draft(t, f.clock.Now().Add(24*time.Hour))
	for _, path := range []string{"place.in_person.address", "place.in_person", "place"} {
		_, err := f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{
			Intervention: &interventionsv1.Intervention{Name: iv.GetName()},
			UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{path}}})
		if path != "place.in_person.address" {
			// Clearing the place, whole or by its kind, is allowed: a draft
			// may not know it yet.
			if err != nil {
				t.Fatalf("clearing the place by %s: %v", path, err)
			}
			got, err := f.client.GetIntervention(f.ctx, &interventionsv1.GetInterventionRequest{Name: iv.GetName()})
			if err != nil || got.GetPlace() != nil {
				t.Fatalf("after clearing by %s the place is %v (%v)", path, got.GetPlace(), err)
			}
			iv = f.draft(t, f.clock.Now().Add(48*time.Hour))
			continue
		}
		st := wantCode(t, err, codes.InvalidArgument)
		var fields []string
		for _, d := range st.Details() {
			if br, ok := d.(*errdetails.BadRequest); ok {
				for _, v := range br.GetFieldViolations() {
					fields = append(fields, v.GetField())
				}
			}
		}
		if !slices.Contains(fields, "intervention.place.in_person.address") {
			t.Fatalf("%s: violations on %v; want intervention.place.in_person.address", path, fields)
		}
		got, err := f.client.GetIntervention(f.ctx, &interventionsv1.GetInterventionRequest{Name: iv.GetName()})
		if err != nil || got.GetPlace().GetInPerson().GetAddress() != "12 Elm St" {
			t.Fatalf("after the refusal the place is %v (%v)", got.GetPlace(), err)
		}
	}
	// A place stored without its address before this check (as such a
	// mask could leave it) does not block an edit that leaves it alone.
	if _, err := f.pool.Exec(context.Background(), `UPDATE interventions SET doc = jsonb_set(doc, '{place,in_person,address}', '""')
		WHERE id = $1`, iv.GetName()[strings.LastIndex(iv.GetName(), "/")+1:]); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{
		Intervention: &interventionsv1.Intervention{Name: iv.GetName(), Level: interventionsv1.EscalationLevel_ESCALATION_LEVEL_LEVEL_2},
		UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"level"}}}); err != nil {
		t.Fatalf("an edit of the level, with a stored place lacking its address: %v", err)
	}
}

// Taking someone off a scheduled meeting cancels their reminders of it in
// the same change; the counselor's stay.
func TestRemovedParticipantsRemindersAreCancelled(t *testing.T) {
	t.Parallel()
	f := setup(t)
	iv := f.draft(t, time.Now().Add(48*time.Hour))
	iv, err := f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{
		Intervention: &interventionsv1.Intervention{Name: iv.GetName(), Etag: iv.GetEtag(), Participants: []*interventionsv1.Participant{
			{MemberId: "mom", Role: interventionsv1.ParticipantRole_PARTICIPANT_ROLE_LEAD_SPEAKER},
			{MemberId: "bro", Role: interventionsv1.ParticipantRole_PARTICIPANT_ROLE_SUPPORT}}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"participants"}}})
	if err != nil {
		t.Fatal(err)
	}
	if iv, err = f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: iv.GetName()}); err != nil {
		t.Fatal(err)
	}
	remind := func(rc *interventionsv1.Recipient) *interventionsv1.Reminder {
		t.Helper()
		rem, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
			Recipient: rc, DueTime: timestamppb.New(time.Now().Add(time.Hour)), Kind: interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_UPCOMING,
			Message: "Reminder: family meeting the day after tomorrow.", RelatedResource: iv.GetName()}})
		if err != nil {
			t.Fatal(err)
		}
		return rem
	}
	mom := remind(&interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
		Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS})
	counselor := remind(&interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR, Id: "counselor-1",
		Channel: interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP})
	if _, err := f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{
		Intervention: &interventionsv1.Intervention{Name: iv.GetName(), Etag: iv.GetEtag(), Participants: []*interventionsv1.Participant{
			{MemberId: "bro", Role: interventionsv1.ParticipantRole_PARTICIPANT_ROLE_LEAD_SPEAKER}}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"participants"}}}); err != nil {
		t.Fatal(err)
	}
	for rem, want := range map[*interventionsv1.Reminder]interventionsv1.ReminderState{
		mom: interventionsv1.ReminderState_REMINDER_STATE_CANCELLED, counselor: interventionsv1.ReminderState_REMINDER_STATE_SCHEDULED} {
		got, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: rem.GetName()})
		if err != nil || got.GetState() != want {
			t.Fatalf("reminder to %s after the change: %v, %v; want %v", rem.GetRecipient().GetId(), got.GetState(), err, want)
		}
	}
	var n int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE event_type = $1 AND resource = $2`,
		"handoff.interventions.v1.reminder.cancelled", mom.GetName()).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d reminder.cancelled events, %v; want 1", n, err)
	}
	// A workflow yet to hear of the change makes her no new one.
	_, err = f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
		Recipient: mom.GetRecipient(), Kind: interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_UPCOMING,
		Message: "Reminder: family meeting the day after tomorrow.", RelatedResource: iv.GetName()}})
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != interventions.ReasonNotAParticipant {
		t.Fatalf("a reminder to someone taken off the meeting: %v; want %s", st.Message(), interventions.ReasonNotAParticipant)
	}
}

// The worker calls off drafts (a yes makes a proposed meeting moot), and a
// scheduled meeting only of a family whose case is closed or whose record
// was deleted: otherwise that is the counselor's call, and a leaked worker
// token must not call off every meeting.
func TestWorkerCancelsAScheduledMeetingOnlyOfAClosedFamily(t *testing.T) {
	t.Parallel()
	f := setup(t)
	cancel := func(iv *interventionsv1.Intervention, id string) (*interventionsv1.Intervention, error) {
		return f.client.CancelIntervention(f.worker, &interventionsv1.CancelInterventionRequest{Name: iv.GetName(),
			Reason: "The family's case was closed.", RequestId: id})
	}
	draft := f.draft(t, time.Now().Add(48*time.Hour))
	if got, err := cancel(draft, "w-draft"); err != nil || got.GetState() != interventionsv1.InterventionState_INTERVENTION_STATE_CANCELLED {
		t.Fatalf("the worker withdraws a draft: %v, %v", got.GetState(), err)
	}
	iv := f.scheduled(t, time.Now().Add(72*time.Hour))
	begun := f.scheduled(t, time.Now().Add(24*time.Hour))
	if _, err := cancel(iv, "w-open"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("the worker calls off a meeting of an open family: %v; want PermissionDenied", err)
	}
	if got, err := f.client.GetIntervention(f.ctx, &interventionsv1.GetInterventionRequest{Name: iv.GetName()}); err != nil ||
		got.GetState() != interventionsv1.InterventionState_INTERVENTION_STATE_SCHEDULED || got.GetEtag() != iv.GetEtag() {
		t.Fatalf("after the refusal: %v, %v; want it scheduled, unchanged", got.GetState(), err)
	}
	fam, err := f.families.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: f.family.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	fam.State = familiesv1.FamilyState_FAMILY_STATE_CLOSED
	if _, err := f.families.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: fam, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"state"}}}); err != nil {
		t.Fatal(err)
	}
	// A closed family's meeting that has begun stays, for its outcome:
	// refused as a move that cannot be made, which the FamilyClosed
	// workflow passes over.
	f.clock.Advance(25 * time.Hour)
	if _, err := cancel(begun, "w-begun"); reason(wantCode(t, err, codes.FailedPrecondition)) != apperr.ReasonInvalidTransition {
		t.Fatalf("the worker calls off a closed family's meeting that has begun: %v; want INVALID_STATE_TRANSITION", err)
	}
	if got, err := f.client.GetIntervention(f.ctx, &interventionsv1.GetInterventionRequest{Name: begun.GetName()}); err != nil ||
		got.GetState() != interventionsv1.InterventionState_INTERVENTION_STATE_SCHEDULED {
		t.Fatalf("after the refusal: %v, %v; want it scheduled", got.GetState(), err)
	}
	if got, err := cancel(iv, "w-closed"); err != nil || got.GetState() != interventionsv1.InterventionState_INTERVENTION_STATE_CANCELLED {
		t.Fatalf("the worker calls off a meeting of a closed family: %v, %v", got.GetState(), err)
	}
}

// Deleting a draft cancels the reminders about it (the counselor's of a
// proposed next step), which would name a meeting gone.
func TestDeletingADraftCancelsItsReminders(t *testing.T) {
	t.Parallel()
	f := setup(t)
	iv := f.draft(t, time.Now().Add(48*time.Hour))
	rem, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
		Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR, Id: "counselor-1",
			Channel: interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP},
		DueTime: timestamppb.New(time.Now().Add(time.Hour)), Kind: interventionsv1.ReminderKind_REMINDER_KIND_ESCALATION_PROPOSED,
		Message: "A next family meeting was proposed: please review it.", RelatedResource: iv.GetName()}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.DeleteIntervention(f.ctx, &interventionsv1.DeleteInterventionRequest{Name: iv.GetName()}); err != nil {
		t.Fatal(err)
	}
	got, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: rem.GetName()})
	if err != nil || got.GetState() != interventionsv1.ReminderState_REMINDER_STATE_CANCELLED {
		t.Fatalf("reminder of the deleted draft: %v, %v; want CANCELLED", got.GetState(), err)
	}
	// Its event keeps none of the draft's content (participants, place,
	// notes), which outlives the draft in the outbox.
	var b []byte
	if err := f.pool.QueryRow(context.Background(), `SELECT payload FROM outbox WHERE event_type = $1 AND resource = $2`,
		"handoff.interventions.v1.intervention.deleted", iv.GetName()).Scan(&b); err != nil {
		t.Fatal(err)
	}
	var a anypb.Any
	if err := proto.Unmarshal(b, &a); err != nil {
		t.Fatal(err)
	}
	gone, err := a.UnmarshalNew()
	want := &interventionsv1.Intervention{Name: iv.GetName(), Family: iv.GetFamily(), State: interventionsv1.InterventionState_INTERVENTION_STATE_DRAFT}
	if err != nil || !proto.Equal(gone, want) {
		t.Fatalf("the deleted event's payload: %v, %v; want %v alone", gone, err, want)
	}
}

// Recording the outcome stops the meeting's own reminders (of its outcome
// overdue, say) in its transaction, as a cancel does, and a workflow yet
// to hear of it makes no new one; reminders of what follows the meeting
// are left alone.
func TestOutcomeEndsTheMeetingsReminders(t *testing.T) {
	t.Parallel()
	f := setup(t)
	iv := f.scheduled(t, f.clock.Now().Add(48*time.Hour))
	f.clock.Advance(73 * time.Hour)
	remind := func(kind interventionsv1.ReminderKind) (*interventionsv1.Reminder, error) {
		return f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
			Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR, Id: "counselor-1",
				Channel: interventionsv1.ChannelKind_CHANNEL_KIND_EMAIL},
			Kind: kind, Message: "A family meeting has had no outcome recorded for a day.", RelatedResource: iv.GetName()}})
	}
	overdue, err := remind(interventionsv1.ReminderKind_REMINDER_KIND_OUTCOME_OVERDUE)
	if err != nil {
		t.Fatal(err)
	}
	later, err := remind(interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.RecordOutcome(f.ctx, &interventionsv1.RecordOutcomeRequest{Name: iv.GetName(),
		Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_DECLINED}); err != nil {
		t.Fatal(err)
	}
	for rem, want := range map[*interventionsv1.Reminder]interventionsv1.ReminderState{
		overdue: interventionsv1.ReminderState_REMINDER_STATE_CANCELLED, later: interventionsv1.ReminderState_REMINDER_STATE_DUE} {
		got, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: rem.GetName()})
		if err != nil || got.GetState() != want {
			t.Fatalf("%v reminder after the outcome: %v, %v; want %v", rem.GetKind(), got.GetState(), err, want)
		}
	}
	_, err = remind(interventionsv1.ReminderKind_REMINDER_KIND_OUTCOME_ESCALATION)
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != interventions.ReasonMeetingNotScheduled {
		t.Fatalf("an escalation of a meeting with its outcome: %v; want %s", st.Message(), interventions.ReasonMeetingNotScheduled)
	}
}

// A meeting handed to another counselor stops the first counselor's
// reminders of it coming up in the same transaction, and a workflow yet to
// hear of it makes them no new one; the new counselor gets theirs.
func TestHandingAMeetingOverEndsTheFirstCounselorsReminders(t *testing.T) {
	t.Parallel()
	f := setup(t)
	iv := f.scheduled(t, f.clock.Now().Add(48*time.Hour))
	remind := func(counselor string) (*interventionsv1.Reminder, error) {
		return f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
			Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR, Id: counselor,
				Channel: interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP},
			Kind: interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_UPCOMING, Message: "You lead a family meeting on Monday.",
			RelatedResource: iv.GetName()}})
	}
	first, err := remind("counselor-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{
		Intervention: &interventionsv1.Intervention{Name: iv.GetName(), Counselor: "counselor-2"},
		UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"counselor"}}}); err != nil {
		t.Fatal(err)
	}
	got, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: first.GetName()})
	if err != nil || got.GetState() != interventionsv1.ReminderState_REMINDER_STATE_CANCELLED {
		t.Fatalf("the first counselor's reminder after the handover: %v, %v; want CANCELLED", got.GetState(), err)
	}
	_, err = remind("counselor-1")
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != interventions.ReasonNotAParticipant {
		t.Fatalf("a reminder to the first counselor after the handover: %v; want %s", st.Message(), interventions.ReasonNotAParticipant)
	}
	if _, err := remind("counselor-2"); err != nil {
		t.Fatalf("a reminder to the new counselor: %v", err)
	}
	// An overdue outcome stays the first counselor's to record: the
	// workflow may still tell them so.
	if _, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
		Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR, Id: "counselor-1",
			Channel: interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP},
		Kind: interventionsv1.ReminderKind_REMINDER_KIND_OUTCOME_OVERDUE, Message: "A family meeting has had no outcome recorded for a day.",
		RelatedResource: iv.GetName()}}); err != nil {
		t.Fatalf("an overdue outcome to the first counselor: %v", err)
	}
}

// Member ids are unique within a family only: a reminder about one
// family's meeting, or any reminder about its intervention, to another
// family's "mom" is refused.
func TestReminderAboutAnInterventionStaysInItsFamily(t *testing.T) {
	t.Parallel()
	f := setup(t)
	other, err := f.families.CreateFamily(f.ctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: &familiesv1.Family{
		LovedOne: &familiesv1.LovedOne{GivenName: "Kim"}, Counselor: "counselor-1",
		Members: []*familiesv1.Member{{Id: "mom", GivenName: "Rosa", Relationship: familiesv1.Relationship_RELATIONSHIP_PARENT, ConsentToContact: true,
			ContactChannels: []*familiesv1.ContactChannel{{Kind: familiesv1.ChannelKind_CHANNEL_KIND_SMS, Value: "+15555550199"}}}}}})
	if err != nil {
		t.Fatal(err)
	}
	iv := f.scheduled(t, f.clock.Now().Add(72*time.Hour))
	for _, kind := range []interventionsv1.ReminderKind{interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_UPCOMING,
		interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN} {
		req := &interventionsv1.CreateReminderRequest{Parent: "clinics/north", MeetingStartTime: iv.GetStartTime(), Reminder: &interventionsv1.Reminder{
			Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
				Family: other.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS},
			DueTime: timestamppb.New(f.clock.Now().Add(time.Hour)), Kind: kind,
			Message: "Reminder: family meeting soon.", RelatedResource: iv.GetName()}}
		before := digest(t, f.pool)
		_, err := f.client.CreateReminder(f.worker, req)
		if st := wantCode(t, err, codes.InvalidArgument); fieldOf(st) != "reminder.recipient.family" {
			t.Fatalf("%v to another family's mom: %v; want a violation on reminder.recipient.family", kind, err)
		}
		if digest(t, f.pool) != before {
			t.Fatalf("%v: the refused reminder changed the database", kind)
		}
		// The meeting's own family's mom is reminded.
		req.Reminder.Recipient.Family = f.family.GetName()
		if _, err := f.client.CreateReminder(f.worker, req); err != nil {
			t.Fatalf("%v to the family's own mom: %v", kind, err)
		}
	}
}

// An etag copied with its quotes, as an HTTP client keeps it, extends the
// claimant's lease as the bare one does.
func TestClaimTakesAQuotedEtag(t *testing.T) {
	t.Parallel()
	f := setup(t)
	auto := f.env.As("north", "app", auth.RoleReminders)
	dueNow := func() *interventionsv1.Reminder {
		t.Helper()
		rem, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
			Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR, Id: "counselor-1",
				Channel: interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP}, DueTime: timestamppb.New(f.clock.Now()),
			Kind: interventionsv1.ReminderKind_REMINDER_KIND_REENGAGEMENT, Message: "Please call the family today."}})
		if err != nil {
			t.Fatal(err)
		}
		return rem
	}
	rem := dueNow()
	claimed, err := f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: rem.GetName(), Claimant: "w1",
		LeaseDuration: durationpb.New(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	for _, quote := range []string{`"%s"`, `W/"%s"`} {
		etag := fmt.Sprintf(quote, claimed.GetEtag())
		got, err := f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: rem.GetName(), Claimant: "w1",
			LeaseDuration: durationpb.New(2 * time.Minute), Etag: etag})
		if err != nil {
			t.Fatalf("extending the lease with etag %s: %v", etag, err)
		}
		claimed = got
	}
	// Quotes around nothing name no version: refused, not read as no etag,
	// which would claim a due reminder whatever version it is at.
	for _, r := range []*interventionsv1.Reminder{claimed, dueNow()} {
		for _, etag := range []string{`""`, `W/""`} {
			_, err := f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: r.GetName(), Claimant: "w1",
				LeaseDuration: durationpb.New(time.Minute), Etag: etag})
			if status.Code(err) != codes.Aborted {
				t.Errorf("claim of %s with etag %s: %v, want ABORTED", r.GetName(), etag, err)
			}
		}
		if got, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: r.GetName()}); err != nil ||
			got.GetEtag() != r.GetEtag() {
			t.Errorf("after the refused claims: %v %v, want %s at %s", got.GetEtag(), err, r.GetName(), r.GetEtag())
		}
	}
}

// Deleting a draft forgets the stored answers that copy it: a retried
// create does not get the deleted draft back.
func TestDeletedDraftIsNotReturnedToARetry(t *testing.T) {
	t.Parallel()
	f := setup(t)
	req := &interventionsv1.CreateInterventionRequest{Parent: "clinics/north", RequestId: "draft-1", Intervention: &interventionsv1.Intervention{
		Family: f.family.GetName(), Counselor: "counselor-1", StartTime: timestamppb.New(f.clock.Now().Add(72 * time.Hour)),
		ExpectedDuration: durationpb.New(time.Hour), TimeZone: "America/Chicago",
		Place:        &interventionsv1.Place{Kind: &interventionsv1.Place_Video{Video: &interventionsv1.VideoPlace{Link: "https://video.example/x"}}},
		Participants: []*interventionsv1.Participant{{MemberId: "mom", Role: interventionsv1.ParticipantRole_PARTICIPANT_ROLE_LEAD_SPEAKER}}}}
	iv, err := f.client.CreateIntervention(f.ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.DeleteIntervention(f.ctx, &interventionsv1.DeleteInterventionRequest{Name: iv.GetName()}); err != nil {
		t.Fatal(err)
	}
	got, err := f.client.CreateIntervention(f.ctx, req)
	if err == nil && len(got.GetParticipants()) > 0 {
		t.Fatalf("a retry after the delete got the deleted draft back: %v", got)
	}
	if err == nil {
		if _, gerr := f.client.GetIntervention(f.ctx, &interventionsv1.GetInterventionRequest{Name: got.GetName()}); gerr == nil {
			t.Fatalf("a retry after the delete made the draft again: %v", got)
		}
	}
}

// A claim refused for quiet hours leaves a reminder whose lease ran out
// only just to its claimant, who may have sent it and is about to report
// it; one whose lease ran out long before is failed, for its workflow to
// send again after the quiet hours.
func TestQuietHoursClaimLeavesAJustLapsedClaimToItsClaimant(t *testing.T) {
	t.Parallel()
	f := setup(t)
	auto := f.env.As("north", "sms-gateway", auth.RoleReminders)
	for _, c := range []struct {
		lapsed time.Duration
		want   interventionsv1.ReminderState
	}{
		{time.Minute, interventionsv1.ReminderState_REMINDER_STATE_DELIVERED},
		{10 * time.Minute, interventionsv1.ReminderState_REMINDER_STATE_FAILED},
	} {
		now := f.clock.Now()
		rem, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
			Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
				Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS},
			DueTime: timestamppb.New(now), SendByTime: timestamppb.New(now.Add(30 * time.Second)), Kind: interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN,
			Message: "Your counselor will check in with you soon.", RelatedResource: f.family.GetName()}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: rem.GetName(), Claimant: "w1",
			LeaseDuration: durationpb.New(10 * time.Second)}); err != nil {
			t.Fatal(err)
		}
		f.clock.Advance(10*time.Second + c.lapsed) // past the lease and the send-by time
		_, err = f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: rem.GetName(), Claimant: "w2",
			LeaseDuration: durationpb.New(time.Minute)})
		st := wantCode(t, err, codes.FailedPrecondition)
		if reason(st) != "QUIET_HOURS" {
			t.Fatalf("lapsed %v: a claim past send-by: reason %q", c.lapsed, reason(st))
		}
		// The refusal says what became of it: failed, or left to the
		// claimant whose lease ran out a moment ago.
		if awaited := strings.Contains(st.Message(), "may still report"); awaited != (c.want == interventionsv1.ReminderState_REMINDER_STATE_DELIVERED) {
			t.Fatalf("lapsed %v: refusal %q; a report awaited: %v", c.lapsed, st.Message(), !awaited)
		}
		// The first claimant reports that it sent it.
		done, err := f.client.CompleteReminder(auto, &interventionsv1.CompleteReminderRequest{Name: rem.GetName(), Claimant: "w1",
			Result: interventionsv1.DeliveryResult_DELIVERY_RESULT_DELIVERED})
		got, gerr := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: rem.GetName()})
		if gerr != nil || got.GetState() != c.want {
			t.Fatalf("lapsed %v: after the report (%v, %v) the reminder is %v, %v; want %v", c.lapsed, done.GetState(), err, got.GetState(), gerr, c.want)
		}
	}
}

// An update of a cancelled intervention is refused for its state, whatever
// the edit: not for a field of the edit, and not after asking the families
// service about a family that may be gone.
func TestUpdateOfACancelledInterventionIsRefusedForItsState(t *testing.T) {
	t.Parallel()
	f := setup(t)
	iv := f.draft(t, f.clock.Now().Add(24*time.Hour))
	if _, err := f.client.CancelIntervention(f.ctx, &interventionsv1.CancelInterventionRequest{Name: iv.GetName(), Reason: "family moved"}); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"place.in_person.address", "carried_over_notes"} {
		_, err := f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{
			Intervention: &interventionsv1.Intervention{Name: iv.GetName(), CarriedOverNotes: "x"},
			UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{path}}})
		if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != "INVALID_STATE_TRANSITION" {
			t.Fatalf("update of %s: reason %q", path, reason(st))
		}
	}
}

// The workflow's notice that a meeting is called off is taken once the
// meeting is cancelled (its cancel withdrew every reminder about it), as
// the meeting's own reminders no longer are.
func TestACalledOffNoticeIsTakenForACancelledMeeting(t *testing.T) {
	t.Parallel()
	f := setup(t)
	iv := f.scheduled(t, f.clock.Now().Add(48*time.Hour))
	if _, err := f.client.CancelIntervention(f.ctx, &interventionsv1.CancelInterventionRequest{Name: iv.GetName(), Reason: "family moved"}); err != nil {
		t.Fatal(err)
	}
	create := func(kind interventionsv1.ReminderKind) (*interventionsv1.Reminder, error) {
		return f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
			Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
				Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS},
			Kind: kind, RelatedResource: iv.GetName(), Message: "The family meeting is called off."}})
	}
	if rem, err := create(interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_CANCELLED); err != nil ||
		rem.GetState() == interventionsv1.ReminderState_REMINDER_STATE_CANCELLED {
		t.Fatalf("the called-off notice: %v, %v; want it made, to go out", rem, err)
	}
	if _, err := create(interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_UPCOMING); err == nil {
		t.Fatal("a reminder that the cancelled meeting is coming up was made")
	}
	// Not to a member of the family who does not take part (taken off the
	// meeting before it was called off), nor of a meeting not called off.
	iv = f.scheduled(t, f.clock.Now().Add(72*time.Hour))
	if _, err := f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{Intervention: &interventionsv1.Intervention{
		Name: iv.GetName(), Participants: []*interventionsv1.Participant{{MemberId: "bro", Role: interventionsv1.ParticipantRole_PARTICIPANT_ROLE_LEAD_SPEAKER}}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"participants"}}}); err != nil {
		t.Fatal(err)
	}
	if st := wantCode(t, errOf(create(interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_CANCELLED)), codes.FailedPrecondition); reason(st) != "MEETING_NOT_CANCELLED" {
		t.Fatalf("the notice of a meeting still scheduled: %v; want MEETING_NOT_CANCELLED", st)
	}
	if _, err := f.client.CancelIntervention(f.ctx, &interventionsv1.CancelInterventionRequest{Name: iv.GetName(), Reason: "family moved"}); err != nil {
		t.Fatal(err)
	}
	if st := wantCode(t, errOf(create(interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_CANCELLED)), codes.FailedPrecondition); reason(st) != "NOT_A_PARTICIPANT" {
		t.Fatalf("the notice to mom, taken off the meeting: %v; want NOT_A_PARTICIPANT", st)
	}
}

// errOf is the error of a call's two results.
func errOf[T any](_ T, err error) error { return err }

// heldNowhere is a referrals service that knows no hold but converted,
// one whose place became a referral.
type heldNowhere struct {
	referralsv1.ReferralsServiceClient
}

func (heldNowhere) GetHold(_ context.Context, in *referralsv1.GetHoldRequest, _ ...grpc.CallOption) (*referralsv1.Hold, error) {
	if strings.HasSuffix(in.GetName(), "/converted") {
		return &referralsv1.Hold{Name: in.GetName(), State: referralsv1.HoldState_HOLD_STATE_CONVERTED}, nil
	}
	return nil, status.Error(codes.NotFound, in.GetName()+" not found")
}

// A checklist update naming a hold, of an intervention that does not
// exist or is past its checklist, is told that, not what is wrong with
// the hold; one that can take it hears of the hold.
func TestChecklistHoldIsAskedAfterTheIntervention(t *testing.T) {
	t.Parallel()
	f := setupHolds(t, nil, heldNowhere{})
	mark := func(name, hold string) error {
		_, err := f.client.UpdateChecklistItem(f.ctx, &interventionsv1.UpdateChecklistItemRequest{Name: name,
			Kind: interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_TREATMENT_OPTION_HELD, Done: true, Hold: hold})
		return err
	}
	wantCode(t, mark("clinics/north/interventions/nowhere", "clinics/north/holds/unknown"), codes.NotFound)
	iv := f.draft(t, f.clock.Now().Add(24*time.Hour))
	if st := wantCode(t, mark(iv.GetName(), "clinics/north/holds/converted"), codes.InvalidArgument); fieldOf(st) != "hold" {
		t.Fatalf("a converted hold on a draft: %v; want the hold refused", st.Err())
	}
	if _, err := f.client.CancelIntervention(f.ctx, &interventionsv1.CancelInterventionRequest{Name: iv.GetName(), Reason: "family moved"}); err != nil {
		t.Fatal(err)
	}
	if st := wantCode(t, mark(iv.GetName(), "clinics/north/holds/converted"), codes.FailedPrecondition); reason(st) != "INVALID_STATE_TRANSITION" {
		t.Fatalf("a cancelled intervention's checklist: reason %q", reason(st))
	}
	// A stale etag is told first, hold or no hold, as the step tells it.
	for _, hold := range []string{"", "clinics/north/holds/converted"} {
		_, err := f.client.UpdateChecklistItem(f.ctx, &interventionsv1.UpdateChecklistItemRequest{Name: iv.GetName(), Etag: iv.GetEtag(),
			Kind: interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_TREATMENT_OPTION_HELD, Hold: hold})
		if st := status.Convert(err); reason(st) != "ETAG_MISMATCH" {
			t.Fatalf("a stale etag, hold %q: %v; want ETAG_MISMATCH", hold, err)
		}
	}
}

// holdsListed is a referrals service whose live holds are one per
// intervention, named for-{intervention id}, of the family it holds.
type holdsListed struct {
	heldNowhere
	family *atomic.Value // string
}

func (h holdsListed) ListHolds(_ context.Context, in *referralsv1.ListHoldsRequest, _ ...grpc.CallOption) (*referralsv1.ListHoldsResponse, error) {
	rest, ok := strings.CutPrefix(in.GetFilter(), "intervention = ")
	iv, err := strconv.QuotedPrefix(rest)
	if !ok || err != nil || !strings.HasSuffix(in.GetFilter(), " AND state = HELD") {
		return nil, status.Errorf(codes.InvalidArgument, "unexpected filter %q", in.GetFilter())
	}
	iv, _ = strconv.Unquote(iv)
	return &referralsv1.ListHoldsResponse{Holds: []*referralsv1.Hold{
		{Name: "clinics/north/holds/for-" + path.Base(iv), Intervention: iv, Family: h.family.Load().(string), State: referralsv1.HoldState_HOLD_STATE_HELD,
			WorkflowHeld: true},
		{Name: "clinics/north/holds/by-hand-" + path.Base(iv), Intervention: iv, Family: h.family.Load().(string), State: referralsv1.HoldState_HOLD_STATE_HELD}}}, nil
}

// GetHold answers for the holds ListHolds lists, as the counselor reads
// them.
func (h holdsListed) GetHold(ctx context.Context, in *referralsv1.GetHoldRequest, opts ...grpc.CallOption) (*referralsv1.Hold, error) {
	iv := "clinics/north/interventions/"
	if rest, ok := strings.CutPrefix(path.Base(in.GetName()), "by-hand-"); ok {
		iv += rest
	} else if rest, ok := strings.CutPrefix(path.Base(in.GetName()), "for-"); ok {
		iv += rest
	} else {
		return h.heldNowhere.GetHold(ctx, in, opts...)
	}
	list, err := h.ListHolds(ctx, &referralsv1.ListHoldsRequest{Filter: fmt.Sprintf("intervention = %q AND state = HELD", iv)})
	if err != nil {
		return nil, err
	}
	for _, held := range list.GetHolds() {
		if held.GetName() == in.GetName() {
			return held, nil
		}
	}
	return nil, status.Error(codes.NotFound, in.GetName()+" not found")
}

// convertedMeanwhile is holdsListed whose first listing lets meanwhile
// run, and then finds no live hold: the run of meanwhile took it on.
type convertedMeanwhile struct {
	holdsListed
	mu        sync.Mutex
	listed    int
	meanwhile func()
}

func (h *convertedMeanwhile) ListHolds(ctx context.Context, in *referralsv1.ListHoldsRequest, opts ...grpc.CallOption) (*referralsv1.ListHoldsResponse, error) {
	h.mu.Lock()
	h.listed++
	first := h.listed == 1
	h.mu.Unlock()
	if first {
		h.meanwhile()
		return &referralsv1.ListHoldsResponse{}, nil
	}
	return h.holdsListed.ListHolds(ctx, in, opts...)
}

// A tick retried as its first call ends gets that call's answer, not a
// refusal for what the first call (and the intake after it) changed since
// the retry looked for an answer: the etag, and the hold now converted.
func TestChecklistTickRetriedAsTheFirstEndsGetsItsAnswer(t *testing.T) {
	t.Parallel()
	holds := &convertedMeanwhile{holdsListed: holdsListed{family: &atomic.Value{}}}
	f := setupHolds(t, nil, holds)
	holds.family.Store(f.family.GetName())
	iv := f.draft(t, f.clock.Now().Add(72*time.Hour))
	tick := &interventionsv1.UpdateChecklistItemRequest{Name: iv.GetName(), Etag: iv.GetEtag(), RequestId: "tick-1",
		Kind: interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_TREATMENT_OPTION_HELD, Done: true,
		Hold: "clinics/north/holds/for-" + path.Base(iv.GetName())}
	var first *interventionsv1.Intervention
	holds.meanwhile = func() {
		var err error
		if first, err = f.client.UpdateChecklistItem(f.worker, tick); err != nil {
			t.Errorf("the first call: %v", err)
		}
	}
	retry, err := f.client.UpdateChecklistItem(f.worker, tick)
	if err != nil {
		t.Fatalf("the retry as the first call ended: %v; want the first call's answer", err)
	}
	if first == nil || retry.GetEtag() != first.GetEtag() {
		t.Errorf("the retry answered etag %q; want the first call's %q", retry.GetEtag(), first.GetEtag())
	}
}

// The worker ticks the place it held on the checklist and nothing else,
// and only with a hold that keeps a place for that intervention: it may
// not read holds by name, so the service finds the hold among the
// intervention's live ones. Before, the worker's tick was not checked at
// all, and it could mark any item done or undone.
func TestWorkerTicksOnlyTheHoldItMade(t *testing.T) {
	t.Parallel()
	family := &atomic.Value{}
	f := setupHolds(t, nil, holdsListed{family: family})
	family.Store(f.family.GetName())
	iv := f.draft(t, f.clock.Now().Add(72*time.Hour))
	before := digest(t, f.pool)
	tick := func(kind interventionsv1.ChecklistItemKind, done bool, hold string) (*interventionsv1.Intervention, error) {
		return f.client.UpdateChecklistItem(f.worker, &interventionsv1.UpdateChecklistItemRequest{Name: iv.GetName(), Kind: kind, Done: done, Hold: hold})
	}
	held := interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_TREATMENT_OPTION_HELD
	_, err := tick(interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_SAFETY_SCREEN_CURRENT, true, "")
	wantCode(t, err, codes.PermissionDenied)
	_, err = tick(held, false, "")
	wantCode(t, err, codes.PermissionDenied)
	_, err = tick(held, true, "clinics/north/holds/for-another")
	if st := wantCode(t, err, codes.InvalidArgument); fieldOf(st) != "hold" {
		t.Fatalf("a hold kept for another intervention: %v; want the hold refused", err)
	}
	if after := digest(t, f.pool); after != before {
		t.Fatal("a refused tick changed the interventions' data")
	}
	mine := "clinics/north/holds/for-" + path.Base(iv.GetName())
	got, err := tick(held, true, mine)
	if err != nil {
		t.Fatalf("the worker ticking the hold it made: %v", err)
	}
	i := slices.IndexFunc(got.GetChecklist(), func(it *interventionsv1.ChecklistItem) bool { return it.GetKind() == held })
	if i < 0 || got.GetChecklist()[i].GetHold() != mine || !got.GetChecklist()[i].GetDone() {
		t.Fatalf("checklist %v; want the hold ticked", got.GetChecklist())
	}
}

// A checklist item done before keeps when it was done: editing its note
// does not prepare it again. Undone and done again, it is done anew.
func TestChecklistItemKeepsWhenItWasDone(t *testing.T) {
	t.Parallel()
	f := setup(t)
	iv := f.draft(t, f.clock.Now().Add(72*time.Hour))
	mark := func(done bool, note string) *interventionsv1.ChecklistItem {
		t.Helper()
		got, err := f.client.UpdateChecklistItem(f.ctx, &interventionsv1.UpdateChecklistItemRequest{Name: iv.GetName(),
			Kind: interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_QUIET_PRIVATE_PLACE, Done: done, Note: note})
		if err != nil {
			t.Fatal(err)
		}
		return got.GetChecklist()[0]
	}
	first := mark(true, "living room")
	f.clock.Advance(time.Hour)
	edited := mark(true, "living room, Sunday afternoon")
	if !edited.GetDoneTime().AsTime().Equal(first.GetDoneTime().AsTime()) || edited.GetDoneBy() != first.GetDoneBy() || edited.GetNote() != "living room, Sunday afternoon" {
		t.Fatalf("after a note edit: %v; want the note changed and done as at %v", edited, first.GetDoneTime().AsTime())
	}
	if undone := mark(false, ""); undone.GetDoneTime() != nil || undone.GetDoneBy() != "" {
		t.Fatalf("undone: %v", undone)
	}
	if again := mark(true, "kitchen"); again.GetDoneTime().AsTime().Before(first.GetDoneTime().AsTime().Add(time.Hour)) {
		t.Fatalf("done again at %v, want now, an hour after it was first done (%v)", again.GetDoneTime().AsTime(), first.GetDoneTime().AsTime())
	}
}

// A meeting moved to another address keeps no confirmation that the old
// room was quiet and private, nor the checklist item that said so; other
// edits leave both.
func TestANewAddressIsConfirmedAgain(t *testing.T) {
	t.Parallel()
	f := setup(t)
	iv := f.draft(t, f.clock.Now().Add(72*time.Hour))
	if _, err := f.client.UpdateChecklistItem(f.ctx, &interventionsv1.UpdateChecklistItemRequest{Name: iv.GetName(),
		Kind: interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_QUIET_PRIVATE_PLACE, Done: true}); err != nil {
		t.Fatal(err)
	}
	update := func(iv *interventionsv1.Intervention, paths ...string) *interventionsv1.Intervention {
		t.Helper()
		got, err := f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{Intervention: iv,
			UpdateMask: &fieldmaskpb.FieldMask{Paths: paths}})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	quiet := func(iv *interventionsv1.Intervention) (bool, bool) {
		return iv.GetPlace().GetInPerson().GetQuietAndPrivateConfirmed(), iv.GetChecklist()[0].GetDone()
	}
	got := update(&interventionsv1.Intervention{Name: iv.GetName(), CarriedOverNotes: "bring the letters"}, "carried_over_notes")
	if confirmed, ticked := quiet(got); !confirmed || !ticked {
		t.Fatalf("after a notes edit: confirmed %v, ticked %v; want both kept", confirmed, ticked)
	}
	// The body's confirmation counts only where the mask names it.
	moved := &interventionsv1.Intervention{Name: iv.GetName(), Place: &interventionsv1.Place{Kind: &interventionsv1.Place_InPerson{
		InPerson: &interventionsv1.InPersonPlace{Address: "40 Oak Ave", QuietAndPrivateConfirmed: true}}}}
	got = update(moved, "place.in_person.address")
	if confirmed, ticked := quiet(got); confirmed || ticked || got.GetPlace().GetInPerson().GetAddress() != "40 Oak Ave" {
		t.Fatalf("after a move: %v, confirmed %v, ticked %v; want the new address, neither", got.GetPlace(), confirmed, ticked)
	}
	moved.GetPlace().GetInPerson().Address, moved.GetPlace().GetInPerson().QuietAndPrivateConfirmed = "7 Pine Rd", true
	got = update(moved, "place.in_person.address", "place.in_person.quiet_and_private_confirmed")
	if confirmed, _ := quiet(got); !confirmed {
		t.Fatalf("a move confirmed in the same request: %v", got.GetPlace())
	}
	// Another room at the same address is another place too.
	moved.GetPlace().GetInPerson().Room, moved.GetPlace().GetInPerson().QuietAndPrivateConfirmed = "the lobby", false
	got = update(moved, "place.in_person.room")
	if confirmed, _ := quiet(got); confirmed || got.GetPlace().GetInPerson().GetRoom() != "the lobby" {
		t.Fatalf("after a move to another room: %v; want it unconfirmed", got.GetPlace())
	}
}

// Someone who joins the meeting was not briefed: the checklist item that
// said everyone had is unticked; if they speak, or an observer comes to
// speak, so is the one that said each speaker wrote a statement. One who
// leaves takes nothing from the others', nor do other items change.
func TestANewParticipantIsBriefedAgain(t *testing.T) {
	t.Parallel()
	f := setup(t)
	iv := f.draft(t, f.clock.Now().Add(72*time.Hour))
	briefed, statements, points := interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_PARTICIPANTS_BRIEFED,
		interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_PERSONAL_STATEMENTS_WRITTEN,
		interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_TALKING_POINTS_REVIEWED
	tick := func() {
		t.Helper()
		for _, k := range []interventionsv1.ChecklistItemKind{briefed, statements, points} {
			if _, err := f.client.UpdateChecklistItem(f.ctx, &interventionsv1.UpdateChecklistItemRequest{Name: iv.GetName(), Kind: k, Done: true}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// with sets the participants: mom leading, and bro as role, or not at
	// all for UNSPECIFIED; it returns the checklist's ticks after.
	with := func(bro interventionsv1.ParticipantRole) map[interventionsv1.ChecklistItemKind]bool {
		t.Helper()
		next := &interventionsv1.Intervention{Name: iv.GetName(), Participants: []*interventionsv1.Participant{
			{MemberId: "mom", Role: interventionsv1.ParticipantRole_PARTICIPANT_ROLE_LEAD_SPEAKER}}}
		if bro != interventionsv1.ParticipantRole_PARTICIPANT_ROLE_UNSPECIFIED {
			next.Participants = append(next.Participants, &interventionsv1.Participant{MemberId: "bro", Role: bro})
		}
		got, err := f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{Intervention: next,
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"participants"}}})
		if err != nil {
			t.Fatal(err)
		}
		out := map[interventionsv1.ChecklistItemKind]bool{}
		for _, it := range got.GetChecklist() {
			out[it.GetKind()] = it.GetDone()
		}
		return out
	}
	for _, c := range []struct {
		name                        string
		bro                         interventionsv1.ParticipantRole
		briefed, statements, points bool
	}{
		{"bro joins to watch", interventionsv1.ParticipantRole_PARTICIPANT_ROLE_OBSERVER, false, true, true},
		{"bro comes to speak", interventionsv1.ParticipantRole_PARTICIPANT_ROLE_SUPPORT, true, false, true},
		{"bro leaves", interventionsv1.ParticipantRole_PARTICIPANT_ROLE_UNSPECIFIED, true, true, true},
		{"bro joins to speak", interventionsv1.ParticipantRole_PARTICIPANT_ROLE_SUPPORT, false, false, true},
	} {
		tick()
		got := with(c.bro)
		if got[briefed] != c.briefed || got[statements] != c.statements || got[points] != c.points {
			t.Fatalf("%s: %v; want briefed %v, statements %v, talking points %v", c.name, got, c.briefed, c.statements, c.points)
		}
	}
}

// Consent withdrawn after a reminder was made reaches it at its claim,
// whatever the ContactWithdrawn workflow has done yet: the claim is
// refused CONTACT_NOT_ALLOWED and the reminder cancelled, not sent. The
// automation reads of the family only who may be contacted; a families
// service that does not answer fails the claim, to be tried again.
func TestClaimChecksContactAgain(t *testing.T) {
	t.Parallel()
	down := &atomic.Bool{}
	f := setupWith(t, func(c familiesv1.FamiliesServiceClient) familiesv1.FamiliesServiceClient {
		return &failingFamilies{FamiliesServiceClient: c, down: down}
	})
	auto := f.env.As("north", "sms-gateway", auth.RoleReminders)
	remind := func() *interventionsv1.Reminder {
		return f.checkIn(t, "mom", interventionsv1.ChannelKind_CHANNEL_KIND_SMS)
	}
	first, second, sending := remind(), remind(), remind()
	// One is on its way when she withdraws: its claim said where to.
	claimed, err := f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: sending.GetName(), Claimant: "sms-2", LeaseDuration: durationpb.New(time.Minute)})
	if err != nil || claimed.GetAddress() != "+15555550100" {
		t.Fatalf("claim: %v, %v; want her number to send to", claimed, err)
	}
	// What the automation may read of the family: who may be contacted,
	// and where.
	seen, err := f.families.GetFamily(auto, &familiesv1.GetFamilyRequest{Name: f.family.GetName()})
	if err != nil {
		t.Fatalf("the automation reads who may be contacted: %v", err)
	}
	want := &familiesv1.Family{Name: f.family.GetName(), LovedOne: &familiesv1.LovedOne{},
		Members: []*familiesv1.Member{{Id: "mom", ConsentToContact: true,
			ContactChannels: []*familiesv1.ContactChannel{{Kind: familiesv1.ChannelKind_CHANNEL_KIND_SMS, Value: "+15555550100"}}}, {Id: "bro"}}}
	if !proto.Equal(seen, want) {
		t.Fatalf("the automation's view of the family:\n%v\nwant only\n%v", seen, want)
	}
	// Mom withdraws; no workflow runs here to cancel her reminders.
	f.withdrawMom(t)
	// The families service down: the claim fails, and nothing changes.
	down.Store(true)
	_, err = f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: second.GetName(), Claimant: "sms-1", LeaseDuration: durationpb.New(time.Minute)})
	wantCode(t, err, codes.Unavailable)
	down.Store(false)
	if got, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: second.GetName()}); err != nil || got.GetState() != interventionsv1.ReminderState_REMINDER_STATE_DUE {
		t.Fatalf("after a claim that could not check: %v, %v; want DUE", got.GetState(), err)
	}
	_, err = f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: first.GetName(), Claimant: "sms-1", LeaseDuration: durationpb.New(time.Minute)})
	st := wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(fmt.Sprint(st.Details()), "CONTACT_NOT_ALLOWED") {
		t.Fatalf("refusal %v; want CONTACT_NOT_ALLOWED", st.Details())
	}
	got, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: first.GetName()})
	if err != nil || got.GetState() != interventionsv1.ReminderState_REMINDER_STATE_CANCELLED || got.GetCancelReason() == "" {
		t.Fatalf("the reminder after its claim was refused: %v (%q), %v; want CANCELLED with its reason", got.GetState(), got.GetCancelReason(), err)
	}
	// The one on its way is neither extended nor taken over, nor
	// cancelled: its claimant reports what became of it.
	for _, c := range []struct{ claimant, etag string }{{"sms-2", claimed.GetEtag()}, {"sms-1", ""}} {
		_, err = f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: sending.GetName(), Claimant: c.claimant, Etag: c.etag,
			LeaseDuration: durationpb.New(time.Minute)})
		if st := wantCode(t, err, codes.FailedPrecondition); !strings.Contains(fmt.Sprint(st.Details()), "CONTACT_NOT_ALLOWED") {
			t.Fatalf("claim by %s of a reminder under a live lease: %v; want CONTACT_NOT_ALLOWED", c.claimant, st.Details())
		}
	}
	if _, err := f.client.CompleteReminder(auto, &interventionsv1.CompleteReminderRequest{Name: sending.GetName(), Claimant: "sms-2",
		Result: interventionsv1.DeliveryResult_DELIVERY_RESULT_DELIVERED}); err != nil {
		t.Fatalf("reporting the reminder that was on its way: %v", err)
	}
}

// A claim whose lease lapsed a moment ago may have been sent: a later
// claim that finds contact withdrawn leaves it to its claimant, whose
// report of the delivery still counts, rather than cancel it and record a
// message that went out as never sent. One lapsed past the grace is
// cancelled.
func TestWithdrawalLeavesAJustLapsedClaimToItsClaimant(t *testing.T) {
	t.Parallel()
	f := setup(t)
	auto := f.env.As("north", "sms-gateway", auth.RoleReminders)
	remind := func() *interventionsv1.Reminder {
		return f.checkIn(t, "mom", interventionsv1.ChannelKind_CHANNEL_KIND_SMS)
	}
	sent, forgotten := remind(), remind()
	for _, r := range []*interventionsv1.Reminder{sent, forgotten} {
		if _, err := f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: r.GetName(), Claimant: "sms-2", LeaseDuration: durationpb.New(time.Minute)}); err != nil {
			t.Fatal(err)
		}
	}
	f.withdrawMom(t)
	state := func(r *interventionsv1.Reminder) interventionsv1.ReminderState {
		t.Helper()
		got, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: r.GetName()})
		if err != nil {
			t.Fatal(err)
		}
		return got.GetState()
	}
	claim := func(r *interventionsv1.Reminder) {
		t.Helper()
		_, err := f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: r.GetName(), Claimant: "sms-1", LeaseDuration: durationpb.New(time.Minute)})
		if st := wantCode(t, err, codes.FailedPrecondition); !strings.Contains(fmt.Sprint(st.Details()), "CONTACT_NOT_ALLOWED") {
			t.Fatalf("claim of %s after the withdrawal: %v; want CONTACT_NOT_ALLOWED", r.GetName(), st.Details())
		}
	}
	f.clock.Advance(61 * time.Second) // both leases lapsed a moment ago
	claim(sent)
	if st := state(sent); st == interventionsv1.ReminderState_REMINDER_STATE_CANCELLED {
		t.Fatal("a reminder whose claim lapsed a second ago was cancelled: its claimant may have sent it")
	}
	if _, err := f.client.CompleteReminder(auto, &interventionsv1.CompleteReminderRequest{Name: sent.GetName(), Claimant: "sms-2",
		Result: interventionsv1.DeliveryResult_DELIVERY_RESULT_DELIVERED}); err != nil {
		t.Fatalf("the claimant's report of the delivery: %v", err)
	}
	f.clock.Advance(6 * time.Minute) // past the grace: no report is coming
	claim(forgotten)
	if st := state(forgotten); st != interventionsv1.ReminderState_REMINDER_STATE_CANCELLED {
		t.Fatalf("a claim lapsed past the grace, its recipient withdrawn: %v; want CANCELLED", st)
	}
}

// withdrawnAfterNextRead is the families service while a member withdraws
// consent just after the next read of the family: that read has her
// reachable, every one after it not (or, with down, none answered).
type withdrawnAfterNextRead struct {
	familiesv1.FamiliesServiceClient
	armed, withdrawn, down atomic.Bool
}

func (w *withdrawnAfterNextRead) GetFamily(ctx context.Context, in *familiesv1.GetFamilyRequest, opts ...grpc.CallOption) (*familiesv1.Family, error) {
	if w.down.Load() && w.withdrawn.Load() {
		return nil, status.Error(codes.Unavailable, "families service restarting")
	}
	fam, err := w.FamiliesServiceClient.GetFamily(ctx, in, opts...)
	if err == nil && w.withdrawn.Load() {
		for _, m := range fam.GetMembers() {
			m.ConsentToContact = false
		}
	}
	if w.armed.CompareAndSwap(true, false) {
		w.withdrawn.Store(true)
	}
	return fam, err
}

// Consent withdrawn between the claim's check and the claim itself: the
// service asks again once the claim is stored, cancels the reminder and
// refuses the claim, handing out no address; the claim's retry does not
// bring the lease back.
func TestClaimRacingAWithdrawalHandsOutNoAddress(t *testing.T) {
	t.Parallel()
	families := &withdrawnAfterNextRead{}
	f := setupWith(t, func(c familiesv1.FamiliesServiceClient) familiesv1.FamiliesServiceClient {
		families.FamiliesServiceClient = c
		return families
	})
	remind := func() *interventionsv1.Reminder {
		return f.checkIn(t, "mom", interventionsv1.ChannelKind_CHANNEL_KIND_SMS)
	}
	rem := remind()
	auto := f.env.As("north", "sms-gateway", auth.RoleReminders)
	families.armed.Store(true)
	req := &interventionsv1.ClaimReminderRequest{Name: rem.GetName(), Claimant: "sms-1", RequestId: "claim-1", LeaseDuration: durationpb.New(time.Minute)}
	got, err := f.client.ClaimReminder(auto, req)
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != "CONTACT_NOT_ALLOWED" || got.GetAddress() != "" {
		t.Fatalf("claim as she withdrew: %v, address %q; want CONTACT_NOT_ALLOWED and no address", err, got.GetAddress())
	}
	after, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: rem.GetName()})
	if err != nil || after.GetState() != interventionsv1.ReminderState_REMINDER_STATE_CANCELLED || after.GetCancelReason() == "" {
		t.Fatalf("the reminder: %v (%q), %v; want CANCELLED with its reason", after.GetState(), after.GetCancelReason(), err)
	}
	if _, err := f.client.ClaimReminder(auto, req); err == nil {
		t.Fatal("the claim's retry got the lease back")
	}

	// The claimant extending its own live lease as she withdraws has the
	// address already and may be sending: refused, but the reminder is
	// left for it to report, not cancelled.
	families.withdrawn.Store(false)
	second := remind()
	claimed, err := f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: second.GetName(), Claimant: "sms-1", LeaseDuration: durationpb.New(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	families.armed.Store(true)
	_, err = f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: second.GetName(), Claimant: "sms-1", Etag: claimed.GetEtag(),
		LeaseDuration: durationpb.New(time.Minute)})
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != "CONTACT_NOT_ALLOWED" {
		t.Fatalf("extension as she withdrew: %v; want CONTACT_NOT_ALLOWED", err)
	}
	if got, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: second.GetName()}); err != nil ||
		got.GetState() != interventionsv1.ReminderState_REMINDER_STATE_CLAIMED {
		t.Fatalf("the reminder on its way: %v, %v; want still CLAIMED, for its claimant to report", got.GetState(), err)
	}

	// The families service not answering the second time: no address.
	families.withdrawn.Store(false)
	families.down.Store(true)
	third := remind()
	families.armed.Store(true)
	got, err = f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: third.GetName(), Claimant: "sms-1", LeaseDuration: durationpb.New(time.Minute)})
	if code := status.Code(err); code != codes.Unavailable || got.GetAddress() != "" {
		t.Fatalf("claim checked again while the families service is down: %v, address %q; want UNAVAILABLE and no address", err, got.GetAddress())
	}
}

// A claim answers where to send: the address on the reminder's channel,
// read from the family at each claim (a retry under the claim's request id
// too), and kept nowhere else: not in the reminder, its event, or the
// stored answer. A channel the person no longer keeps gives no address.
func TestClaimSaysWhereToSend(t *testing.T) {
	t.Parallel()
	f := setup(t)
	auto := f.env.As("north", "sms-gateway", auth.RoleReminders)
	remind := func(ch interventionsv1.ChannelKind) *interventionsv1.Reminder { return f.checkIn(t, "mom", ch) }
	const number = "+15555550100"
	bySMS, byEmail := remind(interventionsv1.ChannelKind_CHANNEL_KIND_SMS), remind(interventionsv1.ChannelKind_CHANNEL_KIND_EMAIL)
	claim := &interventionsv1.ClaimReminderRequest{Name: bySMS.GetName(), Claimant: "sms-1", RequestId: "claim-sms-1", LeaseDuration: durationpb.New(time.Minute)}
	claimed, err := f.client.ClaimReminder(auto, claim)
	if err != nil || claimed.GetAddress() != number {
		t.Fatalf("claim: %v, %v; want the address %s", claimed, err, number)
	}
	// Her number changes while the claim's answer is lost: the retry
	// reads it anew.
	fam, err := f.families.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: f.family.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	const moved = "+15555550177"
	fam.Members[0].ContactChannels[0].Value = moved
	if _, err := f.families.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: fam, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"members"}}}); err != nil {
		t.Fatal(err)
	}
	again, err := f.client.ClaimReminder(auto, claim)
	if err != nil || again.GetAddress() != moved || again.GetEtag() != claimed.GetEtag() {
		t.Fatalf("retried claim: %v, %v; want the first claim's answer with the address %s", again, err, moved)
	}
	if got, err := f.client.GetReminder(auto, &interventionsv1.GetReminderRequest{Name: bySMS.GetName()}); err != nil || got.GetAddress() != "" {
		t.Fatalf("the reminder read back: %v, %v; want no address", got, err)
	}
	for q, arg := range map[string]string{`SELECT payload FROM outbox WHERE resource = $1`: bySMS.GetName(),
		`SELECT coalesce(response, '') FROM idempotency_keys WHERE request_id = $1`: claim.GetRequestId()} {
		rows, err := f.pool.Query(context.Background(), q, arg)
		if err != nil {
			t.Fatal(err)
		}
		stored, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
		if err != nil || len(stored) == 0 {
			t.Fatalf("%s: %d rows, %v", q, len(stored), err)
		}
		for _, b := range stored {
			if bytes.Contains(b, []byte(number)) || bytes.Contains(b, []byte(moved)) {
				t.Fatalf("%s: an address was kept: %q", q, b)
			}
		}
	}
	// She keeps no e-mail: claimed, with nothing to send to, the
	// automation reports it failed and its workflow sends it again.
	claimed, err = f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: byEmail.GetName(), Claimant: "sms-1", LeaseDuration: durationpb.New(time.Minute)})
	if err != nil || claimed.GetAddress() != "" {
		t.Fatalf("claim of a reminder by e-mail: %v, %v; want no address", claimed, err)
	}
}

// failingFamilies is the families service, answering UNAVAILABLE while
// down is set.
type failingFamilies struct {
	familiesv1.FamiliesServiceClient
	down *atomic.Bool
}

func (f *failingFamilies) GetFamily(ctx context.Context, in *familiesv1.GetFamilyRequest, opts ...grpc.CallOption) (*familiesv1.Family, error) {
	if f.down.Load() {
		return nil, status.Error(codes.Unavailable, "families service restarting")
	}
	return f.FamiliesServiceClient.GetFamily(ctx, in, opts...)
}

// boundary gives the fixture's family a boundary worded so, stating
// consequence, agreed and made active if active.
func (f *fixture) boundary(t *testing.T, wording, consequence string, active bool) {
	t.Helper()
	b, err := f.families.CreateBoundary(f.ctx, &familiesv1.CreateBoundaryRequest{Parent: f.family.GetName(), Boundary: &familiesv1.Boundary{
		Category: familiesv1.BoundaryCategory_BOUNDARY_CATEGORY_NO_FINANCIAL_SUPPORT, Wording: wording, Consequence: consequence}})
	if err != nil {
		t.Fatal(err)
	}
	if !active {
		return
	}
	if _, err := f.families.AgreeBoundary(f.ctx, &familiesv1.TransitionBoundaryRequest{Name: b.GetName()}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.families.ActivateBoundary(f.ctx, &familiesv1.TransitionBoundaryRequest{Name: b.GetName()}); err != nil {
		t.Fatal(err)
	}
}

// A claim of a meeting's reminder says when the meeting begins and ends,
// as it stands then (a meeting lengthened since the reminder was made
// shows its new end), so that the automation can send a calendar event;
// the times are stored nowhere, and a reminder of no meeting has none.
func TestClaimGivesTheMeetingsTimes(t *testing.T) {
	t.Parallel()
	f := setup(t)
	auto := f.env.As("north", "sms-gateway", auth.RoleReminders)
	iv := f.scheduled(t, f.clock.Now().Add(48*time.Hour))
	remind := func(kind interventionsv1.ReminderKind, related string) *interventionsv1.Reminder {
		t.Helper()
		rem, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
			Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
				Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_EMAIL},
			Kind: kind, Message: "Family meeting in two days.", RelatedResource: related}})
		if err != nil {
			t.Fatal(err)
		}
		return rem
	}
	meeting, checkIn := remind(interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_UPCOMING, iv.GetName()),
		remind(interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN, "")
	longer, err := f.client.RescheduleIntervention(f.ctx, &interventionsv1.RescheduleInterventionRequest{Name: iv.GetName(),
		StartTime: iv.GetStartTime(), ExpectedDuration: durationpb.New(3 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	claim := func(rem *interventionsv1.Reminder) *interventionsv1.Reminder {
		t.Helper()
		got, err := f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: rem.GetName(), Claimant: "mailer-1",
			LeaseDuration: durationpb.New(time.Minute), RequestId: "claim-" + rem.GetName()[strings.LastIndex(rem.GetName(), "/")+1:]})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	// The claim, and its retry answered from the stored answer, which
	// holds no times: the retry reads them again.
	for range 2 {
		got := claim(meeting)
		if !got.GetEventStartTime().AsTime().Equal(iv.GetStartTime().AsTime()) ||
			!got.GetEventEndTime().AsTime().Equal(iv.GetStartTime().AsTime().Add(3*time.Hour)) || longer.GetExpectedDuration().AsDuration() != 3*time.Hour {
			t.Fatalf("claimed meeting reminder: event %v to %v; want %v for the three hours it lasts now",
				got.GetEventStartTime(), got.GetEventEndTime(), iv.GetStartTime())
		}
		// The event's UID names no kind of record: it goes to the
		// family's mailbox.
		if want := path.Base(iv.GetName()) + "@handoff"; got.GetEventUid() != want || strings.Contains(got.GetEventUid(), "intervention") {
			t.Fatalf("the event's UID %q; want %q", got.GetEventUid(), want)
		}
	}
	if got := claim(checkIn); got.GetEventStartTime() != nil || got.GetEventEndTime() != nil || got.GetEventUid() != "" {
		t.Fatalf("a check-in's claim carries an event: %v to %v, %q", got.GetEventStartTime(), got.GetEventEndTime(), got.GetEventUid())
	}
	if stored, err := f.client.GetReminder(auto, &interventionsv1.GetReminderRequest{Name: meeting.GetName()}); err != nil ||
		stored.GetEventStartTime() != nil {
		t.Fatalf("the reminder read back: %v, %v; want no event time stored", stored, err)
	}
}

// An intake reminder keeps the start of the appointment it announces,
// given by the workflow that made it: shown on every read and in the
// claim, so that the automation can put the appointment in the
// recipient's calendar. The program gives no length, so no end. Given for
// another kind, the time is refused and nothing is made.
func TestIntakeReminderKeepsItsAppointment(t *testing.T) {
	t.Parallel()
	f := setup(t)
	auto := f.env.As("north", "sms-gateway", auth.RoleReminders)
	appt := timestamppb.New(f.clock.Now().Add(30 * time.Hour).Truncate(time.Microsecond))
	create := func(kind interventionsv1.ReminderKind, id string) (*interventionsv1.Reminder, error) {
		return f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", RequestId: id,
			AppointmentStartTime: appt, Reminder: &interventionsv1.Reminder{
				Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
					Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_EMAIL},
				Kind: kind, Message: "Reminder: appointment tomorrow at 9.", RelatedResource: "clinics/north/referrals/r1"}})
	}
	checkIns := func() int {
		t.Helper()
		l, err := f.client.ListReminders(f.env.As("north", "admin-1", auth.RoleClinicAdmin), &interventionsv1.ListRemindersRequest{Parent: "clinics/north", Filter: "kind = CHECK_IN"})
		if err != nil {
			t.Fatal(err)
		}
		return len(l.GetReminders())
	}
	before := checkIns()
	_, err := create(interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN, "")
	if st := wantCode(t, err, codes.InvalidArgument); fieldOf(st) != "appointment_start_time" {
		t.Fatalf("an appointment time on a check-in: %v; want a violation on appointment_start_time", err)
	}
	if n := checkIns(); n != before {
		t.Fatalf("%d check-ins after the refusal, %d before", n, before)
	}
	// Nor is a time that is none, the nanoseconds out of range.
	bad := appt
	appt = &timestamppb.Timestamp{Seconds: appt.GetSeconds(), Nanos: 2_000_000_000}
	_, err = create(interventionsv1.ReminderKind_REMINDER_KIND_INTAKE_UPCOMING, "")
	if st := wantCode(t, err, codes.InvalidArgument); fieldOf(st) != "appointment_start_time" {
		t.Fatalf("an invalid appointment time: %v; want a violation on appointment_start_time", err)
	}
	appt = bad

	rem, err := create(interventionsv1.ReminderKind_REMINDER_KIND_INTAKE_UPCOMING, "intake-1")
	if err != nil {
		t.Fatal(err)
	}
	if again, err := create(interventionsv1.ReminderKind_REMINDER_KIND_INTAKE_UPCOMING, "intake-1"); err != nil || again.GetName() != rem.GetName() {
		t.Fatalf("the same request again: %v, %v; want %s", again.GetName(), err, rem.GetName())
	}
	claimed, err := f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: rem.GetName(), Claimant: "mailer-1",
		LeaseDuration: durationpb.New(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	for what, got := range map[string]*interventionsv1.Reminder{"made": rem, "claimed": claimed} {
		if !proto.Equal(got.GetEventStartTime(), appt) || got.GetEventEndTime() != nil {
			t.Errorf("%s: event %v to %v; want from %v, no end", what, got.GetEventStartTime(), got.GetEventEndTime(), appt)
		}
	}
	if want := path.Base(rem.GetRelatedResource()) + "@handoff"; claimed.GetEventUid() != want || rem.GetRelatedResource() == "" {
		t.Errorf("the claim's event UID %q; want %q, the referral's id alone", claimed.GetEventUid(), want)
	}
	for _, who := range []context.Context{f.worker, auto} {
		if got, err := f.client.GetReminder(who, &interventionsv1.GetReminderRequest{Name: rem.GetName()}); err != nil ||
			!proto.Equal(got.GetEventStartTime(), appt) {
			t.Errorf("read back: %v, %v; want the appointment's start %v", got.GetEventStartTime(), err, appt)
		}
	}
}

// agedScreens shows the families service's answer as it is once the
// newest screen has grown older than the clinic's maximum age: EXPIRED,
// its result kept.
type agedScreens struct {
	familiesv1.FamiliesServiceClient
}

func (a agedScreens) GetFamily(ctx context.Context, in *familiesv1.GetFamilyRequest, opts ...grpc.CallOption) (*familiesv1.Family, error) {
	fam, err := a.FamiliesServiceClient.GetFamily(ctx, in, opts...)
	if err == nil && fam.GetLatestSafetyScreen() != nil {
		fam.SafetyScreenStatus = familiesv1.SafetyScreenStatus_SAFETY_SCREEN_STATUS_EXPIRED
	}
	return fam, err
}

// A high-risk screen grown old counts as missing for most purposes, but
// the risk it found was never cleared: no meeting is scheduled until a
// newer screen is not high risk.
func TestAnOldHighRiskScreenStillStopsAMeeting(t *testing.T) {
	t.Parallel()
	f := setupWith(t, func(c familiesv1.FamiliesServiceClient) familiesv1.FamiliesServiceClient { return agedScreens{c} })
	screen := func(r familiesv1.SafetyRisk) {
		t.Helper()
		if _, err := f.families.CreateSafetyScreen(f.ctx, &familiesv1.CreateSafetyScreenRequest{Parent: f.family.GetName(),
			SafetyScreen: &familiesv1.SafetyScreen{Result: r}}); err != nil {
			t.Fatal(err)
		}
	}
	screen(familiesv1.SafetyRisk_SAFETY_RISK_HIGH_RISK)
	iv := f.draft(t, f.clock.Now().Add(48*time.Hour))
	_, err := f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: iv.GetName()})
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != "SAFETY_SCREEN_REQUIRED" {
		t.Fatalf("level 1 under an old high-risk screen: reason %q", reason(st))
	}
	// A newer screen, old too, that found no risk: a level-1 meeting
	// goes ahead, as under no screen at all.
	screen(familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK)
	if _, err := f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: iv.GetName()}); err != nil {
		t.Fatalf("level 1 after a newer screen: %v", err)
	}
}

// A reminder made with a send-by time, its answer lost, and tried again
// once that time has passed, gets the reminder its first call made, not a
// refusal for a time in the past: a workflow would lose track of a
// reminder that stands.
func TestReminderRetryPastItsSendByGetsItsReminder(t *testing.T) {
	t.Parallel()
	f := setup(t)
	req := &interventionsv1.CreateReminderRequest{Parent: "clinics/north", RequestId: "remind-once", Reminder: &interventionsv1.Reminder{
		Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
			Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS},
		SendByTime: timestamppb.New(f.clock.Now().Add(10 * time.Minute)), Kind: interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN,
		Message: "Checking in."}}
	first, err := f.client.CreateReminder(f.worker, req)
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(20 * time.Minute)
	again, err := f.client.CreateReminder(f.worker, req)
	if err != nil || again.GetName() != first.GetName() {
		t.Fatalf("the retry past its send-by time: %v, %v; want %s", again, err, first.GetName())
	}
	// A new request with that time is refused, on its field.
	req.RequestId = "remind-late"
	_, err = f.client.CreateReminder(f.worker, req)
	wantCode(t, err, codes.InvalidArgument)
}

// A family reminder about a family's record (a warning sign, the family)
// must be about the recipient's family: the automation is shown that
// record's family, and would see another family's name.
func TestReminderAboutAnotherFamilyIsRefused(t *testing.T) {
	t.Parallel()
	f := setup(t)
	rem := &interventionsv1.Reminder{
		Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
			Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS},
		DueTime: timestamppb.Now(), Kind: interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN, Message: "Checking in.",
		RelatedResource: "clinics/north/families/someone-else/warningSigns/w1"}
	_, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: rem})
	wantCode(t, err, codes.InvalidArgument)
	rem.RelatedResource = f.family.GetName() + "/warningSigns/w1"
	if _, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: rem}); err != nil {
		t.Fatalf("a reminder about the recipient's own family: %v", err)
	}
}

// A closed family gets no new meeting: a draft is not created nor
// scheduled for it, and a scheduled one is not raised to a higher level
// (FAILED_PRECONDITION, FAMILY_CLOSED); other edits of what stands are
// left to the worker, which cancels it. No reminder is made for its people,
// and one made before is cancelled at its claim instead of sent, whatever
// the worker has done yet. Reopened, the family is planned with again.
func TestAClosedFamilyGetsNoNewMeetingsNorReminders(t *testing.T) {
	t.Parallel()
	f := setup(t)
	start := f.clock.Now().Add(48 * time.Hour)
	pending := f.draft(t, start)
	meeting := f.scheduled(t, start.Add(24*time.Hour))
	toMom := &interventionsv1.Reminder{Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
		Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS},
		Kind: interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN, Message: "How are you doing?"}
	made, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: toMom})
	if err != nil {
		t.Fatal(err)
	}
	setState := func(st familiesv1.FamilyState) {
		t.Helper()
		if _, err := f.families.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: f.family.GetName(), State: st},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"state"}}}); err != nil {
			t.Fatal(err)
		}
	}
	setState(familiesv1.FamilyState_FAMILY_STATE_CLOSED)
	before := digest(t, f.pool)

	closed := func(what string, err error) {
		t.Helper()
		if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != apperr.ReasonFamilyClosed {
			t.Fatalf("%s for a closed family: reason %q (%v); want %s", what, reason(st), err, apperr.ReasonFamilyClosed)
		}
	}
	_, err = f.client.CreateIntervention(f.ctx, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north",
		Intervention: &interventionsv1.Intervention{Family: f.family.GetName(), Counselor: "counselor-1"}})
	closed("a new draft", err)
	_, err = f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: pending.GetName()})
	closed("scheduling a draft", err)
	_, err = f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{
		Intervention: &interventionsv1.Intervention{Name: meeting.GetName(), Level: interventionsv1.EscalationLevel_ESCALATION_LEVEL_LEVEL_2},
		UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"level"}}})
	closed("raising a meeting's level", err)
	_, err = f.client.RescheduleIntervention(f.ctx, &interventionsv1.RescheduleInterventionRequest{Name: meeting.GetName(),
		StartTime: timestamppb.New(start.Add(48 * time.Hour))})
	closed("moving a meeting to another time", err)
	_, err = f.client.RescheduleIntervention(f.ctx, &interventionsv1.RescheduleInterventionRequest{Name: meeting.GetName(),
		StartTime: meeting.GetStartTime(), TimeZone: "Europe/Lisbon"})
	closed("moving a meeting to another time zone", err)
	_, err = f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: toMom})
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != "CONTACT_NOT_ALLOWED" {
		t.Fatalf("a reminder to a closed family's member: %v; want CONTACT_NOT_ALLOWED", err)
	}
	if after := digest(t, f.pool); after != before {
		t.Fatal("a refused request changed the interventions' data")
	}
	// The reminder made before: its claim cancels it.
	auto := f.env.As("north", "sms-gateway", auth.RoleReminders)
	_, err = f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: made.GetName(), Claimant: "sms-1", LeaseDuration: durationpb.New(time.Minute)})
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != "CONTACT_NOT_ALLOWED" {
		t.Fatalf("claim of a closed family's reminder: %v; want CONTACT_NOT_ALLOWED", err)
	}
	if got, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: made.GetName()}); err != nil ||
		got.GetState() != interventionsv1.ReminderState_REMINDER_STATE_CANCELLED {
		t.Fatalf("the closed family's reminder after its claim: %v, %v; want CANCELLED", got.GetState(), err)
	}
	// An edit that plans nothing new stands.
	if _, err := f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{
		Intervention: &interventionsv1.Intervention{Name: meeting.GetName(), CarriedOverNotes: "the family closed its case"},
		UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"carried_over_notes"}}}); err != nil {
		t.Fatalf("a note on a closed family's meeting: %v", err)
	}
	// A meeting running long is lengthened, at the time it stands.
	longer, err := f.client.RescheduleIntervention(f.ctx, &interventionsv1.RescheduleInterventionRequest{Name: meeting.GetName(),
		StartTime: meeting.GetStartTime(), ExpectedDuration: durationpb.New(3 * time.Hour)})
	if err != nil || longer.GetExpectedDuration().AsDuration() != 3*time.Hour || longer.GetRescheduleCount() != 0 {
		t.Fatalf("a closed family's meeting lengthened: %v, %v; want 3h at the same time", longer.GetExpectedDuration(), err)
	}
	setState(familiesv1.FamilyState_FAMILY_STATE_ACTIVE)
	if _, err := f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: pending.GetName()}); err != nil {
		t.Fatalf("scheduling once the family is ACTIVE again: %v", err)
	}
}

// A meeting of a family whose record was deleted is not moved to another
// time: the FamilyDeleted workflow is cancelling it, and moved, its
// reminders would be placed again for people no longer on record
// (FAILED_PRECONDITION, RESOURCE_NOT_READY). A new length alone stands.
func TestADeletedFamilysMeetingIsNotMoved(t *testing.T) {
	t.Parallel()
	f := setup(t)
	start := f.clock.Now().Add(48 * time.Hour)
	meeting := f.scheduled(t, start)
	if _, err := f.families.DeleteFamily(f.env.As("north", "admin-1", auth.RoleClinicAdmin),
		&familiesv1.DeleteFamilyRequest{Name: f.family.GetName()}); err != nil {
		t.Fatal(err)
	}
	before := digest(t, f.pool)
	_, err := f.client.RescheduleIntervention(f.ctx, &interventionsv1.RescheduleInterventionRequest{Name: meeting.GetName(),
		StartTime: timestamppb.New(start.Add(24 * time.Hour))})
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != apperr.ReasonNotReady {
		t.Fatalf("moving a deleted family's meeting: reason %q (%v); want %s", reason(st), err, apperr.ReasonNotReady)
	}
	if after := digest(t, f.pool); after != before {
		t.Fatal("a refused move changed the interventions' data")
	}
	// An edit is refused the same way: the family is the stored meeting's,
	// not a field the request sent (it was INVALID_ARGUMENT on
	// intervention.family).
	_, err = f.client.UpdateIntervention(f.ctx, &interventionsv1.UpdateInterventionRequest{
		Intervention: &interventionsv1.Intervention{Name: meeting.GetName(), CarriedOverNotes: "bring the letters"},
		UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"carried_over_notes"}}})
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != apperr.ReasonNotReady {
		t.Fatalf("editing a deleted family's meeting: reason %q (%v); want %s", reason(st), err, apperr.ReasonNotReady)
	}
	if after := digest(t, f.pool); after != before {
		t.Fatal("a refused edit changed the interventions' data")
	}
	if _, err := f.client.RescheduleIntervention(f.ctx, &interventionsv1.RescheduleInterventionRequest{Name: meeting.GetName(),
		StartTime: meeting.GetStartTime(), ExpectedDuration: durationpb.New(2 * time.Hour)}); err != nil {
		t.Fatalf("lengthening a deleted family's meeting: %v", err)
	}
}

// referralsOf answers GetReferral for referrals named r-own (of the family
// it holds) and r-other (of another family); any other is not found.
type referralsOf struct {
	heldNowhere
	family *atomic.Value // string
}

func (r referralsOf) GetReferral(_ context.Context, in *referralsv1.GetReferralRequest, _ ...grpc.CallOption) (*referralsv1.Referral, error) {
	switch {
	case strings.HasSuffix(in.GetName(), "/r-own"):
		return &referralsv1.Referral{Name: in.GetName(), Family: r.family.Load().(string)}, nil
	case strings.HasSuffix(in.GetName(), "/r-other"):
		return &referralsv1.Referral{Name: in.GetName(), Family: "clinics/north/families/other"}, nil
	}
	return nil, status.Error(codes.NotFound, in.GetName()+" not found")
}

// A reminder to someone of a family about a referral (an intake) is made
// only if the referral is that family's: member ids are unique within a
// family only, and another family's "mom" would hear of this loved one's
// intake. A referral not found is refused by name; nothing is stored.
func TestAReferralsReminderGoesToItsOwnFamily(t *testing.T) {
	t.Parallel()
	fake := referralsOf{family: &atomic.Value{}}
	fake.family.Store("")
	f := setupHolds(t, nil, fake)
	fake.family.Store(f.family.GetName())
	create := func(referral string) (*interventionsv1.Reminder, error) {
		return f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
			Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
				Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS},
			DueTime: timestamppb.New(f.clock.Now().Add(time.Hour)), RelatedResource: "clinics/north/referrals/" + referral,
			Kind: interventionsv1.ReminderKind_REMINDER_KIND_INTAKE_UPCOMING, Message: "Reminder: appointment tomorrow at 9."}})
	}
	before := digest(t, f.pool)
	for referral, field := range map[string]string{"r-other": "reminder.recipient.family", "r-gone": "reminder.related_resource"} {
		_, err := create(referral)
		if st := wantCode(t, err, codes.InvalidArgument); fieldOf(st) != field {
			t.Fatalf("a reminder to this family's mom about %s: %v; want %s refused", referral, err, field)
		}
	}
	if after := digest(t, f.pool); after != before {
		t.Fatal("a refused reminder changed the interventions' data")
	}
	if _, err := create("r-own"); err != nil {
		t.Fatalf("a reminder to mom about her own family's referral: %v", err)
	}
}

// intakeReminder is a reminder to mom, due in an hour, of her intake
// appointment in two.
func (f *fixture) intakeReminder(t *testing.T) *interventionsv1.Reminder {
	t.Helper()
	appt := f.clock.Now().Add(2 * time.Hour).Truncate(time.Microsecond)
	rem, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north",
		AppointmentStartTime: timestamppb.New(appt), Reminder: &interventionsv1.Reminder{
			Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
				Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_EMAIL},
			Kind: interventionsv1.ReminderKind_REMINDER_KIND_INTAKE_UPCOMING, DueTime: timestamppb.New(f.clock.Now().Add(time.Hour)),
			Message: "Reminder: appointment today at 9.", RelatedResource: "clinics/north/referrals/r1"}})
	if err != nil {
		t.Fatal(err)
	}
	return rem
}

// A reminder of an intake appointment claimed once the appointment has
// begun (the worker or the automation was down) is cancelled, not sent
// late, as a meeting's is.
func TestIntakeReminderIsNotSentOnceTheAppointmentBegins(t *testing.T) {
	t.Parallel()
	f := setup(t)
	auto := f.env.As("north", "sms-gateway", auth.RoleReminders)
	rem := f.intakeReminder(t)
	f.clock.Advance(2*time.Hour + time.Minute) // due an hour ago; the appointment began a minute ago
	_, err := f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: rem.GetName(), Claimant: "mailer-1", LeaseDuration: durationpb.New(time.Minute)})
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != "MEETING_BEGUN" {
		t.Fatalf("claim of an intake reminder after the appointment began: reason %q; want MEETING_BEGUN", reason(st))
	}
	got, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: rem.GetName()})
	if err != nil || got.GetState() != interventionsv1.ReminderState_REMINDER_STATE_CANCELLED || !strings.Contains(got.GetCancelReason(), "appointment began") {
		t.Fatalf("after the refused claim: %v, %v; want it cancelled, the appointment begun", got, err)
	}
}

// A claim of an intake reminder made before the appointment and extended
// by its claimant after it began runs its course (the claimant may be
// sending), as a meeting's does. Another worker's claim once that lapsed a
// moment ago is refused without word of a cancel that did not happen; once
// it lapsed for good, the reminder is cancelled.
func TestAnIntakeReminderUnderAClaimIsLeftToItsClaimant(t *testing.T) {
	t.Parallel()
	f := setup(t)
	auto := f.env.As("north", "sms-gateway", auth.RoleReminders)
	rem := f.intakeReminder(t)
	claim := func(claimant, etag string) (*interventionsv1.Reminder, error) {
		return f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: rem.GetName(), Claimant: claimant, Etag: etag,
			LeaseDuration: durationpb.New(time.Hour)})
	}
	state := func() interventionsv1.ReminderState {
		t.Helper()
		got, err := f.client.GetReminder(f.worker, &interventionsv1.GetReminderRequest{Name: rem.GetName()})
		if err != nil {
			t.Fatal(err)
		}
		return got.GetState()
	}
	f.clock.Advance(time.Hour + time.Minute) // due a minute ago
	held, err := claim("mailer-1", "")
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Hour - 30*time.Second) // the appointment began 30 s ago, the lease still runs
	extended, err := claim("mailer-1", held.GetEtag())
	if err != nil || extended.GetState() != interventionsv1.ReminderState_REMINDER_STATE_CLAIMED {
		t.Fatalf("the claimant extending its live claim after the appointment began: %v, %v; want it extended", extended, err)
	}
	f.clock.Advance(time.Hour + 30*time.Second) // the extension lapsed 30 s ago
	_, err = claim("mailer-2", "")
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != "MEETING_BEGUN" || strings.Contains(st.Message(), "cancelled") {
		t.Fatalf("another claim a moment after the lease lapsed: %v; want MEETING_BEGUN, saying nothing of a cancel", st)
	}
	if got := state(); got == interventionsv1.ReminderState_REMINDER_STATE_CANCELLED {
		t.Fatalf("a reminder whose claimant may still report it: %v; want it not cancelled yet", got)
	}
	f.clock.Advance(10 * time.Minute)
	if _, err := claim("mailer-2", ""); reason(wantCode(t, err, codes.FailedPrecondition)) != "MEETING_BEGUN" {
		t.Fatalf("another claim once the lease lapsed for good: %v; want MEETING_BEGUN", err)
	}
	if got := state(); got != interventionsv1.ReminderState_REMINDER_STATE_CANCELLED {
		t.Fatalf("after the lease lapsed for good: %v; want CANCELLED", got)
	}
	// Ended, it is refused for its state, as a meeting's is: nothing is
	// left to cancel, and no claim of it to report.
	_, err = claim("mailer-2", "")
	if st := wantCode(t, err, codes.FailedPrecondition); reason(st) != "INVALID_STATE_TRANSITION" {
		t.Fatalf("a claim of the cancelled reminder: %v; want INVALID_STATE_TRANSITION", st)
	}
}

// checkIn makes a check-in reminder, due now, to member id of the
// fixture's family on channel ch.
func (f *fixture) checkIn(t *testing.T, id string, ch interventionsv1.ChannelKind) *interventionsv1.Reminder {
	t.Helper()
	rem, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
		Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: id,
			Family: f.family.GetName(), Channel: ch},
		Kind: interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN, Message: "How are you doing?"}})
	if err != nil {
		t.Fatal(err)
	}
	return rem
}

// withdrawMom records that mom, the fixture family's first member, may no
// longer be contacted; no workflow runs here to cancel her reminders.
func (f *fixture) withdrawMom(t *testing.T) {
	t.Helper()
	fam, err := f.families.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: f.family.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	fam.Members[0].ConsentToContact = false
	if _, err := f.families.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: fam, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"members"}}}); err != nil {
		t.Fatal(err)
	}
}

// The worker's token is good for every clinic: it lists meetings and
// reminders only of one family, record or workflow, as the workflows do,
// not a whole clinic's.
func TestWorkerListsOnlyOneFamilysOrWorkflows(t *testing.T) {
	t.Parallel()
	f := setup(t)
	worker := f.env.As(auth.AnyClinic, "worker", auth.RoleWorker)
	_, err := f.client.ListInterventions(worker, &interventionsv1.ListInterventionsRequest{Parent: "clinics/north"})
	wantCode(t, err, codes.PermissionDenied)
	_, err = f.client.ListInterventions(worker, &interventionsv1.ListInterventionsRequest{Parent: "clinics/north", Filter: "state = SCHEDULED"})
	wantCode(t, err, codes.PermissionDenied)
	if _, err := f.client.ListInterventions(worker, &interventionsv1.ListInterventionsRequest{Parent: "clinics/north",
		Filter: fmt.Sprintf("family = %q AND state = COMPLETED", f.family.GetName())}); err != nil {
		t.Fatal(err)
	}
	// Not by the empty value every reminder a person made shares.
	for _, filter := range []string{"kind = OVERDOSE_ALERT", `origin_workflow = ""`, `related_resource = "" AND kind = CHECK_IN`} {
		_, err = f.client.ListReminders(worker, &interventionsv1.ListRemindersRequest{Parent: "clinics/north", Filter: filter})
		wantCode(t, err, codes.PermissionDenied)
	}
	for _, filter := range []string{
		fmt.Sprintf("recipient_family = %q AND state != DELIVERED", f.family.GetName()),
		`related_resource = "clinics/north/interventions/i1"`,
		`origin_workflow = "boundary/clinics/north/families/f1" AND kind = OVERDOSE_ALERT`,
	} {
		if _, err := f.client.ListReminders(worker, &interventionsv1.ListRemindersRequest{Parent: "clinics/north", Filter: filter}); err != nil {
			t.Errorf("ListReminders(%s): %v", filter, err)
		}
	}
	if _, err := f.client.ListInterventions(f.ctx, &interventionsv1.ListInterventionsRequest{Parent: "clinics/north"}); err != nil {
		t.Fatal(err)
	}
}

// secondReadFails is the families service failing the second read of a
// family after armed is set: a claim's check after it took the lease.
type secondReadFails struct {
	familiesv1.FamiliesServiceClient
	armed atomic.Bool
	reads atomic.Int32
}

func (f *secondReadFails) GetFamily(ctx context.Context, in *familiesv1.GetFamilyRequest, opts ...grpc.CallOption) (*familiesv1.Family, error) {
	if f.armed.Load() && f.reads.Add(1) == 2 {
		return nil, status.Error(codes.Unavailable, "families service restarting")
	}
	return f.FamiliesServiceClient.GetFamily(ctx, in, opts...)
}

// A claim whose second check of the recipient (after it took the lease)
// goes unanswered gives its lease back: nobody got the address, and the
// lease would otherwise hold off every claim, the worker's own retry
// under a new request id among them, for as long as it ran.
func TestClaimUnansweredAfterTheLeaseGivesItBack(t *testing.T) {
	t.Parallel()
	families := &secondReadFails{}
	f := setupWith(t, func(c familiesv1.FamiliesServiceClient) familiesv1.FamiliesServiceClient {
		families.FamiliesServiceClient = c
		return families
	})
	auto := f.env.As("north", "sms-gateway", auth.RoleReminders)
	rem, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
		Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
			Family: f.family.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS},
		Kind: interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN, Message: "How are you doing?"}})
	if err != nil {
		t.Fatal(err)
	}
	families.armed.Store(true)
	claim := func(id string) (*interventionsv1.Reminder, error) {
		return f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: rem.GetName(), Claimant: "gw-1",
			LeaseDuration: durationpb.New(time.Hour), RequestId: id})
	}
	_, err = claim("claim-1")
	wantCode(t, err, codes.Unavailable)
	// Another worker takes it at once.
	got, err := f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: rem.GetName(), Claimant: "gw-2",
		LeaseDuration: durationpb.New(time.Hour), RequestId: "claim-2"})
	if err != nil || got.GetState() != interventionsv1.ReminderState_REMINDER_STATE_CLAIMED || got.GetAddress() != "+15555550100" {
		t.Fatalf("a claim after the unanswered one: %v, %v; want it claimed, with the address", got, err)
	}
	// The first claim's retry does not bring its lease back.
	_, err = claim("claim-1")
	wantCode(t, err, codes.FailedPrecondition)
}

// A claim extended, or a report made, with the etag of a claim on a
// reminder cancelled since is FAILED_PRECONDITION, as the API says of an
// ended reminder, not ABORTED, which would have the automation read it
// again and retry.
func TestEndedReminderIsNoEtagMismatch(t *testing.T) {
	t.Parallel()
	f := setup(t)
	auto := f.env.As("north", "sms-gateway", auth.RoleReminders)
	rem, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
		Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR, Id: "counselor-1",
			Channel: interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP},
		Kind: interventionsv1.ReminderKind_REMINDER_KIND_REENGAGEMENT, Message: "Please call the family today."}})
	if err != nil {
		t.Fatal(err)
	}
	claimed, err := f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: rem.GetName(), Claimant: "gw-1",
		LeaseDuration: durationpb.New(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.CancelReminder(f.worker, &interventionsv1.CancelReminderRequest{Name: rem.GetName(), Reason: "no longer needed"}); err != nil {
		t.Fatal(err)
	}
	_, err = f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: rem.GetName(), Claimant: "gw-1",
		LeaseDuration: durationpb.New(time.Minute), Etag: claimed.GetEtag()})
	wantCode(t, err, codes.FailedPrecondition)
	_, err = f.client.CompleteReminder(auto, &interventionsv1.CompleteReminderRequest{Name: rem.GetName(), Claimant: "gw-1",
		Result: interventionsv1.DeliveryResult_DELIVERY_RESULT_DELIVERED, Etag: claimed.GetEtag()})
	wantCode(t, err, codes.FailedPrecondition)
}

// The worker ticking a place keeps what the counselor wrote on the item,
// and says the workflows held it only when they did: before, its "held by
// the workflow" replaced any note, a counselor's place adopted included.
func TestWorkerTickKeepsTheCounselorsNote(t *testing.T) {
	t.Parallel()
	family := &atomic.Value{}
	f := setupHolds(t, nil, holdsListed{family: family})
	family.Store(f.family.GetName())
	iv := f.draft(t, f.clock.Now().Add(72*time.Hour))
	held := interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_TREATMENT_OPTION_HELD
	note := func(ctx context.Context, done bool, hold, note string) string {
		t.Helper()
		got, err := f.client.UpdateChecklistItem(ctx, &interventionsv1.UpdateChecklistItemRequest{Name: iv.GetName(), Kind: held,
			Done: done, Hold: hold, Note: note})
		if err != nil {
			t.Fatalf("tick of %q: %v", hold, err)
		}
		i := slices.IndexFunc(got.GetChecklist(), func(it *interventionsv1.ChecklistItem) bool { return it.GetKind() == held })
		if i < 0 || got.GetChecklist()[i].GetDone() != done || got.GetChecklist()[i].GetHold() != hold {
			t.Fatalf("checklist %v; want TREATMENT_OPTION_HELD done %v with %q", got.GetChecklist(), done, hold)
		}
		return got.GetChecklist()[i].GetNote()
	}
	ours := "clinics/north/holds/for-" + path.Base(iv.GetName())
	theirs := "clinics/north/holds/by-hand-" + path.Base(iv.GetName())
	const counselors = "the family asks for a program near the bus line"
	note(f.ctx, false, "", counselors)
	if got := note(f.worker, true, ours, "held by the workflow"); got != counselors {
		t.Fatalf("note %q after the worker's tick; want the counselor's kept", got)
	}
	note(f.ctx, false, "", "")
	if got := note(f.worker, true, ours, ""); got != "held by the workflow" {
		t.Fatalf("note %q after the worker ticked its own place on an item with none; want it said", got)
	}
	if got := note(f.worker, true, theirs, "held by the workflow"); got != "" {
		t.Fatalf("note %q after the worker adopted a counselor's place; want the workflows' note gone", got)
	}
	// A counselor's note of one place does not stay on another.
	note(f.ctx, true, theirs, "bed at St Mary's until Friday")
	if got := note(f.worker, true, ours, ""); got != "held by the workflow" {
		t.Fatalf("note %q after the worker held another place; want the counselor's note of the first gone", got)
	}
}

// The notice that a meeting is drafted for review is not made once the
// draft is gone (deleted, withdrawn) or scheduled: the workflow drafts it
// in a call before the notice's, and the counselor may act in between.
// Before, it was made, naming a meeting gone.
func TestDraftNoticeOnlyWhileTheDraftStands(t *testing.T) {
	t.Parallel()
	f := setup(t)
	notice := func(iv string) error {
		_, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
			Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR, Id: "counselor-1",
				Channel: interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP}, DueTime: timestamppb.Now(),
			Kind: interventionsv1.ReminderKind_REMINDER_KIND_ESCALATION_PROPOSED, RelatedResource: iv,
			Message: "A family meeting is drafted for your review."}})
		return err
	}
	standing := f.draft(t, f.clock.Now().Add(72*time.Hour))
	if err := notice(standing.GetName()); err != nil {
		t.Fatalf("the notice of a draft: %v", err)
	}
	deleted := f.draft(t, f.clock.Now().Add(96*time.Hour))
	if _, err := f.client.DeleteIntervention(f.ctx, &interventionsv1.DeleteInterventionRequest{Name: deleted.GetName()}); err != nil {
		t.Fatal(err)
	}
	scheduled := f.draft(t, f.clock.Now().Add(120*time.Hour))
	if _, err := f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: scheduled.GetName()}); err != nil {
		t.Fatal(err)
	}
	for what, iv := range map[string]string{"deleted": deleted.GetName(), "scheduled": scheduled.GetName()} {
		if got := reason(wantCode(t, notice(iv), codes.FailedPrecondition)); got != interventions.ReasonMeetingNotScheduled {
			t.Fatalf("the notice of a draft %s: reason %q; want %s", what, got, interventions.ReasonMeetingNotScheduled)
		}
	}
}

// A check-in whose reminder failed and was never sent again (its retries
// spent, or the workflow over) still counts once: the check-ins after it
// keep their numbers, and it can be answered. Before, check-in 2 answered
// by its due time took number 1, and check-in 1 was then refused as
// answered.
func TestCheckInWhoseReminderFailedForGoodKeepsItsNumber(t *testing.T) {
	t.Parallel()
	f := setup(t)
	iv := f.declined(t)
	now := f.clock.Now().UTC().Truncate(time.Second)
	due := []time.Time{now.Add(24 * time.Hour), now.Add(7 * 24 * time.Hour)}
	for i, d := range due {
		// Each made when due, as the workflow makes them: check-in 2's
		// after check-in 1's failed, due after it, but of its own message
		// (a resend's would be the same).
		f.clock.Advance(d.Sub(f.clock.Now()))
		rem, err := f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
			Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR, Id: "counselor-1",
				Channel: interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP},
			Kind: interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN, RelatedResource: iv.GetName(), DueTime: timestamppb.New(d),
			Message: fmt.Sprintf("Check in with the family (check-in %d) and record what they tell you.", i+1)}})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			// Failed an hour after it was made, and nothing was made
			// of it again.
			if _, err := f.pool.Exec(context.Background(), `UPDATE reminders SET state = $1, update_time = update_time + interval '1 hour' WHERE id = $2`,
				int16(interventionsv1.ReminderState_REMINDER_STATE_FAILED), path.Base(rem.GetName())); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, c := range []struct {
		due  time.Time
		want int32
	}{{due[1], 2}, {due[0], 1}} {
		ci, err := f.client.RecordCheckIn(f.ctx, &interventionsv1.RecordCheckInRequest{Name: iv.GetName(),
			CheckIn: &interventionsv1.RecordCheckInRequest_DueTime{DueTime: timestamppb.New(c.due)}})
		if err != nil || ci.GetNumber() != c.want {
			t.Fatalf("the check-in due %v: %v, %v; want number %d", c.due, ci, err, c.want)
		}
	}
}

// declined schedules a meeting an hour ahead, moves the clock past it and
// records that the loved one declined: a meeting the boundary follow-up
// checks in on.
func (f *fixture) declined(t *testing.T) *interventionsv1.Intervention {
	t.Helper()
	iv := f.draft(t, f.clock.Now().Add(time.Hour))
	if _, err := f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: iv.GetName()}); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(2 * time.Hour)
	if _, err := f.client.RecordOutcome(f.ctx, &interventionsv1.RecordOutcomeRequest{Name: iv.GetName(),
		Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_DECLINED}); err != nil {
		t.Fatal(err)
	}
	return iv
}
