package boundary_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	"go.temporal.io/server/temporaltest"

	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/boundary"
	"github.com/handoff-health/handoff/workflows/flow"
)

// A cancel that comes in the task that brings a run's last event ends the
// workflow, tidied. The worker is stopped while a check-in and the cancel
// come, so that one task brings both, on a real server: the wait takes
// the check-in, and the run, full, continued as new without the cancel,
// following up with a family whose loved one had entered treatment.
func TestCancelInTheTaskOfARunsLastEventIsNotLost(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ts := temporaltest.NewServer(temporaltest.WithT(t))
	c := ts.GetDefaultClient()
	var mu sync.Mutex
	var tidied []activities.CancelRemindersRequest
	register := func(r worker.Registry) {
		r.RegisterWorkflowWithOptions(boundary.Workflow, workflow.RegisterOptions{Name: boundary.Name})
		r.RegisterActivityWithOptions(func(context.Context, string) (activities.Settings, error) {
			return activities.DefaultSettings(), nil
		}, activity.RegisterOptions{Name: "LoadSettings"})
		r.RegisterActivityWithOptions(func(context.Context, string) (activities.Safety, error) {
			return activities.Safety{Status: "CURRENT", Boundaries: []string{family + "/boundaries/b1"}, ContactPerson: "mom",
				Members: []activities.Person{{Kind: "member", ID: "mom", Family: family, Channel: "SMS"}}}, nil
		}, activity.RegisterOptions{Name: "FamilySafety"})
		r.RegisterActivityWithOptions(func(_ context.Context, in activities.CancelRemindersRequest) (int, error) {
			mu.Lock()
			defer mu.Unlock()
			tidied = append(tidied, in)
			return 0, nil
		}, activity.RegisterOptions{Name: "CancelReminders"})
	}
	first := ts.NewWorker(flow.TaskQueue, register)
	// A run carried on from another, one event short of full, waiting for
	// its next check-in.
	now := time.Now().UTC()
	in := input(1)
	in.State = &boundary.State{Began: now, Screened: true, Reinforced: true, Referred: true, Escalated: true,
		CheckIns: []time.Time{now.Add(7 * 24 * time.Hour)}, Events: 499}
	const id = "boundary-north-f1"
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: flow.TaskQueue}, boundary.Name, in)
	if err != nil {
		t.Fatal(err)
	}
	for waiting := false; !waiting; {
		if ctx.Err() != nil {
			t.Fatal("the run never waited for its check-in")
		}
		it := c.GetWorkflowHistory(ctx, id, run.GetRunID(), false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		for it.HasNext() {
			e, err := it.Next()
			if err != nil {
				t.Fatal(err)
			}
			waiting = waiting || e.GetEventType() == enumspb.EVENT_TYPE_TIMER_STARTED
		}
		time.Sleep(50 * time.Millisecond)
	}
	first.Stop()
	if err := c.SignalWorkflow(ctx, id, run.GetRunID(), boundary.SignalCheckIn, boundary.CheckIn{Intervention: iv, Number: 1}); err != nil {
		t.Fatal(err)
	}
	if err := c.CancelWorkflow(ctx, id, run.GetRunID()); err != nil {
		t.Fatal(err)
	}
	ts.NewWorker(flow.TaskQueue, register)
	err = run.GetWithOptions(ctx, nil, client.WorkflowRunGetOptions{DisableFollowingRuns: true})
	var cancelled *temporal.CanceledError
	if !errors.As(err, &cancelled) {
		t.Fatalf("cancelled with the run's last event: %v; want the run cancelled", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(tidied) == 0 {
		t.Error("no reminders cancelled; want the run's own tidied away")
	}
}
