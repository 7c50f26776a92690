package familydeleted_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/familydeleted"
	"github.com/handoff-health/handoff/workflows/flow"
	"github.com/handoff-health/handoff/workflows/ids"
)

const family = "clinics/north/families/f1"

// warnings keeps the workflow's warnings.
type warnings struct{ seen []string }

func (*warnings) Debug(string, ...any)             {}
func (*warnings) Info(string, ...any)              {}
func (*warnings) Error(string, ...any)             {}
func (w *warnings) Warn(msg string, _ ...any)      { w.seen = append(w.seen, msg) }
func (w *warnings) warned(msg string) (found bool) { return slices.Contains(w.seen, msg) }

// stops answers the workflow's cancel of the boundary workflow with
// cancelErr and its call of closeAll with closed, and keeps what each was
// asked: the ids whose cancel was asked, and the requests.
func stops(env *testsuite.TestWorkflowEnvironment, cancelErr error, closeAll any, closed activities.Closed) (*[]string, *[]activities.CloseFamilyRequest) {
	asked, requests := &[]string{}, &[]activities.CloseFamilyRequest{}
	env.OnRequestCancelExternalWorkflow(mock.Anything, mock.Anything, mock.Anything).Return(
		func(_ string, id, _ string) error {
			*asked = append(*asked, id)
			return cancelErr
		})
	env.OnActivity(closeAll, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.CloseFamilyRequest) (activities.Closed, error) {
			*requests = append(*requests, in)
			return closed, nil
		})
	return asked, requests
}

// The family's boundary workflow is asked to stop, then its open
// interventions and pending reminders are cancelled; without a boundary
// workflow (the usual case, said nothing of) or with one that cannot be
// cancelled (logged) the rest still happens.
func TestDeletedFamilyIsClosed(t *testing.T) {
	for _, c := range []struct {
		name      string
		cancelErr error
		cancelled bool
		warned    bool
	}{
		{"a boundary workflow runs", nil, true, false},
		{"none runs", &temporal.UnknownExternalWorkflowExecutionError{}, false, false},
		{"it cannot be cancelled", errors.New("the server refused"), false, true},
	} {
		var suite testsuite.WorkflowTestSuite
		log := &warnings{}
		suite.SetLogger(log)
		env := suite.NewTestWorkflowEnvironment()
		env.RegisterWorkflowWithOptions(familydeleted.Workflow, workflow.RegisterOptions{Name: familydeleted.Name})
		env.RegisterActivity(&activities.Activities{})
		asked, closed := stops(env, c.cancelErr, flow.A.CloseFamily, activities.Closed{Interventions: 2, Reminders: 3})
		env.ExecuteWorkflow(familydeleted.Name, familydeleted.Input{Family: family})
		var res familydeleted.Result
		if err := env.GetWorkflowResult(&res); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if len(*asked) != 1 || (*asked)[0] != ids.Boundary(family) || res.BoundaryCancelled != c.cancelled {
			t.Errorf("%s: cancel asked of %v, result %+v", c.name, *asked, res)
		}
		if len(*closed) != 1 || (*closed)[0].Family != family || (*closed)[0].RequestID == "" || res.Interventions != 2 || res.Reminders != 3 {
			t.Errorf("%s: closed %+v, result %+v", c.name, *closed, res)
		}
		if got := log.warned("boundary workflow not cancelled"); got != c.warned {
			t.Errorf("%s: warned %v (%q); want %v", c.name, got, log.seen, c.warned)
		}
	}
}

// A closed family's workflow stops the same things, under the closing's
// reason, once it has seen the family still closed; one reopened before the
// worker got to it keeps everything. Today's runs close the meetings first,
// on CloseClosedFamily's own read, and cancel the boundary workflow only
// then: a family reopened before that read keeps its boundary follow-up
// too. Runs begun at epoch-2026-12-06 read the family first, then cancel
// the boundary workflow, then close the rest, as they did.
func TestClosedFamilyIsClosedUnlessReopened(t *testing.T) {
	for _, c := range []struct {
		name               string
		before             bool // begun at epoch-2026-12-06
		stillClosed        bool // what StillClosed reads
		reopenedAtClose    bool // what CloseClosedFamily reads
		cancelled, stopped bool
	}{
		{"today, still closed", false, true, false, true, true},
		{"today, reopened before the close", false, true, true, false, false},
		{"begun before, still closed", true, true, false, true, true},
		{"begun before, reopened before the first read", true, false, false, false, false},
	} {
		var suite testsuite.WorkflowTestSuite
		env := suite.NewTestWorkflowEnvironment()
		env.RegisterWorkflowWithOptions(familydeleted.Closed, workflow.RegisterOptions{Name: familydeleted.ClosedName})
		env.RegisterActivity(&activities.Activities{})
		if c.before {
			env.OnGetVersion("epoch-2026-12-07c", workflow.DefaultVersion, 1).Return(workflow.DefaultVersion)
			env.OnGetVersion("epoch-2026-12-07b", workflow.DefaultVersion, 1).Return(workflow.DefaultVersion)
			env.OnGetVersion("epoch-2026-12-07", workflow.DefaultVersion, 1).Return(workflow.DefaultVersion)
			env.OnGetVersion("epoch-2026-12-06c", workflow.DefaultVersion, 1).Return(workflow.DefaultVersion)
			env.OnGetVersion("epoch-2026-12-06b", workflow.DefaultVersion, 1).Return(workflow.DefaultVersion)
			env.OnGetVersion("close-before-boundary", workflow.DefaultVersion, 1).Return(workflow.DefaultVersion)
		}
		reads := 0
		env.OnActivity(flow.A.StillClosed, mock.Anything, family).Return(func(context.Context, string) (bool, error) {
			reads++
			return c.stillClosed, nil
		})
		asked, closed := stops(env, nil, flow.A.CloseClosedFamily, activities.Closed{Interventions: 1, Holds: 1, Reopened: c.reopenedAtClose})
		env.ExecuteWorkflow(familydeleted.ClosedName, familydeleted.Input{Family: family})
		var res familydeleted.Result
		if err := env.GetWorkflowResult(&res); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if c.before != (reads == 1) {
			t.Errorf("%s: StillClosed read %d times", c.name, reads)
		}
		if got := len(*asked) == 1 && (*asked)[0] == ids.Boundary(family) && res.BoundaryCancelled; got != c.cancelled || len(*asked) > 1 {
			t.Errorf("%s: cancel asked of %v, result %+v; want the boundary workflow cancelled %v", c.name, *asked, res, c.cancelled)
		}
		if !c.stopped {
			if !res.Reopened {
				t.Errorf("%s: result %+v; want it reopened", c.name, res)
			}
			continue
		}
		if len(*closed) != 1 || (*closed)[0].Family != family || (*closed)[0].RequestID == "" ||
			res.Interventions != 1 || res.Holds != 1 || res.Reopened {
			t.Errorf("%s: closed %+v, result %+v", c.name, *closed, res)
		}
	}
}

// A refusal no retry can fix ends a closing workflow for good: at the top
// of its failure, where Temporal's retry of a one-shot workflow looks,
// rather than wrapped in the activity's failure, which the dispatcher's
// policy would run again for a week. The family's boundary workflow is
// stopped all the same.
func TestAFinalRefusalEndsTheRun(t *testing.T) {
	for name, wf := range map[string]func(workflow.Context, familydeleted.Input) (familydeleted.Result, error){
		familydeleted.Name: familydeleted.Workflow, familydeleted.ClosedName: familydeleted.Closed,
	} {
		var suite testsuite.WorkflowTestSuite
		env := suite.NewTestWorkflowEnvironment()
		env.RegisterWorkflowWithOptions(wf, workflow.RegisterOptions{Name: name})
		env.RegisterActivity(&activities.Activities{})
		var asked []string
		env.OnRequestCancelExternalWorkflow(mock.Anything, mock.Anything, mock.Anything).Return(func(_ string, id, _ string) error {
			asked = append(asked, id)
			return nil
		})
		refused := temporal.NewNonRetryableApplicationError("close family: refused", "INVALID_ARGUMENT", nil)
		env.OnActivity(flow.A.CloseFamily, mock.Anything, mock.Anything).Return(activities.Closed{}, refused)
		env.OnActivity(flow.A.CloseClosedFamily, mock.Anything, mock.Anything).Return(activities.Closed{}, refused)
		env.ExecuteWorkflow(name, familydeleted.Input{Family: family})
		var run *temporal.WorkflowExecutionError
		err := env.GetWorkflowError()
		if !errors.As(err, &run) {
			t.Fatalf("%s: %v; want the run failed", name, err)
		}
		top, ok := errors.Unwrap(run).(*temporal.ApplicationError)
		if !ok || !top.NonRetryable() || top.Type() != "INVALID_ARGUMENT" {
			t.Errorf("%s: the run's failure %#v; want a non-retryable INVALID_ARGUMENT at its top", name, errors.Unwrap(run))
		}
		// The run ends for good: the boundary workflow is stopped all the
		// same, or nothing would stop it before its next step.
		if len(asked) != 1 || asked[0] != ids.Boundary(family) {
			t.Errorf("%s: cancel asked of %v; want the boundary workflow", name, asked)
		}
	}
}
