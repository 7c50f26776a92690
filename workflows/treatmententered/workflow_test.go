package treatmententered_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/temporal"

	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/boundary"
	"github.com/handoff-health/handoff/workflows/flow"
	"github.com/handoff-health/handoff/workflows/flowtest"
	"github.com/handoff-health/handoff/workflows/ids"
	"github.com/handoff-health/handoff/workflows/treatmententered"
)

// The family's boundary follow-up is asked to stop, whether or not one
// runs, the reminders it made and has not sent are cancelled by its
// origin, the entry is recorded on the family and its drafts are
// withdrawn, naming the referral that told of the entry, if one did; a
// cancel the server refuses fails the run, to be run again, before
// anything else is done.
func TestEndsTheFollowUp(t *testing.T) {
	const family = "clinics/north/families/f1"
	for _, c := range []struct {
		name      string
		cancelErr error
		stopped   bool
		failed    bool
		referral  string // none: staff recorded the entry on the family
		reason    string
		undone    bool // staff set the family back to ACTIVE since
	}{
		{"a follow-up runs", nil, true, false, "clinics/north/referrals/r1",
			"The loved one entered treatment (clinics/north/referrals/r1).", false},
		{"none runs", &temporal.UnknownExternalWorkflowExecutionError{}, false, false, "clinics/north/referrals/r1",
			"The loved one entered treatment (clinics/north/referrals/r1).", false},
		{"the server refuses", errors.New("the server refused"), false, true, "clinics/north/referrals/r1", "", false},
		{"staff recorded it", nil, true, false, "", "The loved one entered treatment.", false},
		{"staff recorded it and undid it since", nil, false, false, "", "", true},
	} {
		env := flowtest.Env(treatmententered.Workflow, treatmententered.Name)
		var asked []string
		env.OnRequestCancelExternalWorkflow(mock.Anything, mock.Anything, mock.Anything).Return(
			func(_ string, id, _ string) error {
				asked = append(asked, id)
				return c.cancelErr
			})
		var cancelled []activities.CancelRemindersRequest
		env.OnActivity(flow.A.CancelReminders, mock.Anything, mock.Anything).Return(
			func(_ context.Context, in activities.CancelRemindersRequest) (int, error) {
				cancelled = append(cancelled, in)
				return 2, nil
			})
		var recorded []activities.TreatmentEntryRequest
		env.OnActivity(flow.A.RecordTreatmentEntry, mock.Anything, mock.Anything).Return(
			func(_ context.Context, in activities.TreatmentEntryRequest) error {
				recorded = append(recorded, in)
				return nil
			})
		var withdrawn []activities.WithdrawDraftsRequest
		env.OnActivity(flow.A.WithdrawDrafts, mock.Anything, mock.Anything).Return(
			func(_ context.Context, in activities.WithdrawDraftsRequest) (int, error) {
				withdrawn = append(withdrawn, in)
				return 1, nil
			})
		var read []string
		env.OnActivity(flow.A.StillEngaged, mock.Anything, mock.Anything).Return(
			func(_ context.Context, fam string) (bool, error) {
				read = append(read, fam)
				return !c.undone, nil
			})
		env.ExecuteWorkflow(treatmententered.Name, treatmententered.Input{Family: family, Referral: c.referral})
		if want := c.referral == ""; (len(read) == 1 && read[0] == family) != want || len(read) > 1 {
			t.Errorf("%s: the family's state read %v; want it read once only for an entry staff recorded", c.name, read)
		}
		if c.undone {
			var res treatmententered.Result
			if err := env.GetWorkflowResult(&res); err != nil || res != (treatmententered.Result{}) ||
				len(asked)+len(cancelled)+len(recorded)+len(withdrawn) != 0 {
				t.Errorf("%s: %+v, %v; cancels %v, reminders %v, entries %v, drafts %v; want nothing done",
					c.name, res, err, asked, cancelled, recorded, withdrawn)
			}
			continue
		}
		if len(asked) != 1 || asked[0] != ids.Boundary(family) {
			t.Errorf("%s: cancel asked of %v", c.name, asked)
		}
		if c.failed {
			if env.GetWorkflowError() == nil || len(cancelled) != 0 || len(recorded) != 0 || len(withdrawn) != 0 {
				t.Errorf("%s: error %v, reminders cancelled %+v, recorded %+v; want the run failed first", c.name, env.GetWorkflowError(), cancelled, recorded)
			}
			continue
		}
		var res treatmententered.Result
		if err := env.GetWorkflowResult(&res); err != nil || res.Stopped != c.stopped {
			t.Errorf("%s: result %+v, %v; want stopped %v", c.name, res, err, c.stopped)
		}
		if len(cancelled) != 1 || cancelled[0].Origin != ids.Boundary(family) || cancelled[0].Clinic != "north" ||
			!slices.Equal(cancelled[0].Kinds, boundary.OwnReminderKinds()) || cancelled[0].RequestID == "" || cancelled[0].Related != "" {
			t.Errorf("%s: reminders cancelled %+v; want the boundary workflow's own, by origin", c.name, cancelled)
		}
		if len(recorded) != 1 || recorded[0].Family != family || recorded[0].RequestID == "" {
			t.Errorf("%s: entry recorded %+v; want once, for the family", c.name, recorded)
		}
		if len(withdrawn) != 1 || withdrawn[0].Family != family || withdrawn[0].RequestID == "" || res.Withdrawn != 1 ||
			withdrawn[0].Reason != c.reason {
			t.Errorf("%s: drafts withdrawn %+v, result %+v; want the family's, once", c.name, withdrawn, res)
		}
	}
}
