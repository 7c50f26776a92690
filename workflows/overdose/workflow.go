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
	"github.com/handoff-health/handoff/workflows/flow"
)

// Name is the workflow type's registered name.
const Name = "OverdoseAlert"

// Alert is the reminder the counselor gets. Like the boundary workflow's,
// it says nothing of what happened: a reminder may go out by SMS or email,
// and the warning sign it names tells the counselor in the app.
const Alert = "Urgent: please contact the family today."

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
// when another answer came first (AnsweredBefore) or the family is gone.
type Result struct {
	Reminder       string
	Referrals      []string
	AnsweredBefore bool
}

// Workflow waits the clinic's OverdoseGrace, then, unless the overdose was
// answered meanwhile, alerts the counselor (again if the alert's delivery
// fails) and refers the loved one to harm reduction. The wait is for the boundary workflow
// a refusal is about to start: its outbox event and the overdose's come
// from different services and may arrive in either order, and the boundary
// workflow answers overdoses recorded since the meeting began when it
// starts. Waiting lets it answer fully, and this workflow then sees its
// alert and stays silent.
func Workflow(ctx workflow.Context, in Input) (Result, error) {
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
	// Unanswered overdoses of the family recorded since this one: an
	// overdose alert naming it, from any workflow, answers it.
	var open []string
	err := flow.Call(ctx, &open, flow.A.OverdosesSince, activities.OverdosesRequest{Family: family, Since: in.Recorded})
	if gone(err) {
		return Result{}, nil
	}
	if err != nil {
		return Result{}, err
	}
	if !slices.Contains(open, in.WarningSign) {
		return Result{AnsweredBefore: true}, nil
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
	name, err := flow.RemindAt(ctx, clinic, safety.Counselor, "OVERDOSE_ALERT", in.WarningSign, Alert, "overdose-alert", workflow.Now(ctx))
	if err != nil {
		return Result{}, err
	}
	// Harm reduction now (DOMAIN.md): the loved one is referred at once to
	// the best-matched naloxone and syringe services programs, if any.
	if err := flow.Call(ctx, &referrals, flow.A.CreateSupportReferrals, activities.SupportRequest{
		Family: family, Kinds: []string{"HARM_REDUCTION_NALOXONE", "HARM_REDUCTION_SYRINGE_SERVICES"}, Urgency: "IMMEDIATE",
		RequestID: flow.RequestID(ctx, "harm-reduction"),
	}); err != nil {
		return Result{}, err
	}
	res := Result{Reminder: name, Referrals: referrals}
	if name == "" {
		return res, nil
	}
	// An alert whose delivery fails goes out again under the clinic's
	// policy for failed reminders, as the other workflows' do; the workflow
	// listens for as long as those resends take.
	if listen := Listen(settings); listen > 0 {
		flow.RetryFailedReminders(ctx, settings, &flow.Resends{}, nil)
		if err := workflow.Sleep(ctx, listen); err != nil {
			return Result{}, err
		}
	}
	return res, nil
}

// Listen is how long the workflow waits for the alert's delivery failures:
// each resend waits ReminderRetryDelay, and the automation is given as long
// again to attempt it.
func Listen(s activities.Settings) time.Duration {
	return 2 * time.Duration(s.ReminderRetries) * s.ReminderRetryDelay
}

// gone reports whether an activity failed because the family was deleted:
// then there is no one to alert.
func gone(err error) bool {
	t := activities.ErrorType(err)
	return t == "RESOURCE_NOT_FOUND" || t == "NotFound"
}
