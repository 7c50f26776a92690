package activities

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"buf.build/go/protovalidate"
	"go.temporal.io/sdk/temporal"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/apperr"
)

type convertRecorder struct {
	referralsv1.ReferralsServiceClient
	got *referralsv1.ConvertHoldRequest
}

func (c *convertRecorder) ConvertHold(_ context.Context, in *referralsv1.ConvertHoldRequest, _ ...grpc.CallOption) (*referralsv1.Referral, error) {
	c.got = in
	return &referralsv1.Referral{Name: "clinics/north/referrals/r1", Program: "clinics/north/programs/p1"}, nil
}

// The family's first contact goes with the referral, unless it is unknown
// or in the future (stored before such times were refused), which the
// referrals service would refuse and so leave the person who said yes
// without a referral.
func TestImmediateReferralFirstContact(t *testing.T) {
	past := time.Now().Add(-10 * 24 * time.Hour).UTC().Truncate(time.Second)
	for _, c := range []struct {
		name  string
		first time.Time
		want  *time.Time
	}{
		{"past", past, &past},
		{"future", time.Now().Add(300 * 24 * time.Hour), nil},
		{"unknown", time.Time{}, nil},
		{"the epoch of an unset timestamp", time.Unix(0, 0), nil},
	} {
		refs := &convertRecorder{}
		a := &Activities{Referrals: refs}
		if _, err := a.StartImmediateReferral(context.Background(), ImmediateRequest{Hold: "clinics/north/holds/h1",
			FirstContact: c.first, RequestID: "r"}); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got := refs.got.GetFirstContactTime()
		switch {
		case c.want == nil && got != nil:
			t.Errorf("%s: first contact %v sent, want none", c.name, got.AsTime())
		case c.want != nil && (got == nil || !got.AsTime().Equal(*c.want)):
			t.Errorf("%s: first contact %v, want %v", c.name, got, *c.want)
		}
	}
}

type resendFakes struct {
	interventionsv1.InterventionsServiceClient
	old     *interventionsv1.Reminder
	meeting time.Time
	created *interventionsv1.Reminder
	made    *interventionsv1.Reminder // an earlier try's resend, if any
	// appointment is the resend's appointment_start_time.
	appointment *timestamppb.Timestamp
	gone        string // an earlier try's resend, since gone
	// ivErr fails GetIntervention; ivReads counts its calls.
	ivErr   error
	ivReads int
}

func (f *resendFakes) GetReminder(_ context.Context, in *interventionsv1.GetReminderRequest, _ ...grpc.CallOption) (*interventionsv1.Reminder, error) {
	if in.GetName() == f.old.GetName() {
		return f.old, nil
	}
	if f.made != nil && in.GetName() == f.made.GetName() {
		return f.made, nil
	}
	return nil, status.Error(codes.NotFound, in.GetName())
}

// CreateReminder makes r2 as asked, unless an earlier try made made.
func (f *resendFakes) CreateReminder(_ context.Context, in *interventionsv1.CreateReminderRequest, _ ...grpc.CallOption) (*interventionsv1.Reminder, error) {
	if f.made != nil {
		return nil, apperr.RequestIDReused(in.GetRequestId(), f.made.GetName())
	}
	if f.gone != "" {
		return nil, apperr.RequestIDReused(in.GetRequestId(), f.gone)
	}
	f.created, f.appointment = in.GetReminder(), in.GetAppointmentStartTime()
	out := proto.Clone(in.GetReminder()).(*interventionsv1.Reminder)
	out.Name = "clinics/north/reminders/r2"
	return out, nil
}

func (f *resendFakes) GetIntervention(context.Context, *interventionsv1.GetInterventionRequest, ...grpc.CallOption) (*interventionsv1.Intervention, error) {
	f.ivReads++
	if f.ivErr != nil {
		return nil, f.ivErr
	}
	return &interventionsv1.Intervention{StartTime: timestamppb.New(f.meeting)}, nil
}

// A resend whose due time cannot be worked out for want of a read fails
// the attempt, to be retried, rather than falling back to another due time
// than an earlier attempt may have used under the same request id; a
// meeting that is gone leaves the due time as asked. Outside quiet hours
// the meeting is read too: the send-by time depends on it.
func TestResendDueTimeIsTheSameOnEveryAttempt(t *testing.T) {
	chicago, err := time.LoadLocation("America/Chicago")
	if err != nil {
		t.Fatal(err)
	}
	night, noon := time.Date(2026, 12, 9, 22, 5, 0, 0, chicago), time.Date(2026, 12, 9, 12, 0, 0, 0, chicago)
	old := &interventionsv1.Reminder{Name: "clinics/north/reminders/r1", RelatedResource: "clinics/north/interventions/i1", Message: "Reminder",
		Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom", Family: "clinics/north/families/f1"}}
	for _, c := range []struct {
		name      string
		due       time.Time
		ivErr     error
		wantErr   bool
		wantDue   time.Time
		wantReads int
	}{
		{"the service is down", night, status.Error(codes.Unavailable, "down"), true, time.Time{}, 1},
		{"the meeting is gone", night, status.Error(codes.NotFound, "gone"), false, night, 1},
		{"outside quiet hours", noon, nil, false, noon, 1},
		{"outside quiet hours, the service is down", noon, status.Error(codes.Unavailable, "down"), true, time.Time{}, 1},
	} {
		f := &resendFakes{old: old, meeting: noon.Add(48 * time.Hour), ivErr: c.ivErr}
		a := &Activities{Interventions: f, Families: familyFake{}}
		_, err := a.ResendReminder(context.Background(), ResendRequest{Failed: old.GetName(), Due: c.due, RequestID: "r"})
		switch {
		case c.wantErr && (err == nil || f.created != nil):
			t.Errorf("%s: err %v, created %v; want the attempt to fail before creating", c.name, err, f.created)
		case !c.wantErr && (err != nil || !f.created.GetDueTime().AsTime().Equal(c.wantDue)):
			t.Errorf("%s: err %v, due %v; want %v", c.name, err, f.created.GetDueTime().AsTime(), c.wantDue)
		}
		if f.ivReads != c.wantReads {
			t.Errorf("%s: the meeting was read %d times, want %d", c.name, f.ivReads, c.wantReads)
		}
	}
}

type familyFake struct {
	familiesv1.FamiliesServiceClient
}

func (familyFake) GetFamily(context.Context, *familiesv1.GetFamilyRequest, ...grpc.CallOption) (*familiesv1.Family, error) {
	return &familiesv1.Family{Members: []*familiesv1.Member{{Id: "mom", TimeZone: "America/Chicago", ConsentToContact: true,
		QuietHours: &familiesv1.QuietHours{Start: "21:00", End: "08:00"}}, {Id: "dad"}}}, nil
}

type recordFamily struct {
	familiesv1.FamiliesServiceClient
	fam *familiesv1.Family
}

func (f recordFamily) GetFamily(context.Context, *familiesv1.GetFamilyRequest, ...grpc.CallOption) (*familiesv1.Family, error) {
	return f.fam, nil
}

// A resend goes on the channel the family's record keeps for the person
// now: one taken off it since (the reason the first failed, perhaps), or a
// preference changed, is not used again; staff, and a person the record
// keeps no channel for, keep the failed reminder's.
func TestResendGoesOnTheChannelKeptNow(t *testing.T) {
	email := &familiesv1.ContactChannel{Kind: familiesv1.ChannelKind_CHANNEL_KIND_EMAIL, Value: "ana@example.org"}
	sms := &familiesv1.ContactChannel{Kind: familiesv1.ChannelKind_CHANNEL_KIND_SMS, Value: "+15555550101"}
	fam := &familiesv1.Family{
		LovedOne: &familiesv1.LovedOne{MayContactDirectly: true, ContactChannels: []*familiesv1.ContactChannel{email, sms}},
		Members: []*familiesv1.Member{
			{Id: "mom", ConsentToContact: true, ContactChannels: []*familiesv1.ContactChannel{email, sms}, PreferredChannel: familiesv1.ChannelKind_CHANNEL_KIND_SMS},
			{Id: "dad", ConsentToContact: true, ContactChannels: []*familiesv1.ContactChannel{email}},
			{Id: "aunt", ConsentToContact: true},
		}}
	const family = "clinics/north/families/f1"
	for _, c := range []struct {
		name string
		to   *interventionsv1.Recipient
		want interventionsv1.ChannelKind
	}{
		{"a member's preference changed", &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom", Family: family,
			Channel: interventionsv1.ChannelKind_CHANNEL_KIND_EMAIL}, interventionsv1.ChannelKind_CHANNEL_KIND_SMS},
		{"a member's channel taken off", &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "dad", Family: family,
			Channel: interventionsv1.ChannelKind_CHANNEL_KIND_PHONE}, interventionsv1.ChannelKind_CHANNEL_KIND_EMAIL},
		{"a member with no channel left", &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "aunt", Family: family,
			Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS}, interventionsv1.ChannelKind_CHANNEL_KIND_SMS},
		{"the loved one", &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_LOVED_ONE, Family: family,
			Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS}, interventionsv1.ChannelKind_CHANNEL_KIND_EMAIL},
		{"a counselor", &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR, Id: "counselor-1",
			Channel: interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP}, interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP},
	} {
		f := &resendFakes{meeting: time.Now().Add(48 * time.Hour), old: &interventionsv1.Reminder{Name: "clinics/north/reminders/r1", Recipient: c.to,
			RelatedResource: "clinics/north/interventions/i1", Message: "Reminder"}}
		a := &Activities{Interventions: f, Families: recordFamily{fam: fam}}
		if _, err := a.Resend(context.Background(), ResendRequest{Failed: "clinics/north/reminders/r1", Due: time.Now(), RequestID: "r"}); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got := f.created.GetRecipient()
		if got.GetChannel() != c.want || got.GetId() != c.to.GetId() || got.GetKind() != c.to.GetKind() || got.GetFamily() != c.to.GetFamily() {
			t.Errorf("%s: resent to %v, want %v on %v", c.name, got, c.to, c.want)
		}
	}
}

// A resend to a family member waits out their quiet hours when that is
// still before what it reminds of; otherwise, and for a counselor, it is
// due at once.
func TestResendWaitsOutQuietHours(t *testing.T) {
	chicago, err := time.LoadLocation("America/Chicago")
	if err != nil {
		t.Fatal(err)
	}
	night := time.Date(2026, 12, 9, 22, 5, 0, 0, chicago)
	member := &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
		Family: "clinics/north/families/f1"}
	counselor := &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR, Id: "counselor-1"}
	for _, c := range []struct {
		name    string
		to      *interventionsv1.Recipient
		meeting time.Time
		want    time.Time
		sendBy  time.Time // zero: none
	}{
		// Sent by the evening's quiet hours, or it fails and goes again.
		{"member, meeting at noon", member, time.Date(2026, 12, 10, 12, 0, 0, 0, chicago), time.Date(2026, 12, 10, 8, 0, 0, 0, chicago),
			time.Date(2026, 12, 10, 21, 0, 0, 0, chicago)},
		// Not sent by the evening's quiet hours, it would go out in them
		// anyway: the meeting is in them.
		{"member, meeting at 23:00", member, time.Date(2026, 12, 10, 23, 0, 0, 0, chicago), time.Date(2026, 12, 10, 8, 0, 0, 0, chicago),
			time.Time{}},
		// Due in quiet hours on purpose: nothing later is in time.
		{"member, meeting at 07:30", member, time.Date(2026, 12, 10, 7, 30, 0, 0, chicago), night, time.Time{}},
		{"counselor", counselor, time.Date(2026, 12, 10, 12, 0, 0, 0, chicago), night, time.Time{}},
	} {
		f := &resendFakes{meeting: c.meeting, old: &interventionsv1.Reminder{Name: "clinics/north/reminders/r1", Recipient: c.to,
			RelatedResource: "clinics/north/interventions/i1", Message: "Reminder"}}
		a := &Activities{Interventions: f, Families: familyFake{}}
		out, err := a.Resend(context.Background(), ResendRequest{Failed: "clinics/north/reminders/r1", Due: night, RequestID: "r"})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := f.created.GetDueTime().AsTime(); !got.Equal(c.want) {
			t.Errorf("%s: resend due %v, want %v", c.name, got.In(chicago), c.want)
		}
		if got := f.created.GetSendByTime(); (got == nil) != c.sendBy.IsZero() || (got != nil && !got.AsTime().Equal(c.sendBy)) {
			t.Errorf("%s: resend send by %v, want %v", c.name, got, c.sendBy)
		}
		// Its failure can come until its send-by time, or its due time.
		failsBy := c.sendBy
		if failsBy.IsZero() {
			failsBy = c.want
		}
		if out.Reminder != "clinics/north/reminders/r2" || !out.FailsBy.Equal(failsBy) {
			t.Errorf("%s: resent %+v, want r2 failing by %v", c.name, out, failsBy.In(chicago))
		}
	}
}

type signsFake struct {
	familiesv1.FamiliesServiceClient
	signs     []string
	retracted []string
}

func (f signsFake) ListWarningSigns(context.Context, *familiesv1.ListWarningSignsRequest, ...grpc.CallOption) (*familiesv1.ListWarningSignsResponse, error) {
	out := &familiesv1.ListWarningSignsResponse{}
	for _, s := range f.signs {
		w := &familiesv1.WarningSign{Name: s}
		if slices.Contains(f.retracted, s) {
			w.RetractTime, w.RetractedBy, w.RetractReason = timestamppb.Now(), "counselor-1", "wrong family"
		}
		out.WarningSigns = append(out.WarningSigns, w)
	}
	return out, nil
}

// An overdose retracted as recorded in error is not listed as waiting,
// and its alerts are not even asked for.
func TestOverdosesSinceLeavesOutRetracted(t *testing.T) {
	fam := "clinics/north/families/f1"
	retracted, open := fam+"/warningSigns/w1", fam+"/warningSigns/w2"
	alerts := &alertsFake{}
	a := &Activities{Families: signsFake{signs: []string{retracted, open}, retracted: []string{retracted}}, Interventions: alerts}
	got, err := a.OverdosesSince(context.Background(), OverdosesRequest{Family: fam, Since: time.Now().Add(-time.Hour)})
	if err != nil || len(got) != 1 || got[0] != open {
		t.Fatalf("OverdosesSince = %v, %v; want only %s", got, err, open)
	}
	if len(alerts.filters) != 1 {
		t.Fatalf("alerts asked %v; want only the standing overdose's", alerts.filters)
	}
}

type alertsFake struct {
	interventionsv1.InterventionsServiceClient
	answered map[string]string    // sign -> the workflow whose alert answered it
	made     map[string]time.Time // sign -> when its alert was made, if known
	filters  []string
}

func (f *alertsFake) ListReminders(_ context.Context, in *interventionsv1.ListRemindersRequest, _ ...grpc.CallOption) (*interventionsv1.ListRemindersResponse, error) {
	f.filters = append(f.filters, in.GetFilter())
	for s, origin := range f.answered {
		// As the service filters: related_resource, and origin_workflow
		// when the filter leaves one out.
		base := fmt.Sprintf("kind = OVERDOSE_ALERT AND related_resource = %q", s)
		var before time.Time
		if rest, ok := strings.CutPrefix(in.GetFilter(), base+fmt.Sprintf(" AND origin_workflow = %q AND create_time < ", origin)); ok {
			before, _ = time.Parse(time.RFC3339Nano, strings.Trim(rest, `"`))
		}
		if in.GetFilter() == base || (strings.HasPrefix(in.GetFilter(), base+" AND origin_workflow != ") &&
			in.GetFilter() != base+fmt.Sprintf(" AND origin_workflow != %q", origin)) ||
			(!before.IsZero() && f.made[s].Before(before)) {
			return &interventionsv1.ListRemindersResponse{Reminders: []*interventionsv1.Reminder{
				{Name: "clinics/north/reminders/a", OriginWorkflow: origin}}}, nil
		}
	}
	return &interventionsv1.ListRemindersResponse{}, nil
}

// An overdose an earlier run already answered (its alert names it) is not
// answered again.
func TestOverdosesSinceLeavesOutAnswered(t *testing.T) {
	fam := "clinics/north/families/f1"
	answered, open := fam+"/warningSigns/w1", fam+"/warningSigns/w2"
	alerts := &alertsFake{answered: map[string]string{answered: "boundary/f1"}}
	a := &Activities{Families: signsFake{signs: []string{answered, open}}, Interventions: alerts}
	got, err := a.OverdosesSince(context.Background(), OverdosesRequest{Family: fam, Since: time.Now().Add(-time.Hour)})
	if err != nil || len(got) != 1 || got[0] != open {
		t.Fatalf("OverdosesSince = %v, %v; want only %s", got, err, open)
	}
	if len(alerts.filters) != 2 {
		t.Fatalf("alerts asked %v", alerts.filters)
	}
}

// Asked about one sign, the activity looks up that sign's alerts alone.
func TestOverdosesSinceAskedAboutOneSign(t *testing.T) {
	fam := "clinics/north/families/f1"
	mine, other := fam+"/warningSigns/w1", fam+"/warningSigns/w2"
	alerts := &alertsFake{}
	a := &Activities{Families: signsFake{signs: []string{mine, other}}, Interventions: alerts}
	got, err := a.OverdosesSince(context.Background(), OverdosesRequest{Family: fam, Since: time.Now().Add(-time.Hour), Sign: mine})
	if err != nil || len(got) != 1 || got[0] != mine {
		t.Fatalf("OverdosesSince = %v, %v; want only %s", got, err, mine)
	}
	if len(alerts.filters) != 1 || !strings.Contains(alerts.filters[0], mine) {
		t.Fatalf("alerts asked %v; want the one sign's", alerts.filters)
	}
}

// An alert the asking workflow made itself (a retried workflow task, its
// alert made by the lost try) does not answer the overdose for it; an
// alert of any other workflow does.
func TestOverdosesSinceIgnoresTheAskersOwnAlert(t *testing.T) {
	fam := "clinics/north/families/f1"
	mine, theirs := fam+"/warningSigns/w1", fam+"/warningSigns/w2"
	alerts := &alertsFake{answered: map[string]string{mine: "overdose/w1", theirs: "boundary/f1"}}
	a := &Activities{Families: signsFake{signs: []string{mine, theirs}}, Interventions: alerts}
	got, err := a.OverdosesSince(context.Background(), OverdosesRequest{Family: fam, Since: time.Now().Add(-time.Hour), IgnoreFrom: "overdose/w1"})
	if err != nil || len(got) != 1 || got[0] != mine {
		t.Fatalf("OverdosesSince = %v, %v; want only %s", got, err, mine)
	}
}

// For a workflow id used again (the boundary workflow's, per family), an
// alert of the same id due before the asking execution began is an
// earlier execution's answer; one due since is the asker's own.
func TestOverdosesSinceTakesAnEarlierExecutionsAlert(t *testing.T) {
	fam := "clinics/north/families/f1"
	earlier, own := fam+"/warningSigns/w1", fam+"/warningSigns/w2"
	began := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	alerts := &alertsFake{answered: map[string]string{earlier: "boundary/f1", own: "boundary/f1"},
		made: map[string]time.Time{earlier: began.Add(-time.Minute), own: began.Add(time.Second)}}
	a := &Activities{Families: signsFake{signs: []string{earlier, own}}, Interventions: alerts}
	got, err := a.OverdosesSince(context.Background(), OverdosesRequest{Family: fam, Since: began.Add(-time.Hour),
		IgnoreFrom: "boundary/f1", IgnoreSince: began})
	if err != nil || len(got) != 1 || got[0] != own {
		t.Fatalf("OverdosesSince = %v, %v; want only %s (answered by this execution's lost try)", got, err, own)
	}
	// Without IgnoreSince every alert of the id is the asker's.
	got, err = a.OverdosesSince(context.Background(), OverdosesRequest{Family: fam, Since: began.Add(-time.Hour), IgnoreFrom: "boundary/f1"})
	if err != nil || len(got) != 2 {
		t.Fatalf("OverdosesSince without IgnoreSince = %v, %v; want both", got, err)
	}
}

// Cancelling for some people only asks for their reminders, and nobody
// else's.
func TestCancelRemindersForSomeOnly(t *testing.T) {
	f := &alertsFake{}
	a := &Activities{Interventions: f}
	if _, err := a.CancelReminders(context.Background(), CancelRemindersRequest{Clinic: "north", Related: "clinics/north/interventions/i1",
		Reason: "no longer taking part", RequestID: "r", Only: []Person{{Kind: "member", ID: "mom"}, {Kind: "counselor", ID: "counselor-1"}}}); err != nil {
		t.Fatal(err)
	}
	if len(f.filters) != 2 {
		t.Fatalf("filters %v: want one for each of two people", f.filters)
	}
	for _, flt := range f.filters {
		// One listing of every reminder not ended: lists by state, one
		// after another, miss a reminder whose state moved between them.
		if !strings.Contains(flt, "state != DELIVERED AND state != FAILED AND state != CANCELLED") || strings.Contains(flt, "state = ") {
			t.Fatalf("filter %q does not take every open state at once", flt)
		}
	}
	for i, who := range []string{`recipient_kind = FAMILY_MEMBER AND recipient_id = "mom"`, `recipient_kind = COUNSELOR AND recipient_id = "counselor-1"`} {
		if !strings.HasSuffix(f.filters[i], " AND "+who) {
			t.Fatalf("filter %q does not end with %q", f.filters[i], who)
		}
	}
	// Someone of a kind reminders do not know is skipped: the filter it
	// would make does not parse, and dropping it must not widen the
	// cancelling to everyone.
	f.filters = nil
	if _, err := a.CancelReminders(context.Background(), CancelRemindersRequest{Clinic: "north", Related: "clinics/north/interventions/i1",
		Reason: "x", RequestID: "r", Only: []Person{{Kind: "stranger", ID: "x"}}}); err != nil || len(f.filters) != 0 {
		t.Fatalf("unknown kind: filters %v, %v; want none asked", f.filters, err)
	}
	// Limited to a kind: meeting reminders only, so an overdue outcome
	// stays with a counselor who handed the family over.
	f.filters = nil
	if _, err := a.CancelReminders(context.Background(), CancelRemindersRequest{Clinic: "north", Related: "clinics/north/interventions/i1",
		Reason: "x", RequestID: "r", Only: []Person{{Kind: "counselor", ID: "counselor-1"}}, Kind: "INTERVENTION_UPCOMING"}); err != nil || len(f.filters) != 1 {
		t.Fatalf("by kind: filters %v, %v", f.filters, err)
	}
	for _, flt := range f.filters {
		if !strings.HasSuffix(flt, " AND kind = INTERVENTION_UPCOMING") {
			t.Fatalf("filter %q is not limited to the kind", flt)
		}
	}
	// Limited to a workflow's own reminders.
	f.filters = nil
	if _, err := a.CancelReminders(context.Background(), CancelRemindersRequest{Clinic: "north", Related: "clinics/north/interventions/i1",
		Reason: "x", RequestID: "r", Origin: "intervention/clinics/north/interventions/i1"}); err != nil || len(f.filters) != 1 ||
		!strings.HasSuffix(f.filters[0], ` AND origin_workflow = "intervention/clinics/north/interventions/i1"`) {
		t.Fatalf("by origin: filters %v, %v", f.filters, err)
	}
	// Every reminder a workflow made, whatever it is about; never every
	// reminder of the clinic.
	f.filters = nil
	if _, err := a.CancelReminders(context.Background(), CancelRemindersRequest{Clinic: "north", Reason: "x", RequestID: "r",
		Origin: "boundary/clinics/north/families/f1"}); err != nil || len(f.filters) != 1 ||
		strings.Contains(f.filters[0], "related_resource") || !strings.HasSuffix(f.filters[0], ` AND origin_workflow = "boundary/clinics/north/families/f1"`) {
		t.Fatalf("by origin alone: filters %v, %v", f.filters, err)
	}
	f.filters = nil
	if _, err := a.CancelReminders(context.Background(), CancelRemindersRequest{Clinic: "north", Reason: "x", RequestID: "r"}); err == nil || len(f.filters) != 0 {
		t.Fatalf("neither related nor origin: filters %v, %v; want refused", f.filters, err)
	}
	if _, err := a.CancelReminders(context.Background(), CancelRemindersRequest{Clinic: "north", Related: "x", RequestID: "r",
		Kind: "NO_SUCH_KIND"}); err == nil {
		t.Fatal("an unknown reminder kind widened or passed")
	}
}

type matchFake struct {
	referralsv1.ReferralsServiceClient
	ranked  []string          // programs, best first, as matched now
	storedP string            // the program an earlier attempt used, if any
	named   bool              // the service names the referral made under a reused id
	tried   []string          // programs CreateReferral was called with
	ids     map[string]string // request id per program tried
	asked   []*referralsv1.MatchProgramsRequest
	reasons []string // the reason of each referral asked for
	// refusing has a program refuse every referral for a reason.
	refusing map[string]string
}

func (f *matchFake) MatchPrograms(_ context.Context, in *referralsv1.MatchProgramsRequest, _ ...grpc.CallOption) (*referralsv1.MatchProgramsResponse, error) {
	f.asked = append(f.asked, in)
	out := &referralsv1.MatchProgramsResponse{}
	for _, p := range f.ranked {
		out.Matches = append(out.Matches, &referralsv1.ProgramMatch{Program: &referralsv1.Program{Name: p}})
	}
	return out, nil
}

func (f *matchFake) CreateReferral(_ context.Context, in *referralsv1.CreateReferralRequest, _ ...grpc.CallOption) (*referralsv1.Referral, error) {
	p := in.GetReferral().GetProgram()
	f.tried, f.ids[p] = append(f.tried, p), in.GetRequestId()
	f.reasons = append(f.reasons, in.GetReferral().GetReason())
	if reason := f.refusing[p]; reason != "" {
		return nil, apperr.FailedPrecondition(reason, p+" refuses", map[string]string{"resource": p})
	}
	if f.storedP != "" && p != f.storedP {
		made := ""
		if f.named {
			made = "clinics/north/referrals/at-" + lastSegment(f.storedP)
		}
		return nil, apperr.RequestIDReused(in.GetRequestId(), made)
	}
	return &referralsv1.Referral{Name: "clinics/north/referrals/at-" + lastSegment(p)}, nil
}

func lastSegment(name string) string { return name[strings.LastIndex(name, "/")+1:] }

// A retried support referral whose best match changed since the attempt
// that made it finds that referral under the same request id instead of
// failing the workflow; one whose program is no longer matched at all is
// taken as made.
func TestSupportReferralRetryAfterTheMatchChanged(t *testing.T) {
	p1, p2, p3 := "clinics/north/programs/p1", "clinics/north/programs/p2", "clinics/north/programs/p3"
	for _, c := range []struct {
		name          string
		ranked        []string
		stored        string
		named         bool
		want, wantTry string
	}{
		{"first attempt", []string{p1, p2}, "", false, "clinics/north/referrals/at-p1", p1},
		{"made with the second match of now", []string{p2, p1, p3}, p1, false, "clinics/north/referrals/at-p1", p2 + "," + p1},
		{"made with a program no longer matched", []string{p2, p3}, p1, false, "", p2 + "," + p3},
		{"made with another program, named", []string{p2, p1, p3}, p1, true, "clinics/north/referrals/at-p1", p2},
		{"made with a program no longer matched, named", []string{p2, p3}, p1, true, "clinics/north/referrals/at-p1", p2},
	} {
		refs := &matchFake{ranked: c.ranked, storedP: c.stored, named: c.named, ids: map[string]string{}}
		a := &Activities{Referrals: refs, Families: familyFake{}}
		got, err := a.CreateSupportReferrals(context.Background(), SupportRequest{Family: "clinics/north/families/f1",
			Kinds: []string{"HARM_REDUCTION_NALOXONE"}, Urgency: "IMMEDIATE", RequestID: "r"})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if strings.Join(got, ",") != c.want || strings.Join(refs.tried, ",") != c.wantTry {
			t.Errorf("%s: referrals %v after trying %v; want %q after %q", c.name, got, refs.tried, c.want, c.wantTry)
		}
		var first string
		for _, id := range refs.ids {
			if first == "" {
				first = id
			}
			if id != first {
				t.Errorf("%s: request ids differ between programs: %v", c.name, refs.ids)
			}
		}
	}
}

// Care accepted beside medication (inpatient, outpatient, intensive
// outpatient) is referred as treatment the person said yes to, not as
// support while they are out of treatment; harm reduction and family
// support keep their wording.
func TestSupportReasonSaysWhatWasAccepted(t *testing.T) {
	for kind, want := range map[string]string{
		"INPATIENT":               "Treatment the person accepted at a family intervention.",
		"INTENSIVE_OUTPATIENT":    "Treatment the person accepted at a family intervention.",
		"HARM_REDUCTION_NALOXONE": "Harm reduction offered while treatment is declined.",
		"FAMILY_SUPPORT_GROUP":    "Support for the family while their loved one is not in treatment.",
	} {
		refs := &matchFake{ranked: []string{"clinics/north/programs/p1"}, ids: map[string]string{}}
		a := &Activities{Referrals: refs, Families: familyFake{}}
		if _, err := a.CreateSupportReferrals(context.Background(), SupportRequest{Family: "clinics/north/families/f1",
			Kinds: []string{kind}, Urgency: "URGENT", RequestID: "r"}); err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
		if len(refs.reasons) != 1 || refs.reasons[0] != want {
			t.Errorf("%s referred with %q; want %q", kind, refs.reasons, want)
		}
	}
}

// A matched program that changed since the match (it no longer offers
// the service, or was deleted) is passed over for the next; when every
// one refuses, the kind is skipped as if none had matched, and the other
// kinds are still referred: the workflow is not ended by a directory that
// changed under it. Any other refusal still fails the call.
func TestSupportReferralPassesOverAProgramThatChanged(t *testing.T) {
	p1, p2 := "clinics/north/programs/p1", "clinics/north/programs/p2"
	for _, c := range []struct {
		name     string
		refusing map[string]string
		want     string
		fails    bool
	}{
		{"the first no longer offers it", map[string]string{p1: "SERVICE_NOT_OFFERED"}, "clinics/north/referrals/at-p2,clinics/north/referrals/at-p2", false},
		{"every one changed", map[string]string{p1: "SERVICE_NOT_OFFERED", p2: "PROGRAM_DELETED"}, "", false},
		{"another refusal", map[string]string{p1: "CONSENT_REQUIRED"}, "", true},
	} {
		refs := &matchFake{ranked: []string{p1, p2}, ids: map[string]string{}, refusing: c.refusing}
		a := &Activities{Referrals: refs, Families: familyFake{}}
		got, err := a.CreateSupportReferrals(context.Background(), SupportRequest{Family: "clinics/north/families/f1",
			Kinds: []string{"HARM_REDUCTION_NALOXONE", "HARM_REDUCTION_SYRINGE_SERVICES"}, Urgency: "IMMEDIATE", RequestID: "r"})
		if (err != nil) != c.fails || strings.Join(got, ",") != c.want {
			t.Errorf("%s: referrals %v, %v; want %q, failing %v", c.name, got, err, c.want, c.fails)
		}
	}
}

func (familyFake) ListBarriers(context.Context, *familiesv1.ListBarriersRequest, ...grpc.CallOption) (*familiesv1.ListBarriersResponse, error) {
	return &familiesv1.ListBarriersResponse{}, nil
}

func (recordFamily) ListBarriers(context.Context, *familiesv1.ListBarriersRequest, ...grpc.CallOption) (*familiesv1.ListBarriersResponse, error) {
	return &familiesv1.ListBarriersResponse{}, nil
}

// The loved one's programs are matched by where they would travel from and
// the language they speak; a member's are not, by the loved one's.
func TestMatchedWhereTheLovedOneIs(t *testing.T) {
	fam := &familiesv1.Family{
		LovedOne: &familiesv1.LovedOne{Locality: "Riverside", PostalCode: "60546", Language: "es", PrefersTelehealth: true,
			BirthDate: time.Now().AddDate(-17, 0, -40).Format(time.DateOnly)},
		Members: []*familiesv1.Member{{Id: "mom", ConsentToContact: true}}}
	for _, member := range []string{"", "mom"} {
		refs := &matchFake{ranked: []string{"clinics/north/programs/p1"}, ids: map[string]string{}}
		a := &Activities{Referrals: refs, Families: recordFamily{fam: fam}}
		if _, err := a.CreateSupportReferrals(context.Background(), SupportRequest{Family: "clinics/north/families/f1",
			Member: member, Kinds: []string{"PEER_SUPPORT"}, Urgency: "ROUTINE", RequestID: "r"}); err != nil || len(refs.asked) != 1 {
			t.Fatalf("member %q: %d matches asked, %v", member, len(refs.asked), err)
		}
		q := refs.asked[0]
		got := []any{q.GetLocality(), q.GetPostalCode(), q.GetLanguage(), q.GetPrefersTelehealth(), q.GetAge()}
		want := []any{"Riverside", "60546", "es", true, int32(17)}
		if member != "" {
			want = []any{"", "", "", false, int32(0)}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("member %q: matched by %v, want %v", member, got, want)
		}
	}
}

// Age counts whole years on the day it is in the loved one's zone, and is
// 0 (left out of matching) when the birth date is missing, malformed or
// ahead.
func TestAge(t *testing.T) {
	// 2026-12-05 03:00 UTC is still 2026-12-04 in Chicago.
	now := time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		birth, zone string
		want        int32
	}{
		{"2008-12-05", "", 18},
		{"2008-12-05", "America/Chicago", 17}, // a birthday not yet come there
		{"2008-12-04", "America/Chicago", 18},
		{"2008-12-06", "", 17},
		{"1990-02-28", "Nowhere/Else", 36}, // an unknown zone counts in UTC
		{"", "", 0},
		{"05/12/2008", "", 0},
		{"2027-01-01", "", 0},
	} {
		if got := age(c.birth, c.zone, now); got != c.want {
			t.Errorf("age(%q, %q) = %d, want %d", c.birth, c.zone, got, c.want)
		}
	}
}

// A member who left the family since the workflow read it is not referred,
// and the workflow goes on; one still in it is.
func TestSupportReferralForAMemberWhoLeft(t *testing.T) {
	// mom may be contacted; uncle left the family; dad withdrew his
	// consent to contact (or never gave it): programs that reach out are
	// not given him.
	for _, c := range []struct {
		member string
		want   int
	}{{"mom", 1}, {"uncle", 0}, {"dad", 0}} {
		refs := &matchFake{ranked: []string{"clinics/north/programs/p1"}, ids: map[string]string{}}
		a := &Activities{Referrals: refs, Families: familyFake{}}
		got, err := a.CreateSupportReferrals(context.Background(), SupportRequest{Family: "clinics/north/families/f1",
			Member: c.member, Kinds: []string{"FAMILY_SUPPORT_GROUP"}, Urgency: "ROUTINE", RequestID: "r"})
		if err != nil || len(got) != c.want || len(refs.tried) != c.want {
			t.Errorf("member %s: referrals %v after %v, %v; want %d", c.member, got, refs.tried, err, c.want)
		}
	}
}

// A family without a first contact gives a plan without one, not the
// epoch.
func TestLoadPlanKeepsAnUnknownFirstContactUnknown(t *testing.T) {
	a := &Activities{Interventions: &resendFakes{meeting: time.Now().Add(time.Hour)}, Families: familyFake{}}
	p, err := a.LoadPlan(context.Background(), "clinics/north/interventions/i1")
	if err != nil || !p.FirstContact.IsZero() {
		t.Fatalf("plan first contact = %v, %v; want the zero time", p.FirstContact, err)
	}
}

// proposalFake answers a proposal's retry as the service does when the
// first try's draft was made from other reads: REQUEST_ID_REUSED.
type proposalFake struct {
	interventionsv1.InterventionsServiceClient
	drafts []*interventionsv1.Intervention
	made   string // the draft the service names under the reused id, if any
	listed int
}

func (f *proposalFake) GetIntervention(_ context.Context, in *interventionsv1.GetInterventionRequest, _ ...grpc.CallOption) (*interventionsv1.Intervention, error) {
	return &interventionsv1.Intervention{Name: in.GetName(), Family: "clinics/north/families/f1"}, nil
}

func (f *proposalFake) CreateIntervention(_ context.Context, in *interventionsv1.CreateInterventionRequest, _ ...grpc.CallOption) (*interventionsv1.Intervention, error) {
	return nil, apperr.RequestIDReused(in.GetRequestId(), f.made)
}

func (f *proposalFake) ListInterventions(_ context.Context, in *interventionsv1.ListInterventionsRequest, _ ...grpc.CallOption) (*interventionsv1.ListInterventionsResponse, error) {
	f.listed++
	if in.GetFilter() != `family = "clinics/north/families/f1"` {
		return nil, status.Error(codes.InvalidArgument, "unexpected filter "+in.GetFilter())
	}
	return &interventionsv1.ListInterventionsResponse{Interventions: f.drafts}, nil
}

// A proposal whose earlier try drafted it from reads that changed since
// (the boundaries in its notes) answers with that draft, the newest to
// follow the previous meeting, instead of failing the workflow.
func TestProposalMadeByAnEarlierTry(t *testing.T) {
	prev := "clinics/north/interventions/i1"
	at := func(m int) *timestamppb.Timestamp {
		return timestamppb.New(time.Date(2026, 12, 3, 10, m, 0, 0, time.UTC))
	}
	f := &proposalFake{drafts: []*interventionsv1.Intervention{
		{Name: "clinics/north/interventions/older", PreviousIntervention: prev, CreateTime: at(1)},
		{Name: "clinics/north/interventions/other", PreviousIntervention: "clinics/north/interventions/i0", CreateTime: at(9)},
		{Name: "clinics/north/interventions/draft", PreviousIntervention: prev, CreateTime: at(5)},
		{Name: prev, CreateTime: at(0)},
	}}
	a := &Activities{Interventions: f, Families: familyFake{}}
	got, err := a.ProposeIntervention(context.Background(), ProposeRequest{Previous: prev, Level: 2, Notes: "n", RequestID: "r"})
	if err != nil || got != "clinics/north/interventions/draft" {
		t.Fatalf("ProposeIntervention = %q, %v; want the newest draft after %s", got, err, prev)
	}
	f.drafts = f.drafts[1:2]
	_, err = a.ProposeIntervention(context.Background(), ProposeRequest{Previous: prev, Level: 2, Notes: "n", RequestID: "r"})
	if ErrorType(err) != "REQUEST_ID_REUSED" {
		t.Fatalf("with no draft to find: %v; want REQUEST_ID_REUSED", err)
	}
	// The service names the draft: no listing.
	f.made, f.listed = "clinics/north/interventions/named", 0
	got, err = a.ProposeIntervention(context.Background(), ProposeRequest{Previous: prev, Level: 2, Notes: "n", RequestID: "r"})
	if err != nil || got != f.made || f.listed != 0 {
		t.Fatalf("ProposeIntervention = %q, %v after %d listings; want %s, named by the service", got, err, f.listed, f.made)
	}
}

// A reminder whose request id an earlier try used with other data is the
// one that try made, when the service names it: the workflow follows its
// delivery under that name.
func TestReminderMadeByAnEarlierTry(t *testing.T) {
	f := &reusedReminders{}
	a := &Activities{Interventions: f}
	in := ReminderRequest{Clinic: "north", To: Person{Kind: "counselor", ID: "c1", Channel: "IN_APP"}, Kind: "CHECK_IN", Message: "m", RequestID: "r"}
	if got, err := a.SendReminder(context.Background(), in); ErrorType(err) != "REQUEST_ID_REUSED" || got != "" {
		t.Fatalf("unnamed: %q, %v; want REQUEST_ID_REUSED", got, err)
	}
	f.made = "clinics/north/reminders/first"
	if got, err := a.SendReminder(context.Background(), in); err != nil || got != f.made {
		t.Fatalf("named: %q, %v; want %s", got, err, f.made)
	}
}

type reusedReminders struct {
	interventionsv1.InterventionsServiceClient
	made string
}

func (f *reusedReminders) CreateReminder(_ context.Context, in *interventionsv1.CreateReminderRequest, _ ...grpc.CallOption) (*interventionsv1.Reminder, error) {
	return nil, apperr.RequestIDReused(in.GetRequestId(), f.made)
}

// draftFake keeps the draft a proposal creates.
type draftFake struct {
	interventionsv1.InterventionsServiceClient
	created *interventionsv1.Intervention
}

func (f *draftFake) GetIntervention(_ context.Context, in *interventionsv1.GetInterventionRequest, _ ...grpc.CallOption) (*interventionsv1.Intervention, error) {
	return &interventionsv1.Intervention{Name: in.GetName(), Family: "clinics/north/families/f1", Counselor: "c-1",
		Participants: []*interventionsv1.Participant{{MemberId: "mom"}, {MemberId: "uncle"}}}, nil
}

func (f *draftFake) CreateIntervention(_ context.Context, in *interventionsv1.CreateInterventionRequest, _ ...grpc.CallOption) (*interventionsv1.Intervention, error) {
	f.created = in.GetIntervention()
	return &interventionsv1.Intervention{Name: "clinics/north/interventions/next"}, nil
}

// The next meeting is drafted with the participants still in the family:
// the uncle, who left since the last one, would have the service refuse
// the draft and end the boundary workflow. It goes to the family's
// counselor now, who is asked to review it, not to the one who led the
// last meeting.
func TestProposalLeavesOutWhoLeftTheFamily(t *testing.T) {
	f := &draftFake{}
	a := &Activities{Interventions: f, Families: reassignedFake{}}
	got, err := a.ProposeIntervention(context.Background(), ProposeRequest{Previous: "clinics/north/interventions/i1", Level: 2, RequestID: "r"})
	if err != nil || got != "clinics/north/interventions/next" {
		t.Fatalf("ProposeIntervention = %q, %v", got, err)
	}
	if ps := f.created.GetParticipants(); len(ps) != 1 || ps[0].GetMemberId() != "mom" {
		t.Fatalf("draft participants = %v; want mom alone", ps)
	}
	if c := f.created.GetCounselor(); c != "c-2" {
		t.Fatalf("draft counselor = %q; want c-2, the family's now", c)
	}
}

// reassignedFake is familyFake's family, handed to counselor c-2.
type reassignedFake struct{ familyFake }

func (f reassignedFake) GetFamily(ctx context.Context, in *familiesv1.GetFamilyRequest, opts ...grpc.CallOption) (*familiesv1.Family, error) {
	fam, err := f.familyFake.GetFamily(ctx, in, opts...)
	if fam != nil {
		fam.Counselor = "c-2"
	}
	return fam, err
}

// counselorFake is a family with a counselor, or without one.
type counselorFake struct {
	familiesv1.FamiliesServiceClient
	counselor string
	err       error
}

func (f counselorFake) GetFamily(_ context.Context, in *familiesv1.GetFamilyRequest, _ ...grpc.CallOption) (*familiesv1.Family, error) {
	if f.err != nil {
		return nil, f.err
	}
	return &familiesv1.Family{Counselor: f.counselor}, nil
}

// The family's counselor now; the one given when the family has none.
func TestFamilyCounselor(t *testing.T) {
	fallback := counselor("counselor-1")
	for _, c := range []struct{ now, want string }{{"counselor-2", "counselor-2"}, {"", "counselor-1"}} {
		a := &Activities{Families: counselorFake{counselor: c.now}}
		got, err := a.FamilyCounselor(context.Background(), "clinics/north/families/f1", fallback)
		if err != nil || got.ID != c.want || got.Kind != "counselor" {
			t.Errorf("counselor %q: got %+v, %v; want %s", c.now, got, err, c.want)
		}
	}
	// A family whose record was deleted keeps its referrals and their
	// notices: they go to the counselor known before, not fail the intake.
	a := &Activities{Families: counselorFake{err: apperr.NotFound("clinics/north/families/f1")}}
	if got, err := a.FamilyCounselor(context.Background(), "clinics/north/families/f1", fallback); err != nil || got.ID != "counselor-1" {
		t.Errorf("a deleted family: got %+v, %v; want counselor-1", got, err)
	}
	// Any other failure is the activity's, to retry.
	a = &Activities{Families: counselorFake{err: status.Error(codes.Unavailable, "down")}}
	if _, err := a.FamilyCounselor(context.Background(), "clinics/north/families/f1", fallback); err == nil {
		t.Error("an unreachable families service passed as the fallback")
	}
}

// closeFake lists a deleted family's interventions and reminders by the
// filters CloseFamily sends, and keeps what it is asked to cancel.
type closeFake struct {
	interventionsv1.InterventionsServiceClient
	filters   []string
	cancelled []string
	ids       []string
	reasons   []string // of the interventions cancelled
	etags     []string // the etag each cancellation of an intervention sent
	// moreDrafts are listed after the others.
	moreDrafts []*interventionsv1.Intervention
	// racing, when set, is a draft scheduled right after the first
	// listing: a draft to that one, a scheduled meeting to later ones.
	racing string
}

func (f *closeFake) ListInterventions(_ context.Context, in *interventionsv1.ListInterventionsRequest, _ ...grpc.CallOption) (*interventionsv1.ListInterventionsResponse, error) {
	f.filters = append(f.filters, in.GetFilter())
	scheduledNow := f.racing != "" && len(f.filters) > 1
	if strings.Contains(in.GetFilter(), "state = SCHEDULED") {
		out := []*interventionsv1.Intervention{{Name: "clinics/north/interventions/met"}, {Name: "clinics/north/interventions/ended"}}
		if scheduledNow {
			out = append(out, &interventionsv1.Intervention{Name: f.racing})
		}
		return &interventionsv1.ListInterventionsResponse{Interventions: out}, nil
	}
	out := append([]*interventionsv1.Intervention{
		{Name: "clinics/north/interventions/draft", Etag: "v1"}, {Name: "clinics/north/interventions/deleted"}}, f.moreDrafts...)
	if f.racing != "" && !scheduledNow {
		out = append(out, &interventionsv1.Intervention{Name: f.racing, Etag: "v1"})
	}
	return &interventionsv1.ListInterventionsResponse{Interventions: out}, nil
}

func (f *closeFake) CancelIntervention(_ context.Context, in *interventionsv1.CancelInterventionRequest, _ ...grpc.CallOption) (*interventionsv1.Intervention, error) {
	if strings.HasSuffix(in.GetName(), "/ended") { // its outcome came meanwhile
		return nil, apperr.InvalidTransition(in.GetName(), "COMPLETED", "CANCELLED")
	}
	if strings.HasSuffix(in.GetName(), "/deleted") { // a draft deleted meanwhile
		return nil, apperr.NotFound(in.GetName())
	}
	if strings.HasSuffix(in.GetName(), "/scheduled-since") && in.GetEtag() != "" { // the service would cancel it as scheduled
		return nil, apperr.EtagMismatch(in.GetName())
	}
	if strings.HasSuffix(in.GetName(), "/deadlocked") { // the database gave up on the transaction
		return nil, status.Error(codes.Aborted, "the transaction conflicted with another: retry")
	}
	f.etags = append(f.etags, in.GetEtag())
	f.cancelled, f.ids = append(f.cancelled, in.GetName()), append(f.ids, in.GetRequestId())
	f.reasons = append(f.reasons, in.GetReason())
	return &interventionsv1.Intervention{Name: in.GetName()}, nil
}

func (f *closeFake) ListReminders(_ context.Context, in *interventionsv1.ListRemindersRequest, _ ...grpc.CallOption) (*interventionsv1.ListRemindersResponse, error) {
	f.filters = append(f.filters, in.GetFilter())
	if strings.HasSuffix(in.GetFilter(), "state != DELIVERED AND state != FAILED AND state != CANCELLED") {
		return &interventionsv1.ListRemindersResponse{Reminders: []*interventionsv1.Reminder{{Name: "clinics/north/reminders/r1"}}}, nil
	}
	return &interventionsv1.ListRemindersResponse{}, nil
}

func (f *closeFake) CancelReminder(_ context.Context, in *interventionsv1.CancelReminderRequest, _ ...grpc.CallOption) (*interventionsv1.Reminder, error) {
	f.cancelled, f.ids = append(f.cancelled, in.GetName()), append(f.ids, in.GetRequestId())
	return &interventionsv1.Reminder{Name: in.GetName()}, nil
}

// A deleted family's scheduled meetings and drafts are cancelled (one that
// ended or was deleted meanwhile is passed over), then its people's
// pending reminders,
// each under a request id of its own.
func TestCloseFamily(t *testing.T) {
	f := &closeFake{}
	const fam = "clinics/north/families/f1"
	holds := &holdsFake{holds: []*referralsv1.Hold{
		{Name: "clinics/north/holds/by-hand", Family: fam},
		{Name: "clinics/north/holds/of-a-meeting", Family: fam, Intervention: "clinics/north/interventions/met"},
	}}
	a := &Activities{Interventions: f, Referrals: holds}
	got, err := a.CloseFamily(context.Background(), CloseFamilyRequest{Family: fam, RequestID: "req"})
	if err != nil || got.Interventions != 2 || got.Reminders != 1 || got.Holds != 1 {
		t.Fatalf("CloseFamily = %+v, %v; want 2 interventions, 1 reminder and 1 hold", got, err)
	}
	// The place held by hand goes back; the meeting's goes with the meeting.
	if len(holds.releases) != 1 || holds.releases[0].GetName() != "clinics/north/holds/by-hand" || holds.releases[0].GetRequestId() == "" {
		t.Fatalf("releases %v; want the hold made outside a meeting, under a request id", holds.releases)
	}
	want := []string{"clinics/north/interventions/draft", "clinics/north/interventions/met", "clinics/north/reminders/r1"}
	if fmt.Sprint(f.cancelled) != fmt.Sprint(want) {
		t.Fatalf("cancelled %v; want %v", f.cancelled, want)
	}
	if f.ids[0] == f.ids[1] || f.ids[1] == f.ids[2] {
		t.Fatalf("request ids %v repeat", f.ids)
	}
	for _, flt := range f.filters {
		if !strings.Contains(flt, `"clinics/north/families/f1"`) {
			t.Fatalf("filter %q is not narrowed to the family", flt)
		}
	}
	// A draft scheduled between the two listings (its schedule read the
	// family before the deletion): drafts are listed first, so it is
	// found as one or the other, never missed.
	f = &closeFake{racing: "clinics/north/interventions/racing"}
	a = &Activities{Interventions: f, Referrals: &holdsFake{}}
	if _, err := a.CloseFamily(context.Background(), CloseFamilyRequest{Family: "clinics/north/families/f1", RequestID: "req"}); err != nil ||
		!slices.Contains(f.cancelled, "clinics/north/interventions/racing") {
		t.Fatalf("CloseFamily: %v, cancelled %v; want the draft scheduled meanwhile cancelled", err, f.cancelled)
	}
}

// stateFake answers GetFamily with a family in state.
type stateFake struct {
	familiesv1.FamiliesServiceClient
	state familiesv1.FamilyState
}

func (f stateFake) GetFamily(_ context.Context, in *familiesv1.GetFamilyRequest, _ ...grpc.CallOption) (*familiesv1.Family, error) {
	return &familiesv1.Family{Name: in.GetName(), State: f.state}, nil
}

// A closed family's drafts, meetings still to come, loose holds and
// pending reminders are cancelled, under the closing's reason; a meeting
// that has begun is not asked for (its outcome is still to come). A family
// reopened since is left as it is.
func TestCloseClosedFamily(t *testing.T) {
	const fam = "clinics/north/families/f1"
	f := &closeFake{}
	a := &Activities{Interventions: f, Referrals: &holdsFake{}, Families: stateFake{state: familiesv1.FamilyState_FAMILY_STATE_CLOSED}}
	before := time.Now().UTC()
	got, err := a.CloseClosedFamily(context.Background(), CloseFamilyRequest{Family: fam, RequestID: "req"})
	if err != nil || got.Reopened || got.Interventions != 2 || got.Reminders != 1 {
		t.Fatalf("CloseClosedFamily = %+v, %v; want 2 interventions and 1 reminder", got, err)
	}
	var scheduled string
	for _, flt := range f.filters {
		if strings.Contains(flt, "state = SCHEDULED") {
			scheduled = flt
		}
	}
	_, after, found := strings.Cut(scheduled, `start_time > "`)
	from, perr := time.Parse(time.RFC3339Nano, strings.TrimSuffix(after, `"`))
	if !found || perr != nil || from.Before(before) || from.After(time.Now()) {
		t.Fatalf("scheduled meetings listed by %q; want those starting after now", scheduled)
	}
	for _, r := range f.reasons {
		if r != FamilyClosedReason {
			t.Fatalf("cancel reasons %q; want the closing's", f.reasons)
		}
	}
	f = &closeFake{}
	a = &Activities{Interventions: f, Referrals: &holdsFake{}, Families: stateFake{state: familiesv1.FamilyState_FAMILY_STATE_ACTIVE}}
	got, err = a.CloseClosedFamily(context.Background(), CloseFamilyRequest{Family: fam, RequestID: "req"})
	if err != nil || !got.Reopened || len(f.filters) != 0 || len(f.cancelled) != 0 {
		t.Fatalf("CloseClosedFamily of a reopened family = %+v, %v, listed %v, cancelled %v; want nothing touched", got, err, f.filters, f.cancelled)
	}
}

// After a yes the family's drafts are cancelled, each under a request id
// of its own and with the reason given, as they were listed; one deleted
// meanwhile is skipped, and so is one scheduled since it was listed (the
// service cancels scheduled meetings too), and scheduled meetings are not
// asked for.
func TestWithdrawDrafts(t *testing.T) {
	f := &closeFake{moreDrafts: []*interventionsv1.Intervention{{Name: "clinics/north/interventions/scheduled-since", Etag: "v1"}}}
	a := &Activities{Interventions: f}
	n, err := a.WithdrawDrafts(context.Background(), WithdrawDraftsRequest{Family: "clinics/north/families/f1",
		Reason: "the loved one accepted treatment", RequestID: "req"})
	if err != nil || n != 1 || fmt.Sprint(f.cancelled) != "[clinics/north/interventions/draft]" {
		t.Fatalf("WithdrawDrafts = %d, %v, cancelled %v; want the draft alone", n, err, f.cancelled)
	}
	if len(f.filters) != 1 || !strings.Contains(f.filters[0], `family = "clinics/north/families/f1" AND state = DRAFT`) {
		t.Fatalf("filters %q; want the family's drafts only", f.filters)
	}
	if f.reasons[0] != "the loved one accepted treatment" || f.etags[0] != "v1" {
		t.Fatalf("reason %q, etag %q; want the reason given and the etag listed", f.reasons[0], f.etags[0])
	}
}

// An ABORTED that is no etag mismatch (a deadlock) is not taken for the
// counselor's change: it fails the activity, to be retried, instead of
// leaving the draft.
func TestWithdrawDraftsRetriesAConflict(t *testing.T) {
	f := &closeFake{moreDrafts: []*interventionsv1.Intervention{{Name: "clinics/north/interventions/deadlocked", Etag: "v1"}}}
	a := &Activities{Interventions: f}
	if _, err := a.WithdrawDrafts(context.Background(), WithdrawDraftsRequest{Family: "clinics/north/families/f1",
		Reason: "the loved one accepted treatment", RequestID: "req"}); err == nil {
		t.Fatal("a draft whose cancellation deadlocked was passed over; want the error, for a retry")
	}
}

// A recipient of a kind reminders do not know is refused with the type
// the workflows skip (flow.RemindAt), not one that fails the workflow.
func TestUnknownRecipientKindIsSkippable(t *testing.T) {
	a := &Activities{}
	_, err := a.SendReminder(context.Background(), ReminderRequest{Clinic: "north", To: Person{Kind: "stranger", ID: "x"}, Kind: "CHECK_IN"})
	if ErrorType(err) != "InvalidArgument" {
		t.Fatalf("unknown recipient kind: %v (type %q), want type InvalidArgument", err, ErrorType(err))
	}
}

// capturedReminders keeps what CreateReminder was asked.
type capturedReminders struct {
	interventionsv1.InterventionsServiceClient
	asked        []*interventionsv1.Reminder
	meetings     []*timestamppb.Timestamp // each request's meeting_start_time
	appointments []*timestamppb.Timestamp // and appointment_start_time
}

func (f *capturedReminders) CreateReminder(_ context.Context, in *interventionsv1.CreateReminderRequest, _ ...grpc.CallOption) (*interventionsv1.Reminder, error) {
	f.asked = append(f.asked, in.GetReminder())
	f.meetings = append(f.meetings, in.GetMeetingStartTime())
	f.appointments = append(f.appointments, in.GetAppointmentStartTime())
	return &interventionsv1.Reminder{Name: "clinics/north/reminders/r"}, nil
}

// A meeting reminder names the meeting's time it was written for, so that
// the service refuses it once the meeting has moved; an intake reminder
// names the appointment's, kept with it for the recipient's calendar;
// other kinds name neither.
func TestReminderNamesTheTimeItAnnounces(t *testing.T) {
	at := time.Date(2026, 12, 10, 18, 0, 0, 0, time.UTC)
	to := Person{Kind: "member", ID: "mom", Family: "clinics/north/families/f1", Channel: "SMS"}
	for _, c := range []struct {
		kind                 string
		meeting, appointment bool
	}{{"INTERVENTION_UPCOMING", true, false}, {"INTAKE_UPCOMING", false, true}, {"CHECK_IN", false, false}} {
		f := &capturedReminders{}
		a := &Activities{Interventions: f}
		if _, err := a.SendReminder(context.Background(), ReminderRequest{Clinic: "north", To: to, Kind: c.kind, Message: "m",
			RequestID: "r", Awake: true, AwakeBy: at}); err != nil {
			t.Fatal(err)
		}
		for _, got := range []struct {
			field string
			ts    *timestamppb.Timestamp
			want  bool
		}{{"meeting_start_time", f.meetings[0], c.meeting}, {"appointment_start_time", f.appointments[0], c.appointment}} {
			if (got.ts != nil) != got.want || (got.want && !got.ts.AsTime().Equal(at)) {
				t.Errorf("%s: %s %v; want it %v", c.kind, got.field, got.ts, got.want)
			}
		}
	}
}

// A notice about a meeting (an overdue outcome, say) names the meeting's
// time the workflow knows, so that the service refuses it once the
// meeting has moved; one that names none asks for no such check.
func TestMeetingNoticeNamesTheMeetingsTime(t *testing.T) {
	at := time.Date(2026, 12, 10, 18, 0, 0, 0, time.UTC)
	to := Person{Kind: "counselor", ID: "counselor-1", Channel: "IN_APP"}
	for _, meeting := range []time.Time{at, {}} {
		f := &capturedReminders{}
		a := &Activities{Interventions: f}
		if _, err := a.SendReminder(context.Background(), ReminderRequest{Clinic: "north", To: to, Kind: "OUTCOME_OVERDUE", Message: "m",
			RequestID: "r", Meeting: meeting}); err != nil {
			t.Fatal(err)
		}
		if got := f.meetings[0]; (got != nil) != !meeting.IsZero() || (got != nil && !got.AsTime().Equal(at)) {
			t.Errorf("meeting %v: meeting_start_time %v", meeting, got)
		}
	}
}

// A resent intake reminder keeps the appointment's time of the one that
// failed, which its message names; a resent meeting reminder leaves its
// meeting's to the claim.
func TestResendKeepsTheAppointmentsTime(t *testing.T) {
	appt := timestamppb.New(time.Now().Add(48 * time.Hour).Truncate(time.Second))
	to := &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR, Id: "counselor-1",
		Channel: interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP}
	for _, c := range []struct {
		kind    interventionsv1.ReminderKind
		related string
		want    *timestamppb.Timestamp
	}{
		{interventionsv1.ReminderKind_REMINDER_KIND_INTAKE_UPCOMING, "clinics/north/referrals/r9", appt},
		{interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_UPCOMING, "clinics/north/interventions/i1", nil},
	} {
		f := &resendFakes{meeting: time.Now().Add(48 * time.Hour), old: &interventionsv1.Reminder{Name: "clinics/north/reminders/r1",
			Recipient: to, Kind: c.kind, RelatedResource: c.related, Message: "Reminder", EventStartTime: appt}}
		a := &Activities{Interventions: f}
		if _, err := a.Resend(context.Background(), ResendRequest{Failed: "clinics/north/reminders/r1", Due: time.Now(), RequestID: "r"}); err != nil {
			t.Fatalf("%s: %v", c.kind, err)
		}
		if !proto.Equal(f.appointment, c.want) {
			t.Errorf("%s resent with appointment_start_time %v; want %v", c.kind, f.appointment, c.want)
		}
	}
}

// A reminder the workflow found due now, outside the recipient's quiet
// hours, but made later (the service was down meanwhile) inside them,
// waits for their end.
func TestReminderMadeInQuietHoursWaits(t *testing.T) {
	now := time.Now().UTC()
	hhmm := func(d time.Duration) string { return now.Add(d).Format("15:04") }
	member := func(start, end string) Person {
		return Person{Kind: "member", ID: "mom", Family: "clinics/north/families/f1", Channel: "SMS", TimeZone: "UTC", QuietStart: start, QuietEnd: end}
	}
	for _, c := range []struct {
		name  string
		to    Person
		awake bool
		wait  bool
		about time.Time // what it reminds of; zero for nothing
	}{
		{"in quiet hours", member(hhmm(-time.Hour), hhmm(time.Hour)), true, true, time.Time{}},
		{"outside them", member(hhmm(2*time.Hour), hhmm(3*time.Hour)), true, false, time.Time{}},
		{"not asked to look", member(hhmm(-time.Hour), hhmm(time.Hour)), false, false, time.Time{}},
		// Not sent by their start, it would go out in them anyway.
		{"outside them, about a meeting in them", member(hhmm(2*time.Hour), hhmm(3*time.Hour)), true, false, now.Add(150 * time.Minute)},
	} {
		f := &capturedReminders{}
		a := &Activities{Interventions: f}
		if _, err := a.SendReminder(context.Background(), ReminderRequest{Clinic: "north", To: c.to, Kind: "CHECK_IN", Message: "m",
			RequestID: "r", Awake: c.awake, AwakeBy: c.about}); err != nil || len(f.asked) != 1 {
			t.Fatalf("%s: %v, %d asked", c.name, err, len(f.asked))
		}
		due, by := f.asked[0].GetDueTime(), f.asked[0].GetSendByTime()
		if !c.wait {
			if due != nil {
				t.Fatalf("%s: due %v, want now (unset)", c.name, due.AsTime())
			}
			// Due now: sent by when quiet hours begin, unless now is in
			// them on purpose.
			switch inQuiet := !c.awake; {
			case inQuiet && by != nil:
				t.Fatalf("%s: send by %v, want none: it is due in quiet hours on purpose", c.name, by.AsTime())
			case !c.about.IsZero():
				if by != nil {
					t.Fatalf("%s: send by %v, want none", c.name, by.AsTime())
				}
			case !inQuiet && (by == nil || by.AsTime().Format("15:04") != c.to.QuietStart || !by.AsTime().After(now)):
				t.Fatalf("%s: send by %v, want the start of quiet hours, %s UTC", c.name, by, c.to.QuietStart)
			}
			continue
		}
		if due == nil || due.AsTime().Format("15:04") != c.to.QuietEnd || !due.AsTime().After(now) || due.AsTime().Sub(now) > 61*time.Minute {
			t.Fatalf("%s: due %v, want the end of quiet hours, %s UTC", c.name, due, c.to.QuietEnd)
		}
		// Sent by their next start, a day after this one's.
		if by == nil || by.AsTime().Format("15:04") != c.to.QuietStart || !by.AsTime().After(due.AsTime()) {
			t.Fatalf("%s: send by %v, want the next start of quiet hours, %s UTC", c.name, by, c.to.QuietStart)
		}
	}
}

// safetyFake is a family whose contact person has not agreed to be
// contacted; it has no boundaries.
type safetyFake struct {
	familiesv1.FamiliesServiceClient
}

func (safetyFake) GetFamily(context.Context, *familiesv1.GetFamilyRequest, ...grpc.CallOption) (*familiesv1.Family, error) {
	return &familiesv1.Family{Members: []*familiesv1.Member{
		{Id: "dad", Role: familiesv1.MemberRole_MEMBER_ROLE_CONTACT_PERSON},
		{Id: "mom", ConsentToContact: true, ContactChannels: []*familiesv1.ContactChannel{{Kind: familiesv1.ChannelKind_CHANNEL_KIND_SMS, Value: "+15555550100"}}},
	}}, nil
}

func (safetyFake) ListBoundaries(context.Context, *familiesv1.ListBoundariesRequest, ...grpc.CallOption) (*familiesv1.ListBoundariesResponse, error) {
	return &familiesv1.ListBoundariesResponse{}, nil
}

// A contact person who has not agreed to be contacted is no contact
// person to the workflow: no program is asked to reach out to them.
func TestFamilySafetyLeavesOutAContactPersonWithoutConsent(t *testing.T) {
	a := &Activities{Families: safetyFake{}}
	s, err := a.FamilySafety(context.Background(), "clinics/north/families/f1")
	if err != nil || s.ContactPerson != "" || len(s.Members) != 1 || s.Members[0].ID != "mom" {
		t.Fatalf("FamilySafety = %+v, %v; want no contact person, mom reachable", s, err)
	}
}

// deletedFamily answers every read as the families service does once the
// family's record is deleted.
type deletedFamily struct {
	familiesv1.FamiliesServiceClient
}

func (deletedFamily) GetFamily(_ context.Context, in *familiesv1.GetFamilyRequest, _ ...grpc.CallOption) (*familiesv1.Family, error) {
	return nil, apperr.NotFound(in.GetName())
}

func (deletedFamily) ListBarriers(_ context.Context, in *familiesv1.ListBarriersRequest, _ ...grpc.CallOption) (*familiesv1.ListBarriersResponse, error) {
	return nil, apperr.NotFound(in.GetParent())
}

// noReferrals is a referrals service holding nothing yet.
type noReferrals struct {
	referralsv1.ReferralsServiceClient
}

func (noReferrals) ListReferrals(context.Context, *referralsv1.ListReferralsRequest, ...grpc.CallOption) (*referralsv1.ListReferralsResponse, error) {
	return &referralsv1.ListReferralsResponse{}, nil
}

func (noReferrals) ListHolds(context.Context, *referralsv1.ListHoldsRequest, ...grpc.CallOption) (*referralsv1.ListHoldsResponse, error) {
	return &referralsv1.ListHoldsResponse{}, nil
}

// A family deleted while its intake goes on (its referrals stay) fails no
// step of the intake: nobody in it is reminded or referred to support, and
// a next program, which cannot be matched to it, is NO_PROGRAM, so the
// counselor takes over.
func TestIntakeStepsForADeletedFamily(t *testing.T) {
	a := &Activities{Families: deletedFamily{}, Referrals: noReferrals{}}
	ctx := context.Background()
	const fam = "clinics/north/families/f1"
	if got, err := a.FamilyContacts(ctx, fam); err != nil || len(got) != 0 {
		t.Fatalf("FamilyContacts = %v, %v; want nobody, no error", got, err)
	}
	for _, member := range []string{"", "mom"} {
		got, err := a.CreateSupportReferrals(ctx, SupportRequest{Family: fam, Member: member, Kinds: []string{"FAMILY_SUPPORT_GROUP"},
			Urgency: "ROUTINE", RequestID: "r"})
		if err != nil || len(got) != 0 {
			t.Fatalf("CreateSupportReferrals (member %q) = %v, %v; want none, no error", member, got, err)
		}
	}
	_, err := a.StartImmediateReferral(ctx, ImmediateRequest{Family: fam, Intervention: "clinics/north/interventions/i1",
		Exclude: []string{"clinics/north/programs/p1"}, RequestID: "r"})
	if ErrorType(err) != "NO_PROGRAM" {
		t.Fatalf("StartImmediateReferral = %v; want NO_PROGRAM", err)
	}
}

type namingFake struct {
	referralsv1.ReferralsServiceClient
	holds     []*referralsv1.Hold
	referrals []*referralsv1.Referral
}

func (f namingFake) ListHolds(context.Context, *referralsv1.ListHoldsRequest, ...grpc.CallOption) (*referralsv1.ListHoldsResponse, error) {
	return &referralsv1.ListHoldsResponse{Holds: f.holds}, nil
}

func (f namingFake) ListReferrals(context.Context, *referralsv1.ListReferralsRequest, ...grpc.CallOption) (*referralsv1.ListReferralsResponse, error) {
	return &referralsv1.ListReferralsResponse{Referrals: f.referrals}, nil
}

// A hold or referral that names the intervention but is another family's
// (a counselor's slip), or a family member's, is not the loved one's: a
// retry adopting it would convert someone else's slot or take a
// relative's referral for the loved one's.
func TestOnlyTheLovedOnesHoldAndReferralAreAdopted(t *testing.T) {
	const iv, fam, other = "clinics/north/interventions/i1", "clinics/north/families/f1", "clinics/north/families/f2"
	mat := referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE
	loved := &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE}
	member := &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_FAMILY_MEMBER, MemberId: "mom"}
	a := &Activities{Referrals: namingFake{
		holds: []*referralsv1.Hold{
			{Name: "clinics/north/holds/theirs", Family: other, Intervention: iv, ServiceKind: mat},
			{Name: "clinics/north/holds/ours", Family: fam, Intervention: iv, ServiceKind: mat},
		},
		referrals: []*referralsv1.Referral{
			{Name: "clinics/north/referrals/theirs", Family: other, Intervention: iv, ServiceKind: mat, Subject: loved},
			{Name: "clinics/north/referrals/moms", Family: fam, Intervention: iv, ServiceKind: mat, Subject: member},
			{Name: "clinics/north/referrals/ours", Family: fam, Intervention: iv, ServiceKind: mat, Subject: loved},
		},
	}}
	h, err := a.liveHoldsOf(context.Background(), iv, fam, nil, matKinds)
	if err != nil || len(h) != 1 || h[0].GetName() != "clinics/north/holds/ours" {
		t.Errorf("holds adopted: %v, %v; want ours", h, err)
	}
	r, err := a.referredFor(context.Background(), iv, fam, nil, matKinds)
	if err != nil || r.GetName() != "clinics/north/referrals/ours" {
		t.Errorf("referral adopted: %v, %v; want ours", r.GetName(), err)
	}
	if h, _ := a.liveHoldsOf(context.Background(), iv, "clinics/north/families/f3", nil, matKinds); len(h) != 0 {
		t.Errorf("a hold of no family of ours adopted: %v", h)
	}
}

// holdsFake holds places and releases them as the referrals service does.
type holdsFake struct {
	referralsv1.ReferralsServiceClient
	holds    []*referralsv1.Hold
	releases []*referralsv1.ReleaseHoldRequest
	// onePerPage lists one hold a page, the page token its index.
	onePerPage bool
}

func (f *holdsFake) ListHolds(_ context.Context, in *referralsv1.ListHoldsRequest, _ ...grpc.CallOption) (*referralsv1.ListHoldsResponse, error) {
	if !f.onePerPage {
		return &referralsv1.ListHoldsResponse{Holds: f.holds}, nil
	}
	page, next := onePerPage(f.holds, in.GetPageToken())
	return &referralsv1.ListHoldsResponse{Holds: page, NextPageToken: next}, nil
}

// onePerPage is the page of items a page token names, one item a page,
// the token the index of the next ("" after the last).
func onePerPage[T any](items []T, token string) ([]T, string) {
	i, _ := strconv.Atoi(token)
	if i >= len(items) {
		return nil, ""
	}
	next := ""
	if i+1 < len(items) {
		next = strconv.Itoa(i + 1)
	}
	return items[i : i+1], next
}

func (f *holdsFake) ReleaseHold(_ context.Context, in *referralsv1.ReleaseHoldRequest, _ ...grpc.CallOption) (*referralsv1.Hold, error) {
	f.releases = append(f.releases, in)
	f.holds = slices.DeleteFunc(f.holds, func(h *referralsv1.Hold) bool { return h.GetName() == in.GetName() })
	return &referralsv1.Hold{Name: in.GetName()}, nil
}

// Releasing what a try without an answer may have held gives back every
// live MAT hold a workflow made for the meeting for the family, each under
// a request id of its own, and no other family's, nor the place a
// counselor held by hand.
func TestReleaseHeldForGivesBackTheMeetingsHolds(t *testing.T) {
	const iv, fam = "clinics/north/interventions/i1", "clinics/north/families/f1"
	mat := referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE
	f := &holdsFake{holds: []*referralsv1.Hold{
		{Name: "clinics/north/holds/a", Family: fam, Intervention: iv, ServiceKind: mat, Program: "clinics/north/programs/p1", WorkflowHeld: true},
		{Name: "clinics/north/holds/theirs", Family: "clinics/north/families/f2", Intervention: iv, ServiceKind: mat, WorkflowHeld: true},
		{Name: "clinics/north/holds/by-hand", Family: fam, Intervention: iv, ServiceKind: mat, Program: "clinics/north/programs/p3",
			Holder: "counselor-1"},
		{Name: "clinics/north/holds/b", Family: fam, Intervention: iv, ServiceKind: mat, Program: "clinics/north/programs/p2", WorkflowHeld: true},
	}}
	a := &Activities{Referrals: f}
	n, err := a.ReleaseHeldFor(context.Background(), ReleaseHeldRequest{Intervention: iv, Family: fam, Reason: "intervention cancelled",
		RequestID: strings.Repeat("f", 40)})
	if err != nil || n != 2 {
		t.Fatalf("released %d, %v; want 2", n, err)
	}
	if len(f.holds) != 2 || f.holds[0].GetName() != "clinics/north/holds/theirs" || f.holds[1].GetName() != "clinics/north/holds/by-hand" {
		t.Fatalf("left held: %v; want the other family's and the counselor's", f.holds)
	}
	if id0, id1 := f.releases[0].GetRequestId(), f.releases[1].GetRequestId(); id0 == id1 || len(id0) > 64 || len(id1) > 64 {
		t.Fatalf("request ids %q and %q; want two distinct ids of at most 64 characters", id0, id1)
	}
	// A counselor's place the workflow took over as its own goes back.
	f.releases = nil
	n, err = a.ReleaseHeldFor(context.Background(), ReleaseHeldRequest{Intervention: iv, Family: fam, Reason: "intake failed",
		RequestID: "again", Hold: "clinics/north/holds/by-hand"})
	if err != nil || n != 1 || len(f.holds) != 1 || f.releases[0].GetName() != "clinics/north/holds/by-hand" {
		t.Fatalf("released %d, %v, left %v; want the adopted place given back", n, err, f.holds)
	}
}

// For a meeting that will not take place, every live hold of the family
// goes back, a place held for a service other than treatment too, and one
// a counselor held by hand; without AnyService those stay, and a place a
// workflow held for treatment, MAT or care (what suits a loved one who
// uses stimulants, say), goes back.
func TestReleaseHeldForAnyService(t *testing.T) {
	const iv, fam = "clinics/north/interventions/i1", "clinics/north/families/f1"
	holds := func() *holdsFake {
		return &holdsFake{holds: []*referralsv1.Hold{
			{Name: "clinics/north/holds/mat", Family: fam, Intervention: iv, ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, WorkflowHeld: true},
			{Name: "clinics/north/holds/bed", Family: fam, Intervention: iv, ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_INPATIENT, WorkflowHeld: true},
			{Name: "clinics/north/holds/group", Family: fam, Intervention: iv, ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_FAMILY_SUPPORT_GROUP, WorkflowHeld: true},
			{Name: "clinics/north/holds/by-hand", Family: fam, Intervention: iv, ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE},
		}}
	}
	for _, c := range []struct {
		any  bool
		left int
	}{{false, 2}, {true, 0}} {
		f := holds()
		f.onePerPage = true // every page is read
		a := &Activities{Referrals: f}
		n, err := a.ReleaseHeldFor(context.Background(), ReleaseHeldRequest{Intervention: iv, Family: fam, Reason: "intervention cancelled",
			RequestID: "r1", AnyService: c.any})
		if err != nil || len(f.holds) != c.left || n != 4-c.left {
			t.Fatalf("any service %v: released %d, %v, left %v; want %d left", c.any, n, err, f.holds, c.left)
		}
	}
}

// A refused token is retried (it is the worker's identity, and passes);
// a refused request is not.
func TestRefusedTokensAreRetried(t *testing.T) {
	for code, retryable := range map[codes.Code]bool{
		codes.Unauthenticated: true, codes.PermissionDenied: true, codes.Unavailable: true,
		codes.InvalidArgument: false, codes.NotFound: false, codes.FailedPrecondition: false,
	} {
		err := wrap("CloseFamily", status.Error(code, "refused"))
		var app *temporal.ApplicationError
		if got := !(errors.As(err, &app) && app.NonRetryable()); got != retryable {
			t.Errorf("%v: retryable %v, want %v (%v)", code, got, retryable, err)
		}
	}
}

// A resend an earlier try made (the same request id, other data read) is
// followed under its own name and times; gone, under this try's times.
func TestResendMadeByAnEarlierTry(t *testing.T) {
	chicago, err := time.LoadLocation("America/Chicago")
	if err != nil {
		t.Fatal(err)
	}
	night := time.Date(2026, 12, 9, 22, 5, 0, 0, chicago)
	earlierDue := time.Date(2026, 12, 10, 9, 0, 0, 0, chicago)
	old := &interventionsv1.Reminder{Name: "clinics/north/reminders/r1", RelatedResource: "clinics/north/interventions/i1", Message: "Reminder",
		Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom", Family: "clinics/north/families/f1"}}
	for _, c := range []struct {
		name string
		made *interventionsv1.Reminder
		gone string
		want Resent
	}{
		{"still there", &interventionsv1.Reminder{Name: "clinics/north/reminders/first", DueTime: timestamppb.New(earlierDue)}, "",
			Resent{Reminder: "clinics/north/reminders/first", FailsBy: earlierDue}},
		// This try's reading: due at 08:00, sent by 21:00.
		{"gone", nil, "clinics/north/reminders/gone",
			Resent{Reminder: "clinics/north/reminders/gone", FailsBy: time.Date(2026, 12, 10, 21, 0, 0, 0, chicago)}},
	} {
		f := &resendFakes{old: old, meeting: night.Add(48 * time.Hour), made: c.made, gone: c.gone}
		a := &Activities{Interventions: f, Families: familyFake{}}
		got, err := a.Resend(context.Background(), ResendRequest{Failed: old.GetName(), Due: night, RequestID: "r"})
		if err != nil || got.Reminder != c.want.Reminder || !got.FailsBy.Equal(c.want.FailsBy) {
			t.Errorf("%s: %+v, %v; want %+v", c.name, got, err, c.want)
		}
	}
}

// directoryFake is a directory of two MAT programs, the first of which refuses
// a hold, or the referral from one, as set.
type directoryFake struct {
	holdsFake
	holdErr, convertErr error
	converted           []string
	// lapsed is a hold whose conversion is refused as no longer HELD.
	lapsed string
}

func (f *directoryFake) ListReferrals(context.Context, *referralsv1.ListReferralsRequest, ...grpc.CallOption) (*referralsv1.ListReferralsResponse, error) {
	return &referralsv1.ListReferralsResponse{}, nil
}

func (f *directoryFake) MatchPrograms(context.Context, *referralsv1.MatchProgramsRequest, ...grpc.CallOption) (*referralsv1.MatchProgramsResponse, error) {
	var out []*referralsv1.ProgramMatch
	for _, p := range []string{"p1", "p2"} {
		out = append(out, &referralsv1.ProgramMatch{Program: &referralsv1.Program{Name: "clinics/north/programs/" + p,
			Services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE}}})
	}
	return &referralsv1.MatchProgramsResponse{Matches: out}, nil
}

func (f *directoryFake) HoldSlot(_ context.Context, in *referralsv1.HoldSlotRequest, _ ...grpc.CallOption) (*referralsv1.Hold, error) {
	if strings.HasSuffix(in.GetProgram(), "/p1") && f.holdErr != nil {
		return nil, f.holdErr
	}
	h := &referralsv1.Hold{Name: "clinics/north/holds/h-" + aipID(in.GetProgram()), Program: in.GetProgram()}
	f.holds = append(f.holds, h)
	return h, nil
}

func (f *directoryFake) ConvertHold(_ context.Context, in *referralsv1.ConvertHoldRequest, _ ...grpc.CallOption) (*referralsv1.Referral, error) {
	if strings.HasSuffix(in.GetName(), "-p1") && f.convertErr != nil {
		return nil, f.convertErr
	}
	if in.GetName() == f.lapsed {
		return nil, apperr.InvalidTransition(in.GetName(), "EXPIRED", "CONVERTED")
	}
	f.converted = append(f.converted, in.GetName())
	return &referralsv1.Referral{Name: "clinics/north/referrals/r-" + aipID(in.GetName()), Program: "clinics/north/programs/" +
		strings.TrimPrefix(aipID(in.GetName()), "h-")}, nil
}

func aipID(name string) string { return name[strings.LastIndex(name, "/")+1:] }

// A program deleted (marked, or outright), or no longer offering the
// service, since the match leaves the next one to try, as a program whose
// last slot went does; anything else missing stops the search. A place
// held whose referral is then refused for good is given back, not left
// held for a day.
func TestAProgramGoneSinceTheMatchIsPassedOver(t *testing.T) {
	for name, refusal := range map[string]error{
		"marked deleted":   apperr.FailedPrecondition("PROGRAM_DELETED", "deleted", nil),
		"deleted outright": apperr.NotFound("clinics/north/programs/p1"),
		"service dropped":  apperr.FailedPrecondition("SERVICE_NOT_OFFERED", "no longer offered", nil),
	} {
		f := &directoryFake{holdErr: refusal}
		a := &Activities{Families: familyFake{}, Referrals: f}
		ref, err := a.StartImmediateReferral(context.Background(), ImmediateRequest{Family: "clinics/north/families/f1",
			Intervention: "clinics/north/interventions/i1", RequestID: "r"})
		if err != nil || ref.Program != "clinics/north/programs/p2" {
			t.Fatalf("%s: referral %+v, %v; want one at the second program", name, ref, err)
		}
		// Holding ahead of the meeting passes it over too.
		req, tiers, err := a.matchRequest(context.Background(), "clinics/north/families/f1", nil, referralsv1.Urgency_URGENCY_IMMEDIATE, nil)
		if err != nil {
			t.Fatal(err)
		}
		hold, err := a.holdBest(context.Background(),
			HoldRequest{Family: "clinics/north/families/f1", Intervention: "clinics/north/interventions/i1", RequestID: "r"}, req, tiers)
		if err != nil || hold.GetProgram() != "clinics/north/programs/p2" {
			t.Fatalf("%s: hold ahead %v, %v; want one at the second program", name, hold, err)
		}
	}
	f := &directoryFake{holdErr: apperr.NotFound("clinics/north/families/f1")}
	if _, err := (&Activities{Families: familyFake{}, Referrals: f}).StartImmediateReferral(context.Background(),
		ImmediateRequest{Family: "clinics/north/families/f1", Intervention: "clinics/north/interventions/i1", RequestID: "r"}); err == nil {
		t.Fatal("a family not found was passed over as a program")
	}
	f = &directoryFake{convertErr: apperr.Field("first_contact_time", "refused")}
	if _, err := (&Activities{Families: familyFake{}, Referrals: f}).StartImmediateReferral(context.Background(),
		ImmediateRequest{Family: "clinics/north/families/f1", Intervention: "clinics/north/interventions/i1", RequestID: "r"}); err == nil ||
		len(f.releases) != 1 || f.releases[0].GetName() != "clinics/north/holds/h-p1" {
		t.Fatalf("a referral refused for good after its hold: %v, releases %v; want the error and the hold given back", err, f.releases)
	}
}

// A hold as long as a hold can be counts as lasting, however much later the
// try that adopts it comes: released, its request would be answered by the
// referrals service with that released hold.
func TestLongestHoldIsLasting(t *testing.T) {
	const iv, fam = "clinics/north/interventions/i1", "clinics/north/families/f1"
	made := time.Now().Add(-3 * time.Hour) // the first try, hours before this one
	f := &holdsFake{holds: []*referralsv1.Hold{{Name: "clinics/north/holds/long", Family: fam, Intervention: iv,
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE,
		CreateTime:  timestamppb.New(made), ExpireTime: timestamppb.New(made.Add(maxHoldTTL))}}}
	a := &Activities{Referrals: f}
	h, err := a.lastingHold(context.Background(), HoldRequest{Intervention: iv, Family: fam, RequestID: "r",
		Until: time.Now().Add(20 * 24 * time.Hour)}, matKinds, 0)
	if err != nil || h.GetName() != "clinics/north/holds/long" || len(f.releases) != 0 {
		t.Fatalf("lastingHold = %v, %v, releases %v; want the longest hold adopted", h, err, f.releases)
	}
	// One shorter than the meeting needs is not adopted; the workflow's
	// is given back, a counselor's left to them (before, it went back).
	f.holds[0].ExpireTime = timestamppb.New(time.Now().Add(time.Hour))
	h, err = a.lastingHold(context.Background(), HoldRequest{Intervention: iv, Family: fam, RequestID: "r",
		Until: time.Now().Add(48 * time.Hour)}, matKinds, 0)
	if err != nil || h != nil || len(f.releases) != 0 {
		t.Fatalf("lastingHold = %v, %v, releases %v; want the counselor's short hold neither adopted nor released", h, err, f.releases)
	}
	f.holds[0].WorkflowHeld = true
	h, err = a.lastingHold(context.Background(), HoldRequest{Intervention: iv, Family: fam, RequestID: "r",
		Until: time.Now().Add(48 * time.Hour)}, matKinds, 0)
	if err != nil || h != nil || len(f.releases) != 1 {
		t.Fatalf("lastingHold = %v, %v, releases %v; want the workflow's short hold released", h, err, f.releases)
	}
}

// changedProgramFake holds a methadone place at p1, whose program offered
// buprenorphine too when read, and no longer does when the hold converts.
type changedProgramFake struct{ directoryFake }

// GetHold is refused, as the referrals service refuses it to the worker.
func (f *changedProgramFake) GetHold(context.Context, *referralsv1.GetHoldRequest, ...grpc.CallOption) (*referralsv1.Hold, error) {
	return nil, status.Error(codes.PermissionDenied, "role [worker] may not call GetHold")
}

func newChangedProgramFake() *changedProgramFake {
	f := &changedProgramFake{}
	f.holds = []*referralsv1.Hold{{Name: "clinics/north/holds/held", Program: "clinics/north/programs/p1",
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE, Family: "clinics/north/families/f1",
		Intervention: "clinics/north/interventions/i1", State: referralsv1.HoldState_HOLD_STATE_HELD}}
	return f
}

func (f *changedProgramFake) GetProgram(_ context.Context, in *referralsv1.GetProgramRequest, _ ...grpc.CallOption) (*referralsv1.Program, error) {
	return &referralsv1.Program{Name: in.GetName(), Services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE,
		referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE}}, nil
}

func (f *changedProgramFake) ConvertHold(ctx context.Context, in *referralsv1.ConvertHoldRequest, opts ...grpc.CallOption) (*referralsv1.Referral, error) {
	if in.GetServiceKind() != referralsv1.ServiceKind_SERVICE_KIND_UNSPECIFIED {
		return nil, apperr.FailedPrecondition("SERVICE_NOT_OFFERED", "no longer offered", nil)
	}
	return f.directoryFake.ConvertHold(ctx, in, opts...)
}

// A held place whose program stopped offering the medication agreed to
// between its read and the conversion is given back, and the match goes
// on, rather than the intake failing.
func TestHeldPlaceWhoseProgramChangedIsGivenBack(t *testing.T) {
	f := newChangedProgramFake()
	a := &Activities{Families: familyFake{}, Referrals: f}
	ref, err := a.StartImmediateReferral(context.Background(), ImmediateRequest{Family: "clinics/north/families/f1",
		Intervention: "clinics/north/interventions/i1", Hold: "clinics/north/holds/held", RequestID: "r", Medications: []string{"MAT_BUPRENORPHINE"}})
	if err != nil || ref.Name == "" {
		t.Fatalf("referral %+v, %v; want one from the match", ref, err)
	}
	if len(f.releases) != 1 || f.releases[0].GetName() != "clinics/north/holds/held" {
		t.Fatalf("releases %v; want the held place given back", f.releases)
	}
}

// A partial yes without medication refers to the care accepted: a place
// held at a MAT program that offers none of it is given back, not
// converted as MAT (all three kinds of care named are not "any MAT").
func TestCareAcceptedIsNotConvertedAsMAT(t *testing.T) {
	f := newChangedProgramFake()
	a := &Activities{Families: familyFake{}, Referrals: f}
	if _, err := a.StartImmediateReferral(context.Background(), ImmediateRequest{Family: "clinics/north/families/f1",
		Intervention: "clinics/north/interventions/i1", Hold: "clinics/north/holds/held", RequestID: "r",
		Medications: []string{"INPATIENT", "OUTPATIENT", "INTENSIVE_OUTPATIENT"}}); err != nil && ErrorType(err) != "NO_PROGRAM" {
		t.Fatal(err)
	}
	if len(f.releases) != 1 || f.releases[0].GetName() != "clinics/north/holds/held" {
		t.Fatalf("releases %v; want the MAT place given back", f.releases)
	}
}

// A place an earlier try held for the care agreed to (its answer lost) is
// adopted by the retry, not passed over for a program further down; and
// the intake's release gives back the care places it held, beside MAT's.
func TestCarePlacesAreAdoptedAndGivenBack(t *testing.T) {
	const iv, fam = "clinics/north/interventions/i1", "clinics/north/families/f1"
	care := func() *directoryFake {
		f := &directoryFake{}
		f.holds = []*referralsv1.Hold{{Name: "clinics/north/holds/h-p3", Program: "clinics/north/programs/p3", Family: fam, Intervention: iv,
			ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT, State: referralsv1.HoldState_HOLD_STATE_HELD, WorkflowHeld: true}}
		return f
	}
	f := care()
	a := &Activities{Families: familyFake{}, Referrals: f}
	ref, err := a.StartImmediateReferral(context.Background(), ImmediateRequest{Family: fam, Intervention: iv, RequestID: "r",
		Medications: []string{"OUTPATIENT"}})
	if err != nil || ref.Program != "clinics/north/programs/p3" || fmt.Sprint(f.converted) != "[clinics/north/holds/h-p3]" {
		t.Fatalf("referral %+v, %v, converted %v; want the place held at p3", ref, err, f.converted)
	}
	f = care()
	a = &Activities{Referrals: f}
	if n, err := a.ReleaseHeldFor(context.Background(), ReleaseHeldRequest{Intervention: iv, Family: fam, Reason: "intake failed",
		RequestID: "r"}); err != nil || n != 1 || len(f.holds) != 0 {
		t.Fatalf("released %d, %v, left %v; want the care place given back", n, err, f.holds)
	}
}

// Medication and other care are told apart by name; support is neither.
func TestTreatmentKindsByName(t *testing.T) {
	for name, want := range map[string][2]bool{
		"MAT_NALTREXONE": {true, false}, "INTENSIVE_OUTPATIENT": {false, true}, "PEER_SUPPORT": {false, false}, "": {false, false},
	} {
		if got := [2]bool{IsMAT(name), IsCare(name)}; got != want {
			t.Errorf("%q: MAT, care = %v, want %v", name, got, want)
		}
	}
}

// The treatments named keep MAT's and then care's order; none named is
// none, left to what suits the loved one, which may be care. A referral to
// care, or to what suits, says treatment, not medication.
func TestTreatmentsNamed(t *testing.T) {
	for _, c := range []struct {
		names     []string
		want, why string
	}{
		{nil, "[]", "Accepted treatment"},
		{[]string{"MAT_BUPRENORPHINE"}, "[SERVICE_KIND_MAT_BUPRENORPHINE]", "medication-assisted"},
		{[]string{"OUTPATIENT", "MAT_NALTREXONE", "PEER_SUPPORT"}, "[SERVICE_KIND_MAT_NALTREXONE SERVICE_KIND_OUTPATIENT]", "Accepted treatment"},
		{[]string{"INPATIENT"}, "[SERVICE_KIND_INPATIENT]", "Accepted treatment"},
	} {
		got := treatments(c.names)
		if fmt.Sprint(got) != c.want || !strings.Contains(intakeReason(got), c.why) {
			t.Errorf("treatments(%v) = %v, reason %q; want %s, a reason saying %q", c.names, got, intakeReason(got), c.want, c.why)
		}
	}
}

type entryFamilies struct {
	familiesv1.FamiliesServiceClient
	err error
}

func (f entryFamilies) RecordTreatmentEntry(context.Context, *familiesv1.RecordTreatmentEntryRequest, ...grpc.CallOption) (*familiesv1.Family, error) {
	return &familiesv1.Family{}, f.err
}

// A family closed or deleted since has no entry to record, and the
// workflow goes on; a service out of reach is the activity's error, to be
// tried again.
func TestRecordTreatmentEntry(t *testing.T) {
	for _, c := range []struct {
		err     error
		wantErr bool
	}{
		{nil, false},
		{status.Error(codes.FailedPrecondition, "closed"), false},
		{status.Error(codes.NotFound, "gone"), false},
		{status.Error(codes.Unavailable, "down"), true},
	} {
		a := &Activities{Families: entryFamilies{err: c.err}}
		err := a.RecordTreatmentEntry(context.Background(), TreatmentEntryRequest{Family: "clinics/north/families/f1", RequestID: "r"})
		if (err != nil) != c.wantErr {
			t.Errorf("%v: %v; want an error %v", c.err, err, c.wantErr)
		}
	}
}

// Each substance gets the treatments that treat it, most fitting first:
// no opioid medication for alcohol or stimulants, naltrexone last for
// opioids, buprenorphine first when work or caregiving stands in the way;
// a substance not recorded keeps any medication.
func TestSuitedTreatments(t *testing.T) {
	work := []referralsv1.BarrierKind{referralsv1.BarrierKind_BARRIER_KIND_STIGMA, referralsv1.BarrierKind_BARRIER_KIND_LOGISTICAL_WORK}
	care := []referralsv1.BarrierKind{referralsv1.BarrierKind_BARRIER_KIND_LOGISTICAL_CAREGIVING}
	for _, c := range []struct {
		substance familiesv1.Substance
		barriers  []referralsv1.BarrierKind
		want      string
	}{
		{familiesv1.Substance_SUBSTANCE_UNSPECIFIED, work, "[SERVICE_KIND_MAT_METHADONE SERVICE_KIND_MAT_BUPRENORPHINE SERVICE_KIND_MAT_NALTREXONE]"},
		{familiesv1.Substance_SUBSTANCE_HEROIN, nil, "[SERVICE_KIND_MAT_METHADONE SERVICE_KIND_MAT_BUPRENORPHINE SERVICE_KIND_MAT_NALTREXONE]"},
		{familiesv1.Substance_SUBSTANCE_FENTANYL, work, "[SERVICE_KIND_MAT_BUPRENORPHINE SERVICE_KIND_MAT_METHADONE SERVICE_KIND_MAT_NALTREXONE]"},
		{familiesv1.Substance_SUBSTANCE_PRESCRIPTION_OPIOIDS, care, "[SERVICE_KIND_MAT_BUPRENORPHINE SERVICE_KIND_MAT_METHADONE SERVICE_KIND_MAT_NALTREXONE]"},
		{familiesv1.Substance_SUBSTANCE_ALCOHOL, work, "[SERVICE_KIND_MAT_NALTREXONE SERVICE_KIND_OUTPATIENT SERVICE_KIND_INTENSIVE_OUTPATIENT SERVICE_KIND_INPATIENT]"},
		{familiesv1.Substance_SUBSTANCE_STIMULANTS, nil, "[SERVICE_KIND_OUTPATIENT SERVICE_KIND_INTENSIVE_OUTPATIENT SERVICE_KIND_INPATIENT]"},
		{familiesv1.Substance_SUBSTANCE_OTHER, nil, "[SERVICE_KIND_OUTPATIENT SERVICE_KIND_INTENSIVE_OUTPATIENT SERVICE_KIND_INPATIENT]"},
	} {
		if got := fmt.Sprint(suited(c.substance, c.barriers)); got != c.want {
			t.Errorf("%v with %v: %s, want %s", c.substance, c.barriers, got, c.want)
		}
	}
	// The shared list is not changed by a caller appending to an answer.
	_ = append(suited(familiesv1.Substance_SUBSTANCE_HEROIN, nil), referralsv1.ServiceKind_SERVICE_KIND_INPATIENT)
	if len(matKinds) != 3 {
		t.Fatalf("matKinds changed: %v", matKinds)
	}
}

// substanceFamily is a family whose loved one uses substance, with the
// barriers given open.
type substanceFamily struct {
	familiesv1.FamiliesServiceClient
	substance familiesv1.Substance
	barriers  []familiesv1.BarrierKind
	birth     string // the loved one's birth date, if recorded
}

func (f substanceFamily) GetFamily(context.Context, *familiesv1.GetFamilyRequest, ...grpc.CallOption) (*familiesv1.Family, error) {
	return &familiesv1.Family{LovedOne: &familiesv1.LovedOne{PrimarySubstance: f.substance, BirthDate: f.birth}}, nil
}

func (f substanceFamily) ListBarriers(context.Context, *familiesv1.ListBarriersRequest, ...grpc.CallOption) (*familiesv1.ListBarriersResponse, error) {
	resp := &familiesv1.ListBarriersResponse{}
	for _, k := range f.barriers {
		resp.Barriers = append(resp.Barriers, &familiesv1.Barrier{Kind: k})
	}
	return resp, nil
}

// offeringFake is a directory of one program, p1, offering services; it
// matches p1 only when it offers a service asked for, and keeps the holds
// it makes with their service.
type offeringFake struct {
	holdsFake
	services []referralsv1.ServiceKind
	asked    []referralsv1.ServiceKind
	made     []*referralsv1.HoldSlotRequest
	convert  []*referralsv1.ConvertHoldRequest
}

func (f *offeringFake) MatchPrograms(_ context.Context, in *referralsv1.MatchProgramsRequest, _ ...grpc.CallOption) (*referralsv1.MatchProgramsResponse, error) {
	f.asked = in.GetServiceKinds()
	if !slices.ContainsFunc(f.services, func(k referralsv1.ServiceKind) bool { return slices.Contains(f.asked, k) }) {
		return &referralsv1.MatchProgramsResponse{}, nil
	}
	return &referralsv1.MatchProgramsResponse{Matches: []*referralsv1.ProgramMatch{{Program: &referralsv1.Program{
		Name: "clinics/north/programs/p1", Services: f.services}}}}, nil
}

func (f *offeringFake) HoldSlot(_ context.Context, in *referralsv1.HoldSlotRequest, _ ...grpc.CallOption) (*referralsv1.Hold, error) {
	f.made = append(f.made, in)
	h := &referralsv1.Hold{Name: fmt.Sprintf("clinics/north/holds/h%d", len(f.made)), Program: in.GetProgram(), Family: in.GetFamily(),
		Intervention: in.GetIntervention(), ServiceKind: in.GetServiceKind(), ExpireTime: timestamppb.New(time.Now().Add(in.GetTtl().AsDuration()))}
	f.holds = append(f.holds, h)
	return h, nil
}

func (f *offeringFake) ListReferrals(context.Context, *referralsv1.ListReferralsRequest, ...grpc.CallOption) (*referralsv1.ListReferralsResponse, error) {
	return &referralsv1.ListReferralsResponse{}, nil
}

func (f *offeringFake) ConvertHold(_ context.Context, in *referralsv1.ConvertHoldRequest, _ ...grpc.CallOption) (*referralsv1.Referral, error) {
	f.convert = append(f.convert, in)
	i := slices.IndexFunc(f.holds, func(h *referralsv1.Hold) bool { return h.GetName() == in.GetName() })
	if i < 0 {
		return nil, apperr.NotFound(in.GetName())
	}
	kind := cmp.Or(in.GetServiceKind(), f.holds[i].GetServiceKind())
	f.holds = slices.Delete(f.holds, i, i+1)
	return &referralsv1.Referral{Name: "clinics/north/referrals/r1", Program: "clinics/north/programs/p1", ServiceKind: kind}, nil
}

// A plain yes converts the place the workflow held only to what suits
// the loved one now: the place was held for what suited them then,
// before the family's record said they drink. It converts to naltrexone
// where its program offers it, and is given back where it does not; one
// that still suits converts as it is.
func TestPlainYesConvertsTheHoldToWhatSuitsNow(t *testing.T) {
	const iv, fam = "clinics/north/interventions/i1", "clinics/north/families/f1"
	const (
		meth = referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE
		bup  = referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE
		nalt = referralsv1.ServiceKind_SERVICE_KIND_MAT_NALTREXONE
	)
	out := referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT
	work := []familiesv1.BarrierKind{familiesv1.BarrierKind_BARRIER_KIND_LOGISTICAL_WORK}
	for _, c := range []struct {
		name      string
		substance familiesv1.Substance
		barriers  []familiesv1.BarrierKind
		held      referralsv1.ServiceKind
		offered   []referralsv1.ServiceKind
		converted referralsv1.ServiceKind // of the held place; -1 for given back
	}{
		{"alcohol, naltrexone offered", familiesv1.Substance_SUBSTANCE_ALCOHOL, nil, meth, []referralsv1.ServiceKind{meth, nalt}, nalt},
		{"alcohol, no naltrexone", familiesv1.Substance_SUBSTANCE_ALCOHOL, nil, meth, []referralsv1.ServiceKind{meth, bup}, -1},
		{"heroin", familiesv1.Substance_SUBSTANCE_HEROIN, nil, meth, []referralsv1.ServiceKind{meth, bup}, referralsv1.ServiceKind_SERVICE_KIND_UNSPECIFIED},
		// Care held before heroin was recorded, with a job to keep: the
		// medication the barrier puts first, not the first offered.
		{"heroin, a job to keep, care held", familiesv1.Substance_SUBSTANCE_HEROIN, work, out, []referralsv1.ServiceKind{meth, bup, out}, bup},
	} {
		f := &offeringFake{services: c.offered}
		f.holds = []*referralsv1.Hold{{Name: "clinics/north/holds/held", Program: "clinics/north/programs/p1", Family: fam, Intervention: iv,
			ServiceKind: c.held, State: referralsv1.HoldState_HOLD_STATE_HELD}}
		a := &Activities{Families: substanceFamily{substance: c.substance, barriers: c.barriers}, Referrals: f}
		_, err := a.StartImmediateReferral(context.Background(), ImmediateRequest{Family: fam, Intervention: iv, Hold: "clinics/north/holds/held",
			RequestID: "y"})
		held := slices.IndexFunc(f.convert, func(r *referralsv1.ConvertHoldRequest) bool { return r.GetName() == "clinics/north/holds/held" })
		switch {
		case c.converted < 0:
			if held >= 0 || len(f.releases) != 1 || f.releases[0].GetName() != "clinics/north/holds/held" {
				t.Errorf("%s: conversions %v, releases %v, %v; want the methadone place given back", c.name, f.convert, f.releases, err)
			}
		case err != nil || held < 0 || f.convert[held].GetServiceKind() != c.converted || len(f.releases) != 0:
			t.Errorf("%s: conversions %v, releases %v, %v; want the place converted to %v", c.name, f.convert, f.releases, err, c.converted)
		}
	}
}

// checklistFake ticks any checklist item.
type checklistFake struct {
	interventionsv1.InterventionsServiceClient
}

func (checklistFake) UpdateChecklistItem(context.Context, *interventionsv1.UpdateChecklistItemRequest, ...grpc.CallOption) (*interventionsv1.Intervention, error) {
	return &interventionsv1.Intervention{}, nil
}

// The place held ahead of the meeting, and the referral a yes naming no
// treatment makes, are for a treatment of the substance the loved one
// uses: not methadone for alcohol or stimulants, however high the program
// offering it ranks. A try without an answer gives a care place back too.
func TestHoldAndYesFitTheSubstance(t *testing.T) {
	const iv, fam = "clinics/north/interventions/i1", "clinics/north/families/f1"
	const (
		meth = referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE
		bup  = referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE
		nalt = referralsv1.ServiceKind_SERVICE_KIND_MAT_NALTREXONE
		out  = referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT
	)
	work := []familiesv1.BarrierKind{familiesv1.BarrierKind_BARRIER_KIND_LOGISTICAL_WORK}
	for _, c := range []struct {
		name      string
		substance familiesv1.Substance
		barriers  []familiesv1.BarrierKind
		offered   []referralsv1.ServiceKind
		want      referralsv1.ServiceKind
	}{
		{"not recorded", familiesv1.Substance_SUBSTANCE_UNSPECIFIED, nil, []referralsv1.ServiceKind{meth, bup, out}, meth},
		{"heroin, a job to keep", familiesv1.Substance_SUBSTANCE_HEROIN, work, []referralsv1.ServiceKind{meth, bup, out}, bup},
		{"alcohol", familiesv1.Substance_SUBSTANCE_ALCOHOL, nil, []referralsv1.ServiceKind{meth, nalt, out}, nalt},
		{"alcohol, no naltrexone", familiesv1.Substance_SUBSTANCE_ALCOHOL, nil, []referralsv1.ServiceKind{meth, bup, out}, out},
		{"stimulants", familiesv1.Substance_SUBSTANCE_STIMULANTS, nil, []referralsv1.ServiceKind{meth, bup, out}, out},
	} {
		f := &offeringFake{services: c.offered}
		a := &Activities{Families: substanceFamily{substance: c.substance, barriers: c.barriers}, Referrals: f,
			Interventions: checklistFake{}}
		res, err := a.HoldTreatment(context.Background(), HoldRequest{Family: fam, Intervention: iv, RequestID: "r", TTL: time.Hour})
		if err != nil || len(f.made) != 1 || f.made[0].GetServiceKind() != c.want || res.Program != "clinics/north/programs/p1" {
			t.Fatalf("%s: held %v, %v (asked for %v); want one place for %v", c.name, f.made, err, f.asked, c.want)
		}
		if want := f.holds[0].GetExpireTime().AsTime(); !res.Expires.Equal(want) {
			t.Fatalf("%s: the result says the place lapses at %v; the hold, at %v", c.name, res.Expires, want)
		}
		// A retry adopts the place it held, whatever the treatment.
		if _, err := a.HoldTreatment(context.Background(), HoldRequest{Family: fam, Intervention: iv, RequestID: "r", TTL: time.Hour}); err != nil || len(f.made) != 1 {
			t.Fatalf("%s: a retry held %d places, %v; want the first adopted", c.name, len(f.made), err)
		}
		// A yes naming nothing, its hold not known to the workflow (the try
		// got no answer), converts the place as it is.
		ref, err := a.StartImmediateReferral(context.Background(), ImmediateRequest{Family: fam, Intervention: iv, RequestID: "y"})
		if err != nil || len(f.convert) != 1 || f.convert[0].GetServiceKind() != referralsv1.ServiceKind_SERVICE_KIND_UNSPECIFIED || len(f.releases) != 0 {
			t.Fatalf("%s: referral %+v, %v, conversions %v, releases %v; want the place converted as it is", c.name, ref, err, f.convert, f.releases)
		}
		if strings.Contains(f.convert[0].GetReason(), "medication") {
			t.Errorf("%s: reason %q names medication for a yes that named none", c.name, f.convert[0].GetReason())
		}
		// With no place left, the yes holds and converts one that fits.
		f.made = nil
		if _, err := a.StartImmediateReferral(context.Background(), ImmediateRequest{Family: fam, Intervention: iv, RequestID: "y2"}); err != nil ||
			len(f.made) != 1 || f.made[0].GetServiceKind() != c.want {
			t.Fatalf("%s: the yes without a place held %v, %v; want one for %v", c.name, f.made, err, c.want)
		}
		// A place a try without an answer held goes back, care or not.
		f.holds = []*referralsv1.Hold{{Name: "clinics/north/holds/h9", Family: fam, Intervention: iv, ServiceKind: c.want, WorkflowHeld: true}}
		if n, err := a.ReleaseHeldFor(context.Background(), ReleaseHeldRequest{Intervention: iv, Family: fam, Reason: "no answer",
			RequestID: "rel"}); err != nil || n != 1 {
			t.Fatalf("%s: released %d, %v; want the place for %v given back", c.name, n, err, c.want)
		}
	}
	// No program offers anything that treats stimulant use: no place is
	// held, least of all methadone.
	f := &offeringFake{services: []referralsv1.ServiceKind{meth, bup}}
	a := &Activities{Families: substanceFamily{substance: familiesv1.Substance_SUBSTANCE_STIMULANTS}, Referrals: f, Interventions: checklistFake{}}
	if _, err := a.HoldTreatment(context.Background(), HoldRequest{Family: fam, Intervention: iv, RequestID: "r", TTL: time.Hour}); ErrorType(err) != "NO_CAPACITY" || len(f.made) != 0 {
		t.Fatalf("held %v, %v; want NO_CAPACITY and nothing held", f.made, err)
	}
}

// A place the meeting already holds is adopted when it suits the loved
// one: a yes naming no treatment converts it as it is. One for another
// treatment (an earlier try made it before the family's record said what
// the loved one uses, or a counselor held it by hand) is not adopted, nor
// given back: a place that suits is held beside it.
func TestOnlyAPlaceThatSuitsIsAdopted(t *testing.T) {
	const iv, fam = "clinics/north/interventions/i1", "clinics/north/families/f1"
	meth := &referralsv1.Hold{Name: "clinics/north/holds/meth", Program: "clinics/north/programs/p0", Family: fam, Intervention: iv,
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE}
	nalt := &referralsv1.Hold{Name: "clinics/north/holds/nalt", Program: "clinics/north/programs/p2", Family: fam, Intervention: iv,
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_NALTREXONE}
	for _, c := range []struct {
		holds []*referralsv1.Hold
		want  string
		made  int
	}{{[]*referralsv1.Hold{meth}, "clinics/north/holds/h1", 1}, {[]*referralsv1.Hold{meth, nalt}, nalt.Name, 0}} {
		f := &offeringFake{services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT}}
		f.holds = slices.Clone(c.holds)
		a := &Activities{Families: substanceFamily{substance: familiesv1.Substance_SUBSTANCE_ALCOHOL}, Referrals: f, Interventions: checklistFake{}}
		res, err := a.HoldTreatment(context.Background(), HoldRequest{Family: fam, Intervention: iv, RequestID: "r", TTL: time.Hour})
		if err != nil || res.Hold != c.want || len(f.made) != c.made || len(f.releases) != 0 {
			t.Fatalf("holds %v: adopted %+v, %v, made %v, released %v; want %s, %d made, none released", c.holds, res, err, f.made, f.releases, c.want, c.made)
		}
		if c.made == 1 && f.made[0].GetServiceKind() != referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT {
			t.Fatalf("held %v; want outpatient care, which suits", f.made[0].GetServiceKind())
		}
	}
}

// GetProgram answers for p0, a methadone program, and p1, the program the
// directory offers.
func (f *offeringFake) GetProgram(_ context.Context, in *referralsv1.GetProgramRequest, _ ...grpc.CallOption) (*referralsv1.Program, error) {
	if strings.HasSuffix(in.GetName(), "/p0") {
		return &referralsv1.Program{Name: in.GetName(), Services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE}}, nil
	}
	return &referralsv1.Program{Name: in.GetName(), Services: f.services}, nil
}

// A plain yes whose hold the workflow does not know (the try that took it
// got no answer) judges the meeting's places by what suits the loved one
// now: a methadone place taken before the record said they drink, at a
// program offering nothing that suits, is given back, and a place that
// suits is held and referred instead of converting methadone.
func TestPlainYesDoesNotConvertAPlaceThatNoLongerSuits(t *testing.T) {
	const iv, fam = "clinics/north/interventions/i1", "clinics/north/families/f1"
	f := &offeringFake{services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT}}
	f.holds = []*referralsv1.Hold{{Name: "clinics/north/holds/meth", Program: "clinics/north/programs/p0", Family: fam, Intervention: iv,
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE, WorkflowHeld: true}}
	a := &Activities{Families: substanceFamily{substance: familiesv1.Substance_SUBSTANCE_ALCOHOL}, Referrals: f, Interventions: checklistFake{}}
	ref, err := a.StartImmediateReferral(context.Background(), ImmediateRequest{Family: fam, Intervention: iv, RequestID: "y"})
	if err != nil || ref.Program != "clinics/north/programs/p1" {
		t.Fatalf("referral %+v, %v; want one at p1", ref, err)
	}
	if len(f.releases) != 1 || f.releases[0].GetName() != "clinics/north/holds/meth" {
		t.Fatalf("released %v; want the methadone place given back", f.releases)
	}
	if len(f.made) != 1 || f.made[0].GetServiceKind() != referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT || len(f.convert) != 1 ||
		f.convert[0].GetName() == "clinics/north/holds/meth" {
		t.Fatalf("held %v, converted %v; want an outpatient place held and converted", f.made, f.convert)
	}
	// A counselor's place is theirs: not converted, and not given back
	// (before, it went back).
	f = &offeringFake{services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT}}
	f.holds = []*referralsv1.Hold{{Name: "clinics/north/holds/meth", Program: "clinics/north/programs/p0", Family: fam, Intervention: iv,
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE}}
	a.Referrals = f
	ref, err = a.StartImmediateReferral(context.Background(), ImmediateRequest{Family: fam, Intervention: iv, RequestID: "y"})
	if err != nil || ref.Program != "clinics/north/programs/p1" || len(f.releases) != 0 {
		t.Fatalf("referral %+v, %v, released %v; want one at p1 and the counselor's place left", ref, err, f.releases)
	}
}

// heldFake lists a family's completed meetings one per page.
type heldFake struct {
	interventionsv1.InterventionsServiceClient
	meetings []*interventionsv1.Intervention
}

func (f *heldFake) ListInterventions(_ context.Context, in *interventionsv1.ListInterventionsRequest, _ ...grpc.CallOption) (*interventionsv1.ListInterventionsResponse, error) {
	meetings := f.meetings
	switch in.GetFilter() {
	case `family = "clinics/north/families/f1" AND state = COMPLETED`:
	case `family = "clinics/north/families/f1" AND level = LEVEL_2 AND state = COMPLETED`:
		meetings = slices.DeleteFunc(slices.Clone(meetings), func(iv *interventionsv1.Intervention) bool {
			return iv.GetLevel() != interventionsv1.EscalationLevel_ESCALATION_LEVEL_LEVEL_2
		})
	default:
		return nil, status.Error(codes.InvalidArgument, "unexpected filter "+in.GetFilter())
	}
	i := 0
	if in.GetPageToken() != "" {
		i, _ = strconv.Atoi(in.GetPageToken())
	}
	if len(meetings) == 0 {
		return &interventionsv1.ListInterventionsResponse{}, nil
	}
	resp := &interventionsv1.ListInterventionsResponse{Interventions: meetings[i : i+1]}
	if i+1 < len(meetings) {
		resp.NextPageToken = strconv.Itoa(i + 1)
	}
	return resp, nil
}

// The level 2 series counts the meetings held since the loved one last
// said yes: a family meeting again after a relapse begins a new series,
// and the meetings of the one before, listed on any page, count for
// nothing.
func TestMeetingsHeldSinceTheLastYes(t *testing.T) {
	day := func(d int) *timestamppb.Timestamp {
		return timestamppb.New(time.Date(2026, 1, d, 18, 0, 0, 0, time.UTC))
	}
	meeting := func(level interventionsv1.EscalationLevel, d int, outcome interventionsv1.OutcomeKind, took ...interventionsv1.ServiceKind) *interventionsv1.Intervention {
		return &interventionsv1.Intervention{Level: level, StartTime: day(d), Outcome: &interventionsv1.Outcome{Kind: outcome, AcceptedServices: took}}
	}
	l1, l2 := interventionsv1.EscalationLevel_ESCALATION_LEVEL_LEVEL_1, interventionsv1.EscalationLevel_ESCALATION_LEVEL_LEVEL_2
	declined, yes, partly := interventionsv1.OutcomeKind_OUTCOME_KIND_DECLINED, interventionsv1.OutcomeKind_OUTCOME_KIND_ACCEPTED,
		interventionsv1.OutcomeKind_OUTCOME_KIND_PARTIALLY_ACCEPTED
	for _, c := range []struct {
		name     string
		meetings []*interventionsv1.Intervention
		want     int
	}{
		{"one series", []*interventionsv1.Intervention{meeting(l1, 1, declined), meeting(l2, 3, declined), meeting(l2, 5, declined)}, 2},
		// Listed newest first: the order of the pages does not matter.
		{"after a yes", []*interventionsv1.Intervention{meeting(l2, 20, declined), meeting(l1, 18, declined),
			meeting(l2, 10, yes), meeting(l2, 5, declined), meeting(l2, 3, declined)}, 1},
		{"after a partial yes to MAT", []*interventionsv1.Intervention{meeting(l2, 3, declined),
			meeting(l2, 5, partly, interventionsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE), meeting(l2, 7, declined)}, 1},
		{"after a partial yes to care", []*interventionsv1.Intervention{meeting(l2, 3, declined),
			meeting(l2, 5, partly, interventionsv1.ServiceKind_SERVICE_KIND_OUTPATIENT, interventionsv1.ServiceKind_SERVICE_KIND_PEER_SUPPORT), meeting(l2, 7, declined)}, 1},
		// A yes to support alone is followed up as a refusal: the series
		// goes on, that meeting counting in it.
		{"a partial yes to support", []*interventionsv1.Intervention{meeting(l2, 3, declined),
			meeting(l2, 5, partly, interventionsv1.ServiceKind_SERVICE_KIND_FAMILY_SUPPORT_GROUP), meeting(l2, 7, declined)}, 3},
		{"no meeting since", []*interventionsv1.Intervention{meeting(l2, 3, declined), meeting(l1, 9, yes)}, 0},
	} {
		a := &Activities{Interventions: &heldFake{meetings: c.meetings}}
		if n, err := a.MeetingsHeld(context.Background(), MeetingsRequest{Family: "clinics/north/families/f1", Level: 2}); err != nil || n != c.want {
			t.Errorf("%s: %d level 2 meetings held, %v; want %d", c.name, n, err, c.want)
		}
	}
}

// checkInsFake answers GetIntervention with recorded check-ins.
type checkInsFake struct {
	interventionsv1.InterventionsServiceClient
	checkIns []*interventionsv1.CheckIn
}

func (f checkInsFake) GetIntervention(_ context.Context, in *interventionsv1.GetInterventionRequest, _ ...grpc.CallOption) (*interventionsv1.Intervention, error) {
	return &interventionsv1.Intervention{Name: in.GetName(), CheckIns: f.checkIns}, nil
}

// The check-ins recorded on a meeting come back in order, with what the
// boundary workflow acts on; none is an empty list, not an error.
func TestCheckInsRecorded(t *testing.T) {
	a := &Activities{Interventions: checkInsFake{checkIns: []*interventionsv1.CheckIn{
		{Number: 1}, {Number: 2, WindowOfOpportunity: true}, {Number: 3, NewWarningSigns: true}}}}
	got, err := a.CheckInsRecorded(context.Background(), "clinics/north/interventions/i1")
	want := []CheckInRecord{{Number: 1}, {Number: 2, WindowOfOpportunity: true}, {Number: 3, NewWarningSigns: true}}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("check-ins %+v, %v; want %+v", got, err, want)
	}
	a = &Activities{Interventions: checkInsFake{}}
	if got, err := a.CheckInsRecorded(context.Background(), "clinics/north/interventions/i1"); err != nil || got == nil || len(got) != 0 {
		t.Fatalf("no check-ins: %+v, %v; want an empty list", got, err)
	}
}

// A place the intake adopted that lapsed, or went back, between its
// listing and its conversion is no reason to end the intake: another place
// is found, as when none was held.
func TestAnAdoptedPlaceLapsedMeanwhileIsReplaced(t *testing.T) {
	const iv, fam = "clinics/north/interventions/i1", "clinics/north/families/f1"
	f := &directoryFake{lapsed: "clinics/north/holds/lapsed"}
	f.holds = []*referralsv1.Hold{{Name: "clinics/north/holds/lapsed", Program: "clinics/north/programs/p2", Family: fam, Intervention: iv,
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, State: referralsv1.HoldState_HOLD_STATE_HELD, WorkflowHeld: true}}
	a := &Activities{Families: familyFake{}, Referrals: f}
	ref, err := a.StartImmediateReferral(context.Background(), ImmediateRequest{Family: fam, Intervention: iv, RequestID: "r"})
	if err != nil || ref.Program != "clinics/north/programs/p1" || fmt.Sprint(f.converted) != "[clinics/north/holds/h-p1]" {
		t.Fatalf("referral %+v, %v, converted %v; want a new place at the best match, p1", ref, err, f.converted)
	}
	// The place an earlier try held at the best match, under the request
	// id a hold there is asked with again: that program's answer is the
	// lapsed place, and the next program is tried, whether the place was
	// listed as held (it lapsed after the listing) or not.
	for _, listed := range []bool{true, false} {
		f = &directoryFake{lapsed: "clinics/north/holds/h-p1"}
		if listed {
			f.holds = []*referralsv1.Hold{{Name: "clinics/north/holds/h-p1", Program: "clinics/north/programs/p1", Family: fam, Intervention: iv,
				ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, State: referralsv1.HoldState_HOLD_STATE_HELD, WorkflowHeld: true}}
		}
		a = &Activities{Families: familyFake{}, Referrals: f}
		ref, err = a.StartImmediateReferral(context.Background(), ImmediateRequest{Family: fam, Intervention: iv, RequestID: "r"})
		if err != nil || ref.Program != "clinics/north/programs/p2" || fmt.Sprint(f.converted) != "[clinics/north/holds/h-p2]" {
			t.Fatalf("listed %v: referral %+v, %v, converted %v; want a place at the next program, p2", listed, ref, err, f.converted)
		}
	}
}

// refusingReleases refuses every release with FAILED_PRECONDITION, reason
// HOLD_LOCKED: not one ReleaseHold takes as done.
type refusingReleases struct {
	referralsv1.ReferralsServiceClient
}

func (refusingReleases) ReleaseHold(context.Context, *referralsv1.ReleaseHoldRequest, ...grpc.CallOption) (*referralsv1.Hold, error) {
	st, err := status.New(codes.FailedPrecondition, "locked").WithDetails(&errdetails.ErrorInfo{Reason: "HOLD_LOCKED"})
	if err != nil {
		return nil, err
	}
	return nil, st.Err()
}

// A release of a hold for a medication not agreed to that the service
// refuses for good fails the activity as that refusal, at the top: the SDK
// reads the outermost error alone, and a wrapped one would be tried again,
// as another type, for a day.
func TestARefusedReleaseForAnotherTreatmentStaysFinal(t *testing.T) {
	a := &Activities{Referrals: refusingReleases{}}
	err := a.releaseUnagreed(context.Background(), &referralsv1.Hold{Name: "clinics/north/holds/h1"}, "req-1")
	top, ok := err.(*temporal.ApplicationError)
	if !ok || !top.NonRetryable() || top.Type() != "HOLD_LOCKED" {
		t.Fatalf("releaseUnagreed = %#v; want the non-retryable HOLD_LOCKED refusal itself", err)
	}
}

// pagedReferrals lists its referrals one a page, the page token the
// index of the next.
type pagedReferrals struct {
	referralsv1.ReferralsServiceClient
	referrals []*referralsv1.Referral
}

func (f pagedReferrals) ListReferrals(_ context.Context, in *referralsv1.ListReferralsRequest, _ ...grpc.CallOption) (*referralsv1.ListReferralsResponse, error) {
	page, next := onePerPage(f.referrals, in.GetPageToken())
	return &referralsv1.ListReferralsResponse{Referrals: page, NextPageToken: next}, nil
}

// The referral an earlier try made is found on whatever page it is: read
// on the first alone, a retry would refer the person a second time.
func TestTheReferralAnEarlierTryMadeIsFoundOnAnyPage(t *testing.T) {
	const iv, fam = "clinics/north/interventions/i1", "clinics/north/families/f1"
	loved := &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE}
	mat := referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE
	a := &Activities{Referrals: pagedReferrals{referrals: []*referralsv1.Referral{
		{Name: "clinics/north/referrals/turned-down", Family: fam, Intervention: iv, ServiceKind: mat, Subject: loved,
			State: referralsv1.ReferralState_REFERRAL_STATE_REJECTED},
		{Name: "clinics/north/referrals/ours", Family: fam, Intervention: iv, ServiceKind: mat, Subject: loved},
	}}}
	if r, err := a.referredFor(context.Background(), iv, fam, nil, matKinds); err != nil || r.GetName() != "clinics/north/referrals/ours" {
		t.Fatalf("referral adopted: %v, %v; want ours, on the second page", r.GetName(), err)
	}
}

// pagedBarriers is a family whose open barriers come a page at a time.
type pagedBarriers struct {
	substanceFamily
	pages [][]familiesv1.BarrierKind
}

func (f pagedBarriers) ListBarriers(_ context.Context, in *familiesv1.ListBarriersRequest, _ ...grpc.CallOption) (*familiesv1.ListBarriersResponse, error) {
	i, _ := strconv.Atoi(cmp.Or(in.GetPageToken(), "0"))
	resp := &familiesv1.ListBarriersResponse{}
	for _, k := range f.pages[i] {
		resp.Barriers = append(resp.Barriers, &familiesv1.Barrier{Kind: k})
	}
	if i+1 < len(f.pages) {
		resp.NextPageToken = strconv.Itoa(i + 1)
	}
	return resp, nil
}

// A family that records two barriers of one kind (no insurance, and a
// copay it cannot meet) still gets a match the referrals service takes:
// that service refuses a barrier kind named twice, which left the person
// who said yes with no place held and no referral. Barriers past the
// first page count too.
func TestMatchNamesEachBarrierKindOnce(t *testing.T) {
	money, stigma, denial := familiesv1.BarrierKind_BARRIER_KIND_FINANCIAL, familiesv1.BarrierKind_BARRIER_KIND_STIGMA, familiesv1.BarrierKind_BARRIER_KIND_DENIAL
	a := &Activities{Families: pagedBarriers{substanceFamily: substanceFamily{substance: familiesv1.Substance_SUBSTANCE_HEROIN},
		pages: [][]familiesv1.BarrierKind{{money, stigma, money}, {denial, money}}}}
	req, _, err := a.matchRequest(context.Background(), "clinics/north/families/f1", nil, referralsv1.Urgency_URGENCY_IMMEDIATE, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []referralsv1.BarrierKind{referralsv1.BarrierKind_BARRIER_KIND_FINANCIAL, referralsv1.BarrierKind_BARRIER_KIND_STIGMA, referralsv1.BarrierKind_BARRIER_KIND_DENIAL}
	if !slices.Equal(req.GetBarriers(), want) {
		t.Fatalf("barriers %v; want %v", req.GetBarriers(), want)
	}
	// The rules the referrals service checks every request against.
	if err := protovalidate.Validate(req); err != nil {
		t.Fatalf("the match would be refused: %v", err)
	}
}

// zoneMeeting is a meeting in Chicago.
type zoneMeeting struct {
	interventionsv1.InterventionsServiceClient
}

func (zoneMeeting) GetIntervention(_ context.Context, in *interventionsv1.GetInterventionRequest, _ ...grpc.CallOption) (*interventionsv1.Intervention, error) {
	return &interventionsv1.Intervention{Name: in.GetName(), Family: "clinics/north/families/f1", TimeZone: "America/Chicago",
		StartTime:    timestamppb.New(time.Now().Add(72 * time.Hour)),
		Participants: []*interventionsv1.Participant{{MemberId: "mom"}, {MemberId: "dad"}}}, nil
}

// Someone who gave no time zone is reminded in the meeting's zone, or for
// an intake in the zone the other reminded gave: not in UTC. A zone given
// stays.
func TestRemindersWithoutAZoneTakeTheEventsZone(t *testing.T) {
	email := []*familiesv1.ContactChannel{{Kind: familiesv1.ChannelKind_CHANNEL_KIND_EMAIL, Value: "x@example.org"}}
	fam := recordFamily{fam: &familiesv1.Family{
		LovedOne: &familiesv1.LovedOne{MayContactDirectly: true, TimeZone: "America/Denver", ContactChannels: email},
		Members: []*familiesv1.Member{
			{Id: "mom", ConsentToContact: true, ContactChannels: email, Role: familiesv1.MemberRole_MEMBER_ROLE_CONTACT_PERSON},
			{Id: "dad", ConsentToContact: true, ContactChannels: email, TimeZone: "America/New_York"},
		}}}
	a := &Activities{Interventions: zoneMeeting{}, Families: fam}
	p, err := a.LoadPlan(context.Background(), "clinics/north/interventions/i1")
	if err != nil {
		t.Fatal(err)
	}
	zones := map[string]string{}
	for _, m := range p.Participants {
		zones[m.ID] = m.TimeZone
	}
	if zones["mom"] != "America/Chicago" || zones["dad"] != "America/New_York" {
		t.Fatalf("meeting reminders' zones %v; want mom in the meeting's, dad in his own", zones)
	}
	for _, m := range p.Participants {
		if m.EventZone != (m.ID == "mom") {
			t.Fatalf("%s: EventZone %v; want it for the one who gave no zone only", m.ID, m.EventZone)
		}
	}
	contacts, err := a.FamilyContacts(context.Background(), "clinics/north/families/f1")
	if err != nil || len(contacts) != 2 {
		t.Fatalf("FamilyContacts = %v, %v", contacts, err)
	}
	for _, c := range contacts {
		if c.TimeZone != "America/Denver" {
			t.Errorf("intake reminder to %s %s in %q; want the loved one's zone", c.Kind, c.ID, c.TimeZone)
		}
	}
	// The loved one not to be contacted: still their zone, not UTC.
	fam.fam.LovedOne.MayContactDirectly = false
	contacts, err = a.FamilyContacts(context.Background(), "clinics/north/families/f1")
	if err != nil || len(contacts) != 1 || contacts[0].ID != "mom" || contacts[0].TimeZone != "America/Denver" {
		t.Fatalf("FamilyContacts, the loved one not contacted = %+v, %v; want mom in the loved one's zone", contacts, err)
	}
}

// A resend made only after its window closed (the worker was down from
// before the member's quiet hours until after they began) is placed from
// now, not made with a send-by time already past, which its first claim
// would fail at once, using up one of its line's tries.
func TestLateResendIsPlacedFromNow(t *testing.T) {
	chicago, err := time.LoadLocation("America/Chicago")
	if err != nil {
		t.Fatal(err)
	}
	// Yesterday at 20:30 in Chicago, half an hour before mom's quiet
	// hours (21:00 to 08:00, familyFake) began.
	y := time.Now().In(chicago).AddDate(0, 0, -1)
	due := time.Date(y.Year(), y.Month(), y.Day(), 20, 30, 0, 0, chicago)
	old := &interventionsv1.Reminder{Name: "clinics/north/reminders/r1", RelatedResource: "clinics/north/interventions/i1", Message: "Reminder",
		Kind:      interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_UPCOMING,
		Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom", Family: "clinics/north/families/f1"}}
	f := &resendFakes{old: old, meeting: time.Now().Add(72 * time.Hour)}
	a := &Activities{Interventions: f, Families: familyFake{}}
	before := time.Now()
	if _, err := a.Resend(context.Background(), ResendRequest{Failed: old.GetName(), Due: due, RequestID: "r"}); err != nil {
		t.Fatal(err)
	}
	if by := f.created.GetSendByTime(); by != nil && !by.AsTime().After(before) {
		t.Fatalf("made with its send-by time %v already past", by.AsTime())
	}
	if got := f.created.GetDueTime().AsTime(); got.Before(before.Add(-time.Second)) {
		t.Fatalf("made due %v, in the past; want it placed from now", got)
	}
}

// rankedFake is a directory whose match ranks programs in a fixed order,
// whatever the services asked for (as the score counts them alike),
// leaving out those that offer none of them; full programs refuse a hold.
type rankedFake struct {
	holdsFake
	programs  []*referralsv1.Program
	full      map[string]bool
	asked     [][]referralsv1.ServiceKind
	made      []*referralsv1.HoldSlotRequest
	converted []string // of the holds set up in holdsFake
}

func (f *rankedFake) MatchPrograms(_ context.Context, in *referralsv1.MatchProgramsRequest, _ ...grpc.CallOption) (*referralsv1.MatchProgramsResponse, error) {
	f.asked = append(f.asked, in.GetServiceKinds())
	resp := &referralsv1.MatchProgramsResponse{}
	for _, p := range f.programs {
		if !ageFits(p, in.GetAge()) {
			continue // as the service leaves out a program the person's age is outside
		}
		if slices.ContainsFunc(p.GetServices(), func(k referralsv1.ServiceKind) bool { return slices.Contains(in.GetServiceKinds(), k) }) {
			resp.Matches = append(resp.Matches, &referralsv1.ProgramMatch{Program: p, Rank: int32(len(resp.Matches) + 1)})
		}
	}
	return resp, nil
}

func (f *rankedFake) GetProgram(_ context.Context, in *referralsv1.GetProgramRequest, _ ...grpc.CallOption) (*referralsv1.Program, error) {
	if i := slices.IndexFunc(f.programs, func(p *referralsv1.Program) bool { return p.GetName() == in.GetName() }); i >= 0 {
		return f.programs[i], nil
	}
	return nil, apperr.NotFound(in.GetName())
}

func (f *rankedFake) HoldSlot(_ context.Context, in *referralsv1.HoldSlotRequest, _ ...grpc.CallOption) (*referralsv1.Hold, error) {
	f.made = append(f.made, in)
	if f.full[in.GetProgram()] {
		return nil, apperr.FailedPrecondition(apperr.ReasonNoCapacity, "no slot free", nil)
	}
	return &referralsv1.Hold{Name: fmt.Sprintf("clinics/north/holds/h%d", len(f.made)), Program: in.GetProgram(), Family: in.GetFamily(),
		Intervention: in.GetIntervention(), ServiceKind: in.GetServiceKind(), ExpireTime: timestamppb.New(time.Now().Add(in.GetTtl().AsDuration()))}, nil
}

func (f *rankedFake) ListReferrals(context.Context, *referralsv1.ListReferralsRequest, ...grpc.CallOption) (*referralsv1.ListReferralsResponse, error) {
	return &referralsv1.ListReferralsResponse{}, nil
}

func (f *rankedFake) ConvertHold(_ context.Context, in *referralsv1.ConvertHoldRequest, _ ...grpc.CallOption) (*referralsv1.Referral, error) {
	if i := slices.IndexFunc(f.holds, func(h *referralsv1.Hold) bool { return h.GetName() == in.GetName() }); i >= 0 {
		h := f.holds[i]
		f.converted = append(f.converted, h.GetName())
		return &referralsv1.Referral{Name: "clinics/north/referrals/r0", Program: h.GetProgram(), ServiceKind: h.GetServiceKind()}, nil
	}
	i, err := strconv.Atoi(strings.TrimPrefix(in.GetName(), "clinics/north/holds/h"))
	if err != nil || i < 1 || i > len(f.made) || f.full[f.made[i-1].GetProgram()] {
		return nil, apperr.NotFound(in.GetName())
	}
	h := f.made[i-1]
	return &referralsv1.Referral{Name: "clinics/north/referrals/r1", Program: h.GetProgram(), ServiceKind: h.GetServiceKind()}, nil
}

// For opioids, a place is held, and a yes naming no treatment referred,
// at a program offering methadone or buprenorphine before any offering
// only naltrexone, which starts after withdrawal, however much higher the
// match ranks that one; with a job to keep, buprenorphine before
// methadone. Naltrexone is taken only when no other has room. The match
// asks for one tier at a time.
func TestTreatmentTiersComeBeforeTheScore(t *testing.T) {
	const iv, fam = "clinics/north/interventions/i1", "clinics/north/families/f1"
	const (
		meth = referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE
		bup  = referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE
		nalt = referralsv1.ServiceKind_SERVICE_KIND_MAT_NALTREXONE
		out  = referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT
	)
	programs := []*referralsv1.Program{ // best scored first
		{Name: "clinics/north/programs/nalt", Services: []referralsv1.ServiceKind{nalt, out}},
		{Name: "clinics/north/programs/meth", Services: []referralsv1.ServiceKind{meth}},
		{Name: "clinics/north/programs/bup", Services: []referralsv1.ServiceKind{bup, nalt}},
	}
	work := []familiesv1.BarrierKind{familiesv1.BarrierKind_BARRIER_KIND_LOGISTICAL_WORK}
	for _, c := range []struct {
		name      string
		substance familiesv1.Substance
		barriers  []familiesv1.BarrierKind
		full      []string
		program   string
		kind      referralsv1.ServiceKind
		asked     string
	}{
		{"heroin", familiesv1.Substance_SUBSTANCE_HEROIN, nil, nil, "meth", meth,
			"[[SERVICE_KIND_MAT_METHADONE SERVICE_KIND_MAT_BUPRENORPHINE]]"},
		{"fentanyl, a job to keep", familiesv1.Substance_SUBSTANCE_FENTANYL, work, nil, "bup", bup,
			"[[SERVICE_KIND_MAT_BUPRENORPHINE]]"},
		{"fentanyl, a job to keep, buprenorphine full", familiesv1.Substance_SUBSTANCE_FENTANYL, work, []string{"bup"}, "meth", meth,
			"[[SERVICE_KIND_MAT_BUPRENORPHINE] [SERVICE_KIND_MAT_METHADONE]]"},
		// The full buprenorphine program offers naltrexone too: not tried
		// again for it.
		{"heroin, methadone and buprenorphine full", familiesv1.Substance_SUBSTANCE_HEROIN, nil, []string{"meth", "bup"}, "nalt", nalt,
			"[[SERVICE_KIND_MAT_METHADONE SERVICE_KIND_MAT_BUPRENORPHINE] [SERVICE_KIND_MAT_NALTREXONE]]"},
		{"alcohol", familiesv1.Substance_SUBSTANCE_ALCOHOL, nil, nil, "nalt", nalt,
			"[[SERVICE_KIND_MAT_NALTREXONE SERVICE_KIND_OUTPATIENT SERVICE_KIND_INTENSIVE_OUTPATIENT SERVICE_KIND_INPATIENT]]"},
		{"not recorded", familiesv1.Substance_SUBSTANCE_UNSPECIFIED, nil, nil, "nalt", nalt,
			"[[SERVICE_KIND_MAT_METHADONE SERVICE_KIND_MAT_BUPRENORPHINE SERVICE_KIND_MAT_NALTREXONE]]"},
	} {
		full := map[string]bool{}
		for _, p := range c.full {
			full["clinics/north/programs/"+p] = true
		}
		for _, step := range []string{"hold", "yes"} {
			f := &rankedFake{programs: programs, full: full}
			a := &Activities{Families: substanceFamily{substance: c.substance, barriers: c.barriers}, Referrals: f, Interventions: checklistFake{}}
			program, err := holdOrYes(a, step, fam, iv, "")
			last := f.made[len(f.made)-1]
			if err != nil || program != "clinics/north/programs/"+c.program || last.GetServiceKind() != c.kind {
				t.Errorf("%s, %s: placed at %q for %v, %v; want %s for %v", c.name, step, program, last.GetServiceKind(), err, c.program, c.kind)
			}
			if got := fmt.Sprint(f.asked); got != c.asked {
				t.Errorf("%s, %s: the match was asked for %s, want %s", c.name, step, got, c.asked)
			}
			if tried := len(f.made); tried != len(c.full)+1 {
				t.Errorf("%s, %s: %d holds tried (%v), want %d", c.name, step, tried, f.made, len(c.full)+1)
			}
		}
	}
}

// slotlessFake is a directory of one naloxone program that reports no
// free intake slot: the match leaves it out of an immediate need, as the
// referrals service does. It keeps the referrals made.
type slotlessFake struct {
	noReferrals
	made []*referralsv1.Referral
}

func (f *slotlessFake) MatchPrograms(_ context.Context, in *referralsv1.MatchProgramsRequest, _ ...grpc.CallOption) (*referralsv1.MatchProgramsResponse, error) {
	if in.GetUrgency() == referralsv1.Urgency_URGENCY_IMMEDIATE {
		return &referralsv1.MatchProgramsResponse{}, nil
	}
	return &referralsv1.MatchProgramsResponse{Matches: []*referralsv1.ProgramMatch{{Program: &referralsv1.Program{
		Name: "clinics/north/programs/naloxone", Services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_HARM_REDUCTION_NALOXONE}}}}}, nil
}

func (f *slotlessFake) CreateReferral(_ context.Context, in *referralsv1.CreateReferralRequest, _ ...grpc.CallOption) (*referralsv1.Referral, error) {
	r := proto.CloneOf(in.GetReferral())
	r.Name = fmt.Sprintf("clinics/north/referrals/r%d", len(f.made)+1)
	f.made = append(f.made, r)
	return r, nil
}

// After an overdose the loved one is referred to harm reduction at once,
// though no naloxone program reports a free intake slot: a referral takes
// none, and the match would otherwise leave every such program out. The
// referral keeps its urgency.
func TestImmediateSupportReferralNeedsNoFreeSlot(t *testing.T) {
	f := &slotlessFake{}
	a := &Activities{Families: substanceFamily{substance: familiesv1.Substance_SUBSTANCE_FENTANYL}, Referrals: f}
	got, err := a.CreateSupportReferrals(context.Background(), SupportRequest{Family: "clinics/north/families/f1",
		Kinds: []string{"HARM_REDUCTION_NALOXONE"}, Urgency: "IMMEDIATE", RequestID: "od"})
	if err != nil || len(got) != 1 || len(f.made) != 1 || f.made[0].GetUrgency() != referralsv1.Urgency_URGENCY_IMMEDIATE ||
		f.made[0].GetProgram() != "clinics/north/programs/naloxone" {
		t.Fatalf("referrals %v (%v), %v; want one IMMEDIATE referral to the naloxone program", got, f.made, err)
	}
}

// A place the workflow held for naltrexone, when no methadone or
// buprenorphine program had room, gives way to one of those that has room
// by the time the place is held again or the loved one says yes: it is
// given back, and the place or referral is made at the better one. A place
// a counselor held by hand stays theirs; with no room in an earlier tier,
// the held place stands.
func TestAHeldPlaceOfALaterTierGivesWay(t *testing.T) {
	const iv, fam = "clinics/north/interventions/i1", "clinics/north/families/f1"
	programs := []*referralsv1.Program{
		{Name: "clinics/north/programs/nalt", Services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_MAT_NALTREXONE}},
		{Name: "clinics/north/programs/meth", Services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE}},
	}
	for _, c := range []struct {
		name         string
		workflowHeld bool
		methFull     bool
		wantProgram  string
		wantReleased bool
	}{
		{"the workflow's, methadone has room", true, false, "meth", true},
		{"a counselor's, methadone has room", false, false, "nalt", false},
		{"the workflow's, methadone full", true, true, "nalt", false},
	} {
		held := func() []*referralsv1.Hold {
			return []*referralsv1.Hold{{Name: "clinics/north/holds/held", Program: "clinics/north/programs/nalt", Family: fam, Intervention: iv,
				ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_NALTREXONE, State: referralsv1.HoldState_HOLD_STATE_HELD,
				WorkflowHeld: c.workflowHeld, ExpireTime: timestamppb.New(time.Now().Add(48 * time.Hour))}}
		}
		for _, step := range []string{"hold", "yes"} {
			f := &rankedFake{programs: programs, full: map[string]bool{"clinics/north/programs/meth": c.methFull}}
			f.holds = held()
			a := &Activities{Families: substanceFamily{substance: familiesv1.Substance_SUBSTANCE_HEROIN}, Referrals: f, Interventions: checklistFake{}}
			program, err := holdOrYes(a, step, fam, iv, "clinics/north/holds/held")
			released := slices.ContainsFunc(f.releases, func(r *referralsv1.ReleaseHoldRequest) bool { return r.GetName() == "clinics/north/holds/held" })
			if err != nil || program != "clinics/north/programs/"+c.wantProgram || released != c.wantReleased {
				t.Errorf("%s, %s: at %q, %v, the held place released %v; want %s, released %v", c.name, step, program, err, released, c.wantProgram, c.wantReleased)
			}
		}
	}
}

// A place held at a program whose age limits leave the loved one out (their
// birth date recorded since the place was held) is not adopted for the
// meeting nor converted at a yes: the workflow's own is given back, and a
// place is found at a program that takes them.
func TestAHeldPlaceOutsideTheAgeLimitsIsNotUsed(t *testing.T) {
	const iv, fam = "clinics/north/interventions/i1", "clinics/north/families/f1"
	sixteen := time.Now().AddDate(-16, 0, -1).Format(time.DateOnly)
	programs := []*referralsv1.Program{
		{Name: "clinics/north/programs/adults", Services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE}, MinAge: 18},
		{Name: "clinics/north/programs/youth", Services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE}, MaxAge: 25},
	}
	for _, step := range []string{"hold", "yes"} {
		f := &rankedFake{programs: programs}
		f.holds = []*referralsv1.Hold{{Name: "clinics/north/holds/held", Program: "clinics/north/programs/adults", Family: fam, Intervention: iv,
			ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE, State: referralsv1.HoldState_HOLD_STATE_HELD,
			WorkflowHeld: true, ExpireTime: timestamppb.New(time.Now().Add(48 * time.Hour))}}
		a := &Activities{Families: substanceFamily{substance: familiesv1.Substance_SUBSTANCE_HEROIN, birth: sixteen}, Referrals: f, Interventions: checklistFake{}}
		program, err := holdOrYes(a, step, fam, iv, "clinics/north/holds/held")
		released := slices.ContainsFunc(f.releases, func(r *referralsv1.ReleaseHoldRequest) bool { return r.GetName() == "clinics/north/holds/held" })
		if err != nil || program != "clinics/north/programs/youth" || !released || slices.Contains(f.converted, "clinics/north/holds/held") {
			t.Errorf("%s: at %q, %v, the adults' place released %v, converted %v; want the youth program, the adults' place given back",
				step, program, err, released, f.converted)
		}
	}
}

// holdOrYes holds a place ahead of the meeting (step "hold"), or makes a
// plain yes's referral (step "yes", with the place the workflow held, if
// any), and says at which program.
func holdOrYes(a *Activities, step, fam, iv, hold string) (string, error) {
	if step == "hold" {
		res, err := a.HoldTreatment(context.Background(), HoldRequest{Family: fam, Intervention: iv, RequestID: "r", TTL: time.Hour})
		return res.Program, err
	}
	ref, err := a.StartImmediateReferral(context.Background(), ImmediateRequest{Family: fam, Intervention: iv, Hold: hold, RequestID: "y"})
	return ref.Program, err
}

// A retry after a first attempt that held a methadone place, the last at
// its program, and lost its answer before it converted the place (a plain
// yes) or gave the naltrexone one back (a hold for the meeting): the
// methadone place is taken, not passed over for a second one or for the
// naltrexone place, and the naltrexone place goes back.
func TestARetryTakesTheEarlierTiersPlaceItHeld(t *testing.T) {
	const iv, fam = "clinics/north/interventions/i1", "clinics/north/families/f1"
	programs := []*referralsv1.Program{
		{Name: "clinics/north/programs/nalt", Services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_MAT_NALTREXONE}},
		{Name: "clinics/north/programs/meth", Services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE}},
	}
	for _, step := range []string{"hold", "yes"} {
		f := &rankedFake{programs: programs, full: map[string]bool{"clinics/north/programs/meth": true}}
		expires := timestamppb.New(time.Now().Add(48 * time.Hour))
		f.holds = []*referralsv1.Hold{
			{Name: "clinics/north/holds/held", Program: "clinics/north/programs/nalt", Family: fam, Intervention: iv, WorkflowHeld: true,
				ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_NALTREXONE, State: referralsv1.HoldState_HOLD_STATE_HELD, ExpireTime: expires},
			{Name: "clinics/north/holds/first-try", Program: "clinics/north/programs/meth", Family: fam, Intervention: iv, WorkflowHeld: true,
				ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE, State: referralsv1.HoldState_HOLD_STATE_HELD, ExpireTime: expires},
		}
		a := &Activities{Families: substanceFamily{substance: familiesv1.Substance_SUBSTANCE_HEROIN}, Referrals: f, Interventions: checklistFake{}}
		program, err := holdOrYes(a, step, fam, iv, "clinics/north/holds/held")
		released := slices.ContainsFunc(f.releases, func(r *referralsv1.ReleaseHoldRequest) bool { return r.GetName() == "clinics/north/holds/held" })
		if err != nil || program != "clinics/north/programs/meth" || !released || len(f.made) != 0 ||
			slices.Contains(f.converted, "clinics/north/holds/held") {
			t.Errorf("%s: at %q, %v, naltrexone place released %v, new holds %v, converted %v; want the methadone place taken, nothing new held",
				step, program, err, released, f.made, f.converted)
		}
	}
}

// countingFamily counts the reads of a family's barriers.
type countingFamily struct {
	substanceFamily
	barrierReads *int
}

func (f countingFamily) ListBarriers(ctx context.Context, in *familiesv1.ListBarriersRequest, opts ...grpc.CallOption) (*familiesv1.ListBarriersResponse, error) {
	*f.barrierReads++
	return f.substanceFamily.ListBarriers(ctx, in, opts...)
}

// Holding for the meeting again with a place the workflow holds reads the
// family's barriers only when they could put that place in a later tier:
// for opioids and methadone (a job to keep puts buprenorphine first), not
// for buprenorphine, nor for alcohol, whose treatments are one tier.
func TestAdoptingAPlaceReadsBarriersOnlyWhenTheyCouldMatter(t *testing.T) {
	const iv, fam = "clinics/north/interventions/i1", "clinics/north/families/f1"
	for _, c := range []struct {
		substance familiesv1.Substance
		kind      referralsv1.ServiceKind
		reads     int
	}{
		{familiesv1.Substance_SUBSTANCE_ALCOHOL, referralsv1.ServiceKind_SERVICE_KIND_MAT_NALTREXONE, 0},
		{familiesv1.Substance_SUBSTANCE_HEROIN, referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, 0},
		{familiesv1.Substance_SUBSTANCE_HEROIN, referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE, 1},
	} {
		f := &rankedFake{}
		f.holds = []*referralsv1.Hold{{Name: "clinics/north/holds/held", Program: "clinics/north/programs/p", Family: fam, Intervention: iv,
			ServiceKind: c.kind, State: referralsv1.HoldState_HOLD_STATE_HELD, WorkflowHeld: true, ExpireTime: timestamppb.New(time.Now().Add(48 * time.Hour))}}
		reads := 0
		a := &Activities{Families: countingFamily{substanceFamily{substance: c.substance}, &reads}, Referrals: f, Interventions: checklistFake{}}
		res, err := a.HoldTreatment(context.Background(), HoldRequest{Family: fam, Intervention: iv, RequestID: "r", TTL: time.Hour})
		if err != nil || res.Hold != "clinics/north/holds/held" || reads != c.reads {
			t.Errorf("%v, %v held: %+v, %v after %d reads of the barriers; want the place adopted after %d", c.substance, c.kind, res, err, reads, c.reads)
		}
	}
}
