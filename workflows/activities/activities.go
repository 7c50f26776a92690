// Package activities is how Handoff's workflows act on the world: thin calls
// to the families, interventions and referrals services over gRPC, with the
// worker's service identity. They hold no business rules; the services do.
// Inputs and outputs are identifiers and schedules, never health records,
// because Temporal keeps them in its own database.
package activities

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
)

// Activities holds the service clients. Workflows refer to its methods
// through a nil *Activities; the worker registers a real one.
type Activities struct {
	Families      familiesv1.FamiliesServiceClient
	Interventions interventionsv1.InterventionsServiceClient
	Referrals     referralsv1.ReferralsServiceClient
	// Settings returns a clinic's workflow settings.
	Settings func(clinic string) Settings
}

// Settings are the durations and limits a clinic may tune. Tests shrink
// them to seconds.
type Settings struct {
	// HoldLead is how long before the meeting a treatment slot is held.
	HoldLead time.Duration
	// HoldRetry is how long to wait before trying again when no program has
	// a free slot.
	HoldRetry time.Duration
	// HoldSlack keeps the hold past the end of the meeting.
	HoldSlack time.Duration
	// ReminderOffsets are the reminders before a meeting.
	ReminderOffsets []time.Duration
	// OutcomeGrace is how long after the end of the meeting the counselor is
	// reminded to record the outcome; OutcomeEscalation how long after that
	// the clinic's supervisors are told.
	OutcomeGrace, OutcomeEscalation time.Duration
	// MaxPrograms is how many programs MAT intake tries before escalating.
	MaxPrograms int
	// IntakeTarget is when intake should have happened; IntakeAlert when the
	// counselor is alerted that it has not.
	IntakeTarget, IntakeAlert time.Duration
	// IntakeReminderOffsets are the reminders before an intake appointment.
	IntakeReminderOffsets []time.Duration
	// MaxNoShows is how many missed intakes are rebooked before escalation.
	MaxNoShows int
	// CheckIns are the family check-ins after a refusal, from the outcome.
	CheckIns []time.Duration
	// TightenedCheckIn is the longest gap between check-ins after an overdose.
	TightenedCheckIn time.Duration
	// OverdoseGrace is how long an overdose recorded while no boundary
	// workflow runs waits before the counselor is alerted: a refusal
	// recorded at about the same time starts one, which answers it fully.
	OverdoseGrace time.Duration
	// CoolDown is how long after a refusal the next intervention is proposed.
	CoolDown time.Duration
	// ReminderRetries is how many times a reminder whose delivery failed is
	// sent again, ReminderRetryDelay how long after each failure.
	ReminderRetries    int
	ReminderRetryDelay time.Duration
}

// DefaultSettings are the defaults from the clinical background
// (DOMAIN.md): holds 72 h ahead, reminders 72/24/2 h before, intake within
// 24 h with an alert at 72 h, check-ins at days 1, 7 and 30, a 14-day
// cool-down before the next ARISE level.
func DefaultSettings() Settings {
	return Settings{
		HoldLead: 72 * time.Hour, HoldRetry: 6 * time.Hour, HoldSlack: 48 * time.Hour,
		ReminderOffsets: []time.Duration{72 * time.Hour, 24 * time.Hour, 2 * time.Hour},
		OutcomeGrace:    2 * time.Hour, OutcomeEscalation: 24 * time.Hour,
		MaxPrograms: 3, IntakeTarget: 24 * time.Hour, IntakeAlert: 72 * time.Hour,
		IntakeReminderOffsets: []time.Duration{24 * time.Hour, 2 * time.Hour},
		MaxNoShows:            2,
		CheckIns:              []time.Duration{24 * time.Hour, 7 * 24 * time.Hour, 30 * 24 * time.Hour},
		TightenedCheckIn:      3 * 24 * time.Hour, CoolDown: 14 * 24 * time.Hour, OverdoseGrace: time.Minute,
		ReminderRetries: 3, ReminderRetryDelay: 15 * time.Minute,
	}
}

// LoadSettings returns the clinic's settings. It is an activity so that the
// workflow records them in its history and replays deterministically.
func (a *Activities) LoadSettings(_ context.Context, clinic string) (Settings, error) {
	if a.Settings == nil {
		return DefaultSettings(), nil
	}
	return a.Settings(clinic), nil
}

// nonRetryable are the codes a retry cannot fix: the request itself is
// wrong, the resource is gone, or the system is in a state that refuses it.
// A refused token (UNAUTHENTICATED, PERMISSION_DENIED) is not among them:
// for the worker's own identity it is operational (a token file rewritten
// late, a signing key just rotated, a service a release behind during a
// rollout) and passes, while giving up would end a workflow for good, the
// clean-up after a withdrawn consent among them.
var nonRetryable = map[codes.Code]bool{
	codes.InvalidArgument: true, codes.NotFound: true, codes.FailedPrecondition: true, codes.AlreadyExists: true,
}

// wrap turns a gRPC error into an activity error: non-retryable for codes a
// retry cannot fix, with the ErrorInfo reason (or the code) as its type so
// workflows can tell NO_CAPACITY from NOT_FOUND.
func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok || !nonRetryable[st.Code()] {
		return fmt.Errorf("%s: %w", op, err)
	}
	kind := st.Code().String()
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() != "" {
			kind = info.GetReason()
		}
	}
	return temporal.NewNonRetryableApplicationError(fmt.Sprintf("%s: %s", op, st.Message()), kind, nil)
}

// madeBefore is the resource an earlier try of a create made under the
// same request id, when the service refused the id for a different request
// (the try read other data) and named what it made, as it does for the
// caller who sent it; "" otherwise.
func madeBefore(err error) string {
	st, ok := status.FromError(err)
	if !ok || err == nil {
		return ""
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() == "REQUEST_ID_REUSED" {
			return info.GetMetadata()["resource"]
		}
	}
	return ""
}

// ErrorType returns the type of an application error returned by an
// activity (an ErrorInfo reason such as NO_CAPACITY, or a gRPC code name),
// or "" for other errors.
func ErrorType(err error) string {
	var app *temporal.ApplicationError
	if errors.As(err, &app) {
		return app.Type()
	}
	return ""
}
