// Package overdose is the workflow that alerts a family's counselor to an
// overdose recorded while no boundary workflow watches the family: before
// any intervention, while one is being planned, or after the loved one said
// yes. The boundary workflow answers the overdoses it hears of itself, and
// brings its check-ins closer too; this one answers every other one, whoever
// recorded it: the counselor is alerted and the loved one referred to harm
// reduction.
package overdose

import (
	"slices"
	"time"

	"go.temporal.io/sdk/workflow"

	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/boundary"
	"github.com/handoff-health/handoff/workflows/flow"
	"github.com/handoff-health/handoff/workflows/ids"
)

// Name is the workflow type's registered name.
const Name = "OverdoseAlert"

// Alert is the reminder the counselor gets. Like the boundary workflow's,
// it says nothing of what happened: a reminder may go out by SMS or email,
// and the warning sign it names tells the counselor in the app.
const Alert = "Urgent: please contact the family today."

// HarmReductionReason is the reason its harm-reduction referrals give.
const HarmReductionReason = "Harm reduction offered."

// Input starts the workflow.
type Input struct {
	// Family is the family, `clinics/{clinic}/families/{family}`.
	Family string
	// WarningSign is the overdose's warning sign,
	// `clinics/{clinic}/families/{family}/warningSigns/{sign}`.
	WarningSign string
	// Recorded is when the warning sign was recorded.
	Recorded time.Time
}

// Result says how the overdose was answered: Reminder is the alert this
// workflow created and Referrals the harm-reduction referrals, both empty
// when the family's boundary workflow took the overdose over
// (HandedToBoundary), another answer came first or the overdose was
// retracted as recorded in error (AnsweredBefore), or the family is gone.
type Result struct {
	Reminder         string
	Referrals        []string
	HandedToBoundary bool
	AnsweredBefore   bool
}

// Workflow waits the clinic's OverdoseGrace and then, unless the overdose
// was answered or retracted meanwhile, hands it to the family's boundary
// workflow if one runs by then; otherwise it alerts the counselor (again
// if the alert's delivery fails) and refers the loved one to harm
// reduction.
//
// The wait is for the boundary workflow a refusal is about to start: its
// outbox event and the overdose's come from different services and may
// arrive in either order. One answer comes from one place: a running
// boundary workflow answers each warning sign once, whether it read it at
// its start (overdoses since the meeting began) or is told now. Only a
// boundary workflow starting in the instant between the handover failing
// and the alert being created could answer it a second time.
func Workflow(ctx workflow.Context, in Input) (Result, error) {
	res, err := run(ctx, in)
	return res, flow.Final(err)
}

// run is Workflow, its failure as the activity gave it.
func run(ctx workflow.Context, in Input) (Result, error) {
	ctx = flow.BeginEpoch(ctx)
	ctx = flow.WithActivityOptions(ctx)
	family, clinic := in.Family, aip.Clinic(in.Family)
	var settings activities.Settings
	if err := flow.Call(ctx, &settings, flow.A.LoadSettings, clinic); err != nil {
		return Result{}, err
	}
	if settings.OverdoseGrace > 0 {
		if err := workflow.Sleep(ctx, settings.OverdoseGrace); err != nil {
			return Result{}, err
		}
	}
	// Whether the overdose still waits for an answer: not retracted as
	// recorded in error, and named by no overdose alert of any workflow
	// (OverdosesSince lists the family's overdoses since this one that
	// are neither). done says the workflow has nothing left to do.
	open := func(ctx workflow.Context) (res Result, done bool, err error) {
		var open []string
		err = flow.Call(ctx, &open, flow.A.OverdosesSince, activities.OverdosesRequest{Family: family, Since: in.Recorded,
			IgnoreFrom: workflow.GetInfo(ctx).WorkflowExecution.ID, Sign: in.WarningSign})
		if gone(err) {
			return Result{}, true, nil
		}
		if err != nil {
			return Result{}, true, err
		}
		if !slices.Contains(open, in.WarningSign) {
			return Result{AnsweredBefore: true}, true, nil
		}
		return Result{}, false, nil
	}
	// Retracted in the grace, the overdose is not handed over either: the
	// boundary workflow would answer what it is told without asking.
	asked := flow.Version(ctx, versionOpenBeforeHandover, 1) >= 1
	if asked {
		if res, done, err := open(ctx); done {
			return res, err
		}
	}
	// A boundary workflow running now answers it fully (harm reduction,
	// closer check-ins) and knows whether it already did. Signalling one
	// that is not running fails, and then the answer is this workflow's.
	err := workflow.SignalExternalWorkflow(ctx, ids.Boundary(family), "", boundary.SignalOverdose,
		boundary.Overdose{WarningSign: in.WarningSign}).Get(ctx, nil)
	if err == nil {
		return Result{HandedToBoundary: true}, nil
	}
	workflow.GetLogger(ctx).Info("no boundary workflow to hand the overdose to", "error", err)
	// Not asked again when asked before the handover: only the refused
	// signal came between.
	if !asked {
		if res, done, err := open(ctx); done {
			return res, err
		}
	}
	// The counselor of now: the family may have changed hands.
	var safety activities.Safety
	var referrals []string
	err = flow.Call(ctx, &safety, flow.A.FamilySafety, family)
	if gone(err) {
		return Result{}, nil
	}
	if err != nil {
		return Result{}, err
	}
	// The alert first: it is what tells a boundary workflow starting now
	// that this overdose was answered.
	name, err := flow.RemindAt(ctx, clinic, safety.Counselor, "OVERDOSE_ALERT", in.WarningSign, Alert, "overdose-alert", time.Time{})
	if err != nil {
		return Result{}, err
	}
	// Not once the overdose was retracted as recorded in error, another
	// workflow's alert answered it too, or the family was deleted. Asked
	// just before each resend; a check that fails, or takes longer than
	// flow.SoonEnough (the families service down), sends it all the same,
	// rather than hold the alert for a day of retries.
	stale := func(ctx workflow.Context, _ string) bool {
		if flow.Version(ctx, versionResendWhileOpen, 1) < 1 {
			return false
		}
		_, done, err := open(flow.Soon(ctx, flow.SoonEnough))
		if err != nil {
			workflow.GetLogger(ctx).Warn("could not tell whether the overdose still stands; sending again", "error", err)
			return false
		}
		return done
	}
	// An alert whose delivery fails goes out again under the clinic's
	// policy for failed reminders, as the other workflows' do, from the
	// moment it is made: not after the referrals below, which may take a
	// day of retries in an outage of the referrals service.
	var resends *flow.Resends
	listen := name != "" && flow.ListenFor(settings) > 0
	if listen && flow.Version(ctx, versionResendFromAlert, 1) >= 1 {
		resends = &flow.Resends{}
		flow.RetryFailedReminders(ctx, settings, resends, stale)
	}
	// Harm reduction now (DOMAIN.md): the loved one is referred, with
	// immediate urgency, to the best-matched naloxone and syringe services
	// programs, if any. The reason says only what is offered: the loved
	// one may be in treatment, or not yet asked.
	if err := flow.Call(ctx, &referrals, flow.A.CreateSupportReferrals, activities.SupportRequest{
		Family: family, Kinds: []string{"HARM_REDUCTION_NALOXONE", "HARM_REDUCTION_SYRINGE_SERVICES"}, Urgency: "IMMEDIATE",
		RequestID: flow.RequestID(ctx, "harm-reduction"), Reason: HarmReductionReason,
	}); err != nil {
		if gone(err) {
			// Deleted since the alert: no one is left to refer.
			return Result{Reminder: name}, nil
		}
		// The alert is made: failing the run would have it run again
		// (the workflow is retried), handing the overdose over a second
		// time and dropping the failures of the alert's delivery this run
		// would have resent. The counselor, alerted, refers by hand.
		if !flow.GoOnPast(ctx, err, versionReferralFailureKeepsAlert, "harm-reduction referrals after an overdose failed; the alert stands") {
			return Result{}, err
		}
		referrals = nil
		if err := flow.Remind(ctx, clinic, safety.Counselor, "REFERRAL_ESCALATION", family, ReferralsFailed, "referrals-failed"); err != nil {
			workflow.GetLogger(ctx).Warn("telling the counselor that the referrals failed failed", "error", err)
		}
	}
	res := Result{Reminder: name, Referrals: referrals}
	if name == "" {
		return res, nil
	}
	// The workflow listens for as long as the resends take.
	if listen {
		if resends == nil {
			// A run begun before versionResendFromAlert starts resending here.
			resends = &flow.Resends{}
			flow.RetryFailedReminders(ctx, settings, resends, stale)
		}
		if err := flow.Listen(ctx, settings, resends, time.Time{}, nil); err != nil {
			return Result{}, err
		}
	}
	return res, nil
}

// versionResendFromAlert guards resending a failed alert from when it is
// made. Before, failures were taken only after the harm-reduction
// referrals, and an outage of the referrals service held a failed alert
// back for up to a day.
const versionResendFromAlert = "overdose-resend-from-alert"

// gone reports whether an activity failed because the family was deleted:
// then there is no one to alert.
func gone(err error) bool {
	t := activities.ErrorType(err)
	return t == "RESOURCE_NOT_FOUND" || t == "NotFound"
}

// ReferralsFailed tells the counselor, after the alert, that the
// referrals it is followed by could not be made.
const ReferralsFailed = "The support referrals for this family could not be made: please make them by hand."

// versionOpenBeforeHandover guards asking, before the overdose is handed
// to a running boundary workflow, whether it still waits for an answer.
// Before, one retracted in the grace was handed over and answered. Asked
// in every run after the grace: no state of the family beyond the
// overdose this workflow's type already shows.
const versionOpenBeforeHandover = "open-before-handover"

// versionResendWhileOpen guards asking, before a failed alert (or the
// notice that the referrals failed) is sent again, whether the overdose
// still stands: before, one retracted since was alerted again. Asked only
// when a delivery failed.
const versionResendWhileOpen = "resend-while-open"

// versionReferralFailureKeepsAlert guards going on, past failed
// harm-reduction referrals, to listen for the alert's failed deliveries
// instead of failing the run after the alert was made.
const versionReferralFailureKeepsAlert = "referral-failure-keeps-alert"
