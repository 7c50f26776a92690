// Package worker registers Handoff's workflows and activities on a Temporal
// worker.
package worker

import (
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/boundary"
	"github.com/handoff-health/handoff/workflows/cancelledholds"
	"github.com/handoff-health/handoff/workflows/contactwithdrawn"
	"github.com/handoff-health/handoff/workflows/familydeleted"
	"github.com/handoff-health/handoff/workflows/intervention"
	"github.com/handoff-health/handoff/workflows/matintake"
	"github.com/handoff-health/handoff/workflows/overdose"
	"github.com/handoff-health/handoff/workflows/treatmententered"
)

// Register registers every workflow under its stable name, and acts'
// activities.
func Register(r worker.Registry, acts *activities.Activities) {
	r.RegisterWorkflowWithOptions(intervention.Workflow, workflow.RegisterOptions{Name: intervention.Name})
	r.RegisterWorkflowWithOptions(matintake.Workflow, workflow.RegisterOptions{Name: matintake.Name})
	r.RegisterWorkflowWithOptions(boundary.Workflow, workflow.RegisterOptions{Name: boundary.Name})
	r.RegisterWorkflowWithOptions(overdose.Workflow, workflow.RegisterOptions{Name: overdose.Name})
	r.RegisterWorkflowWithOptions(familydeleted.Workflow, workflow.RegisterOptions{Name: familydeleted.Name})
	r.RegisterWorkflowWithOptions(familydeleted.Closed, workflow.RegisterOptions{Name: familydeleted.ClosedName})
	r.RegisterWorkflowWithOptions(contactwithdrawn.Workflow, workflow.RegisterOptions{Name: contactwithdrawn.Name})
	r.RegisterWorkflowWithOptions(cancelledholds.Workflow, workflow.RegisterOptions{Name: cancelledholds.Name})
	r.RegisterWorkflowWithOptions(treatmententered.Workflow, workflow.RegisterOptions{Name: treatmententered.Name})
	r.RegisterActivityWithOptions(acts, activity.RegisterOptions{})
}

// Options are the worker options Handoff's worker runs with; the
// benchmark's no-op ceiling and timer probes use them too. They keep the
// SDK's fixed pollers on purpose. Autoscaling pollers were measured
// (workflow benchmark, embedded server, 2 cores): a burst of 100 starts
// reached its first workflow task sooner (p90 0.8-1.5 s against 2.6-7.6 s),
// but 1,000 reminder timers due over a minute ran three times later at the
// median (175-203 ms against 60 ms; p99 370-565 ms against 220-340 ms),
// whatever the pollers' minimum and maximum. Reminders come spread out;
// bursts of starts are rare and not urgent (a meeting days away).
func Options() worker.Options {
	return worker.Options{}
}
