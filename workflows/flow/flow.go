// Package flow holds what Handoff's workflows share: activity options with
// explicit timeouts and retries, request ids made deterministic inside the
// workflow, and sending a reminder.
package flow

import (
	"crypto/sha256"
	"encoding/hex"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/handoff-health/handoff/workflows/activities"
)

// A is the nil receiver through which workflows name activities.
var A *activities.Activities

// TaskQueue is the task queue of Handoff's worker.
const TaskQueue = "handoff"

// WithActivityOptions gives every activity a 30 s attempt, retries with
// backoff for up to 10 minutes, and stops at once on the errors activities
// mark non-retryable (invalid argument, not found, failed precondition).
func WithActivityOptions(ctx workflow.Context) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: 30 * time.Second,
		// Workflows run for weeks: a service outage of an hour must delay
		// them, not end them. Every mutating call is idempotent.
		ScheduleToCloseTimeout: 24 * time.Hour,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval:    time.Second,
			BackoffCoefficient: 2,
			MaximumInterval:    time.Minute,
		},
	})
}

// RequestID derives the request id of one mutating call from the workflow id
// and a purpose unique within the workflow. A retried activity, or a replay,
// sends the same id, so the service changes nothing twice (AIP-155).
func RequestID(ctx workflow.Context, purpose string) string {
	sum := sha256.Sum256([]byte(workflow.GetInfo(ctx).WorkflowExecution.ID + "|" + purpose))
	return hex.EncodeToString(sum[:20])
}

// Remind creates a reminder due now for to.
func Remind(ctx workflow.Context, clinic string, to activities.Person, kind, related, message, purpose string) error {
	return RemindAt(ctx, clinic, to, kind, related, message, purpose, workflow.Now(ctx))
}

// RemindAt creates a reminder due at due for to. A recipient who may no
// longer be contacted (consent withdrawn, member removed) is skipped, not a
// reason to end a workflow that runs for weeks on a snapshot of the family.
func RemindAt(ctx workflow.Context, clinic string, to activities.Person, kind, related, message, purpose string, due time.Time) error {
	err := workflow.ExecuteActivity(ctx, A.SendReminder, activities.ReminderRequest{
		Clinic: clinic, To: to, Kind: kind, Related: related, Message: message, Due: due,
		RequestID: RequestID(ctx, "remind|"+purpose), Origin: workflow.GetInfo(ctx).WorkflowExecution.ID,
	}).Get(ctx, nil)
	switch activities.ErrorType(err) {
	case "CONTACT_NOT_ALLOWED", "InvalidArgument":
		workflow.GetLogger(ctx).Warn("reminder skipped", "kind", kind, "recipient_kind", to.Kind, "recipient", to.ID, "error", err)
		return nil
	}
	return err
}

// SignalReminderFailed tells the workflow that created a reminder that its
// delivery failed (from the interventions service's outbox).
const SignalReminderFailed = "reminder-failed"

// ReminderFailed is SignalReminderFailed's payload.
type ReminderFailed struct {
	Reminder string
}

// RetryFailedReminders runs, for the workflow's lifetime, the policy for
// reminders whose delivery failed: each is sent again after
// ReminderRetryDelay, up to ReminderRetries times counted from the first
// reminder of its line. It returns the signal channel, so that a workflow
// about to continue as new can check that nothing is left unread.
func RetryFailedReminders(ctx workflow.Context, s activities.Settings) workflow.ReceiveChannel {
	ch := workflow.GetSignalChannel(ctx, SignalReminderFailed)
	attempts := map[string]int{} // reminder name -> resends before it
	workflow.Go(ctx, func(ctx workflow.Context) {
		for {
			var f ReminderFailed
			if !ch.Receive(ctx, &f) {
				return
			}
			n := attempts[f.Reminder]
			if n >= s.ReminderRetries {
				continue
			}
			// Each failure waits on its own, so several do not queue.
			workflow.Go(ctx, func(ctx workflow.Context) {
				if err := workflow.Sleep(ctx, s.ReminderRetryDelay); err != nil {
					return
				}
				var next string
				if err := workflow.ExecuteActivity(ctx, A.ResendReminder, activities.ResendRequest{
					Failed: f.Reminder, Due: workflow.Now(ctx), RequestID: RequestID(ctx, "resend|"+f.Reminder),
				}).Get(ctx, &next); err != nil {
					workflow.GetLogger(ctx).Warn("resending a failed reminder failed", "reminder", f.Reminder, "error", err)
					return
				}
				attempts[next] = n + 1
			})
		}
	})
	return ch
}

// Settings loads the clinic's settings through an activity, so that replays
// see the settings the workflow ran with.
func Settings(ctx workflow.Context, clinic string) (activities.Settings, error) {
	var s activities.Settings
	err := workflow.ExecuteActivity(ctx, A.LoadSettings, clinic).Get(ctx, &s)
	return s, err
}
