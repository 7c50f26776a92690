// Package flowtest holds what the workflows' test-suite tests share.
package flowtest

import (
	"context"
	"testing"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/handoff-health/handoff/services/interventions"
	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/flow"
)

// Resends answers every Resend in env with one reminder, due as asked, and
// keeps, in order, the failed reminders it was asked to send again.
func Resends(env *testsuite.TestWorkflowEnvironment) *[]string {
	var resent []string
	env.OnActivity(flow.A.Resend, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.ResendRequest) (activities.Resent, error) {
			resent = append(resent, in.Failed)
			return activities.Resent{Reminder: "clinics/north/reminders/again", FailsBy: in.Due}, nil
		})
	return &resent
}

// Env is a test environment with workflow fn registered under name and
// Handoff's activities registered, for tests to mock.
func Env(fn any, name string) *testsuite.TestWorkflowEnvironment {
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestWorkflowEnvironment()
	env.RegisterWorkflowWithOptions(fn, workflow.RegisterOptions{Name: name})
	env.RegisterActivity(&activities.Activities{})
	return env
}

// Sendable fails t if the interventions service would refuse message as
// revealing a health detail: the workflow would skip such a reminder with
// a warning in its log, and nobody would be told.
func Sendable(t testing.TB, message string) {
	t.Helper()
	if w := interventions.RevealingWord(message); w != "" {
		t.Errorf("reminder message %q would be refused by the service (it reveals %q)", message, w)
	}
}
