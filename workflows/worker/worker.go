// Package worker registers Handoff's workflows and activities on a Temporal
// worker.
package worker

import (
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/boundary"
	"github.com/handoff-health/handoff/workflows/intervention"
	"github.com/handoff-health/handoff/workflows/matintake"
)

// Register registers every workflow under its stable name, and acts'
// activities.
func Register(r worker.Registry, acts *activities.Activities) {
	r.RegisterWorkflowWithOptions(intervention.Workflow, workflow.RegisterOptions{Name: intervention.Name})
	r.RegisterWorkflowWithOptions(matintake.Workflow, workflow.RegisterOptions{Name: matintake.Name})
	r.RegisterWorkflowWithOptions(boundary.Workflow, workflow.RegisterOptions{Name: boundary.Name})
	r.RegisterActivityWithOptions(acts, activity.RegisterOptions{})
}

// Options are the worker options Handoff's worker runs with. Pollers scale
// with the server's backlog: with the SDK's fixed two workflow-task pollers
// a burst of starts (a clinic scheduling a week of meetings, a relay
// catching up after an outage) waited seconds in the task queue for its
// first workflow task while the worker sat idle.
func Options() worker.Options {
	return worker.Options{
		WorkflowTaskPollerBehavior: worker.NewPollerBehaviorAutoscaling(worker.PollerBehaviorAutoscalingOptions{}),
		ActivityTaskPollerBehavior: worker.NewPollerBehaviorAutoscaling(worker.PollerBehaviorAutoscalingOptions{}),
	}
}
