package activities

import (
	"time"

	"github.com/handoff-health/handoff/workflows/schedule"
)

// Person is someone a reminder may go to, with only what placing and
// addressing the reminder needs: ids, channel, zone and quiet hours.
type Person struct {
	Kind       string // counselor, member, loved_one, supervisor
	ID         string // counselor user id or member id; empty for the loved one
	Family     string
	Channel    string // SMS, PHONE, EMAIL, IN_APP
	TimeZone   string
	QuietStart string
	QuietEnd   string
	// EventZone says TimeZone is the meeting's, the person having given
	// none: it moves with the meeting.
	EventZone bool
}

// Recipient is p as reminder placement sees it.
func (p Person) Recipient() schedule.Recipient {
	return schedule.Recipient{Kind: p.Kind, ID: p.ID, Channel: p.Channel, TimeZone: p.TimeZone,
		Quiet: schedule.QuietHours{Start: p.QuietStart, End: p.QuietEnd}}
}

// Plan is what the intervention workflow needs to know about its meeting.
type Plan struct {
	Clinic       string
	Intervention string
	Family       string
	Counselor    Person
	Start        time.Time
	Duration     time.Duration
	Level        int32
	State        string
	// Participants are the members taking part who agreed to be contacted.
	Participants []Person
	FirstContact time.Time
}

// HoldRequest asks for a treatment slot fitted to the family.
type HoldRequest struct {
	Intervention string
	Family       string
	TTL          time.Duration
	RequestID    string
	// Until is when the meeting ends: a live hold lapsing before is not
	// adopted. Zero adopts any (workflows begun before the field was).
	Until time.Time
}

// HoldResult names the hold taken.
type HoldResult struct {
	Hold    string
	Program string
	// Expires is when the hold lapses: the one adopted (a counselor's, or
	// an earlier try's) may lapse sooner than the workflow asked. Zero in
	// results recorded before it was added.
	Expires time.Time
}

// ReminderRequest creates one reminder.
type ReminderRequest struct {
	Clinic  string
	To      Person
	Kind    string // a ReminderKind without its prefix, e.g. INTERVENTION_UPCOMING
	Related string
	Message string
	// Due is when the reminder is due; zero for now, by the service's
	// clock, so that a retried step sends the same request.
	Due       time.Time
	RequestID string
	// Origin is the workflow id told if delivery fails.
	Origin string
	// Awake asks, for a reminder due now, that the recipient's quiet hours
	// be checked again when it is made: the workflow found them not begun,
	// but a try made later (the service was down) may fall in them. The
	// reminder then waits for their end, unless that is not before
	// AwakeBy.
	Awake bool
	// AwakeBy is when what the reminder is about happens (zero for
	// nothing). Besides Awake, it decides the send-by time: none when it
	// falls in the quiet hours that would begin it (schedule.SendBy).
	AwakeBy time.Time
	// Meeting is the start, as the workflow knows it, of the meeting a
	// notice about it is for (an overdue outcome, an escalation, no hold
	// yet); zero for none. The service refuses the notice if the meeting
	// has moved since, as it does a meeting reminder (AwakeBy).
	Meeting time.Time
}

// ResendRequest creates a new reminder like a failed one, due at Due.
type ResendRequest struct {
	Failed    string
	Due       time.Time
	RequestID string
}

// Resent is the reminder Resend made, and until when its delivery can
// fail: its send-by time, or its due time when it has none (the
// automation's attempts after that are ListenFor's to wait out). Its due
// time can be hours after the one asked: quiet hours move it.
type Resent struct {
	Reminder string
	FailsBy  time.Time
}

// CancelRemindersRequest cancels the undelivered reminders of a resource.
type CancelRemindersRequest struct {
	Clinic string
	// Related is the resource the reminders are about; empty, with Origin
	// set, for every reminder that workflow made.
	Related   string
	Reason    string
	RequestID string
	// Only, when set, limits the cancelling to reminders to these people.
	Only []Person
	// Kind, when set, limits it to reminders of that kind (a ReminderKind
	// without its prefix); Kinds to reminders of any of those.
	Kind  string
	Kinds []string
	// Origin, when set, limits it to reminders made by that workflow (its
	// id): a workflow running beside another on the same resource (the
	// MAT intake beside its intervention) cancels only its own.
	Origin string
}

// CancelReminderRequest cancels one reminder by name.
type CancelReminderRequest struct {
	Name      string
	Reason    string
	RequestID string
}

// ReleaseRequest releases a hold.
type ReleaseRequest struct {
	Hold      string
	Reason    string
	RequestID string
}

// ReleaseHeldRequest gives back every live treatment hold of the intervention for
// the family: those a try may have made whose answer never arrived.
type ReleaseHeldRequest struct {
	Intervention string
	Family       string
	Reason       string
	RequestID    string
	// AnyService releases holds for any service, not only treatment, and
	// those a counselor made too: for an intervention that no longer takes
	// place, every place held for it.
	AnyService bool
	// Hold is the caller's own hold, if it has one: released whoever made
	// it, for a workflow may have taken over a place a counselor held by
	// hand (the meeting's workflow adopts one, and hands it to the intake).
	Hold string
}

// TreatmentEntryRequest records on a family that the loved one entered
// treatment.
type TreatmentEntryRequest struct {
	Family    string
	RequestID string
}

// ImmediateRequest asks for an immediate MAT referral: from the held slot
// when there is one, otherwise at the best program with a free slot that was
// not tried yet.
type ImmediateRequest struct {
	Family       string
	Intervention string
	Hold         string
	Exclude      []string
	FirstContact time.Time
	RequestID    string
	// Medications are the treatments the loved one agreed to, as
	// ServiceKind names without their prefix: MAT services, or for a
	// partial yes without medication inpatient, outpatient or intensive
	// outpatient care. None (a plain yes, or a workflow begun before the
	// field was) is a treatment that suits the loved one: MAT for opioids,
	// naltrexone or care for alcohol, care for stimulants, and any MAT
	// service when the substance is not recorded.
	Medications []string
}

// Referral names a referral and its program.
type Referral struct {
	Name    string
	Program string
	// Adopted is set for a referral made before this call (by hand, or
	// by an earlier try): it may have moved already.
	Adopted bool `json:",omitempty"`
}

// ReferralInfo is a referral's state, as the workflow needs it.
type ReferralInfo struct {
	State           string // a ReferralState without its prefix
	Program         string
	NoShows         int32
	Appointment     time.Time
	DaysToTreatment int32
}

// SupportRequest asks for referrals of the given service kinds.
type SupportRequest struct {
	Family       string
	Intervention string
	// Member is the family member referred; empty refers the loved one.
	Member    string
	Kinds     []string // ServiceKinds without their prefix
	Urgency   string   // IMMEDIATE, URGENT or ROUTINE
	RequestID string
	// Reason, if set, is every referral's reason; empty gives each kind
	// the boundary path's wording. A retry across a deploy sends the same
	// request, so the wording of a request id must never change.
	Reason string
}

// Safety is what the boundary workflow needs about a family.
type Safety struct {
	// Status is the SafetyScreenStatus without its prefix: CURRENT,
	// MISSING, EXPIRED or HIGH_RISK.
	Status string
	// Boundaries are the ACTIVE or REINFORCED boundaries.
	Boundaries []string
	// WithConsequence are those of Boundaries that state a consequence.
	WithConsequence []string
	// Members are the members who agreed to be contacted.
	Members []Person
	// ContactPerson is the member the clinic contacts first, if any who
	// agreed to be contacted.
	ContactPerson string
	Counselor     Person
	// Closed is set when the family's case is closed: the clinic no
	// longer follows it up.
	Closed bool `json:",omitempty"`
	// InTreatment is set when the family is ENGAGED_IN_TREATMENT: its
	// loved one is in treatment, and no boundary is reinforced with it.
	InTreatment bool `json:",omitempty"`
}

// OverdosesRequest asks for a family's overdoses recorded since a time.
type OverdosesRequest struct {
	Family string
	Since  time.Time
	// IgnoreFrom is a workflow id whose own alerts do not count as
	// answers: a workflow whose task is retried after its alert was made
	// must not take that alert for someone else's.
	IgnoreFrom string
	// IgnoreSince, for a workflow id that is reused (the boundary
	// workflow's, one per family), is when the asking execution started:
	// an alert of that id due before it is an earlier execution's, and
	// does answer. Zero: every alert of IgnoreFrom is the asker's.
	IgnoreSince time.Time
	// Sign, when set, is the one overdose the asker wants to know about:
	// the answer lists it or nothing, and no other sign's alerts are
	// looked up.
	Sign string
}

// ReinforceRequest records a reinforcement.
type ReinforceRequest struct {
	Boundary  string
	Reason    string
	RequestID string
}

// ProposeRequest drafts the next intervention after a refusal.
type ProposeRequest struct {
	Previous  string
	Level     int32
	Notes     string
	RequestID string
}

// MeetingsRequest asks how many of a family's meetings at a level were
// held.
type MeetingsRequest struct {
	Family string
	Level  int32
}

// WithdrawDraftsRequest asks to cancel a family's draft meetings, and says
// why.
type WithdrawDraftsRequest struct {
	Family    string
	Reason    string
	RequestID string
}

// CloseFamilyRequest asks to stop what is still open for a family whose
// record was deleted (CloseFamily) or whose case was closed
// (CloseClosedFamily).
type CloseFamilyRequest struct {
	Family    string
	RequestID string
}

// WithdrawRequest asks for the reminders of a family's people who may no
// longer be contacted to be cancelled.
type WithdrawRequest struct {
	Family    string
	RequestID string
}

// Closed is what CloseFamily or CloseClosedFamily stopped.
type Closed struct {
	Interventions int // drafts and scheduled meetings cancelled
	Reminders     int // reminders to the family's people cancelled
	Holds         int // places held for the family outside any meeting, given back
	// Reopened is set when the family's case was no longer closed as
	// CloseClosedFamily, or the FamilyClosed workflow, looked (reopened,
	// or deleted since, which FamilyDeleted answers): nothing was stopped.
	Reopened bool `json:",omitempty"`
}

// CheckInRecord is a check-in a counselor recorded on a meeting, as the
// boundary workflow takes it.
type CheckInRecord struct {
	Number              int32
	WindowOfOpportunity bool
	NewWarningSigns     bool
}
