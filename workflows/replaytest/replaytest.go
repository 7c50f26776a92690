// Package replaytest replays recorded workflow histories against the current
// workflow code, so each workflow package keeps its own histories but shares
// one way of checking them.
package replaytest

import (
	"path/filepath"
	"testing"

	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/handoff-health/handoff/workflows/boundary"
	"github.com/handoff-health/handoff/workflows/cancelledholds"
	"github.com/handoff-health/handoff/workflows/contactwithdrawn"
	"github.com/handoff-health/handoff/workflows/familydeleted"
	"github.com/handoff-health/handoff/workflows/intervention"
	"github.com/handoff-health/handoff/workflows/matintake"
	"github.com/handoff-health/handoff/workflows/overdose"
	"github.com/handoff-health/handoff/workflows/treatmententered"
)

// Run replays every testdata/*.json history in the calling package's folder.
// Histories come from real runs (the stack integration tests, with
// HANDOFF_RECORD_HISTORIES=1); all workflows are registered because a
// recorded parent history names its children. A change that would break
// running workflows fails here and must go behind workflow.GetVersion.
// Before re-recording after such a change, keep the old files under a new
// name (for example *-before-<change>.json), so both branches replay.
func Run(t *testing.T) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no recorded histories in testdata (%v)", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			r := worker.NewWorkflowReplayer()
			r.RegisterWorkflowWithOptions(intervention.Workflow, workflow.RegisterOptions{Name: intervention.Name})
			r.RegisterWorkflowWithOptions(matintake.Workflow, workflow.RegisterOptions{Name: matintake.Name})
			r.RegisterWorkflowWithOptions(boundary.Workflow, workflow.RegisterOptions{Name: boundary.Name})
			r.RegisterWorkflowWithOptions(overdose.Workflow, workflow.RegisterOptions{Name: overdose.Name})
			r.RegisterWorkflowWithOptions(familydeleted.Workflow, workflow.RegisterOptions{Name: familydeleted.Name})
			r.RegisterWorkflowWithOptions(familydeleted.Closed, workflow.RegisterOptions{Name: familydeleted.ClosedName})
			r.RegisterWorkflowWithOptions(contactwithdrawn.Workflow, workflow.RegisterOptions{Name: contactwithdrawn.Name})
			r.RegisterWorkflowWithOptions(cancelledholds.Workflow, workflow.RegisterOptions{Name: cancelledholds.Name})
			r.RegisterWorkflowWithOptions(treatmententered.Workflow, workflow.RegisterOptions{Name: treatmententered.Name})
			if err := r.ReplayWorkflowHistoryFromJSONFile(nil, f); err != nil {
				t.Fatalf("replay %s: %v", f, err)
			}
		})
	}
}
