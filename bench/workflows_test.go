package main

import (
	"context"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	"go.temporal.io/server/temporaltest"
)

func childFlow(ctx workflow.Context) error { return workflow.Sleep(ctx, time.Millisecond) }

func parentFlow(ctx workflow.Context) error {
	ctx = workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{WorkflowID: "child-of-parent"})
	return workflow.ExecuteChildWorkflow(ctx, childFlow).Get(ctx, nil)
}

// The report's events per flow must hold the child's events exactly once.
func TestHistoryEventsCountsAChildOnce(t *testing.T) {
	ts := temporaltest.NewServer(temporaltest.WithT(t))
	ts.NewWorker("count", func(r worker.Registry) {
		r.RegisterWorkflow(parentFlow)
		r.RegisterWorkflow(childFlow)
	})
	c := ts.GetDefaultClient()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "parent", TaskQueue: "count"}, parentFlow)
	if err != nil {
		t.Fatal(err)
	}
	if err := run.Get(ctx, nil); err != nil {
		t.Fatal(err)
	}
	own := func(id string) int {
		n := 0
		it := c.GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		for it.HasNext() {
			if _, err := it.Next(); err != nil {
				t.Fatal(err)
			}
			n++
		}
		return n
	}
	parent, child := own("parent"), own("child-of-parent")
	got, err := historyEvents(ctx, c, "parent")
	if err != nil {
		t.Fatal(err)
	}
	if got != parent+child {
		t.Fatalf("historyEvents = %d, want the parent's %d plus the child's %d", got, parent, child)
	}
}

func TestFastestRoundIsTheCeiling(t *testing.T) {
	rounds := []ceilingRound{{seconds: 3.1, id: "a"}, {seconds: 2.6, id: "b"}, {seconds: 6.7, id: "c"}}
	if got := fastest(rounds); got.id != "b" {
		t.Fatalf("fastest = %q (%.1f s), want b (2.6 s)", got.id, got.seconds)
	}
}

// A round runs every no-op to completion and names one of them.
func TestNoopRoundRunsEveryWorkflow(t *testing.T) {
	ts := temporaltest.NewServer(temporaltest.WithT(t))
	ts.NewWorker("noop-round", func(r worker.Registry) {
		r.RegisterWorkflowWithOptions(noopWorkflow, workflow.RegisterOptions{Name: "Noop"})
		r.RegisterActivityWithOptions(noopActivity, activity.RegisterOptions{Name: "NoopActivity"})
	})
	c := ts.GetDefaultClient()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := noopRound(ctx, c, "noop-round", 5)
	if err != nil {
		t.Fatal(err)
	}
	if r.seconds <= 0 || r.id == "" {
		t.Fatalf("round = %+v, want a duration and a workflow id", r)
	}
	// Visibility trails the histories a little: ask until it agrees.
	completed := 0
	for deadline := time.Now().Add(10 * time.Second); completed != 5 && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		it, err := c.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{Query: "WorkflowType = 'Noop'"})
		if err != nil {
			t.Fatal(err)
		}
		completed = 0
		for _, e := range it.GetExecutions() {
			if e.GetStatus() == enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED {
				completed++
			}
		}
	}
	if completed != 5 {
		t.Fatalf("%d no-ops completed, want 5", completed)
	}
}

// Only timed-out tasks and completions turned down for UnhandledCommand
// count as trouble; other task failures do not.
func TestTaskTroubleCounts(t *testing.T) {
	failed := func(cause enumspb.WorkflowTaskFailedCause) *historypb.HistoryEvent {
		return &historypb.HistoryEvent{EventType: enumspb.EVENT_TYPE_WORKFLOW_TASK_FAILED,
			Attributes: &historypb.HistoryEvent_WorkflowTaskFailedEventAttributes{
				WorkflowTaskFailedEventAttributes: &historypb.WorkflowTaskFailedEventAttributes{Cause: cause}}}
	}
	events := []*historypb.HistoryEvent{
		{EventType: enumspb.EVENT_TYPE_WORKFLOW_TASK_STARTED},
		{EventType: enumspb.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT},
		failed(enumspb.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND),
		failed(enumspb.WORKFLOW_TASK_FAILED_CAUSE_NON_DETERMINISTIC_ERROR),
		failed(enumspb.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND),
		{EventType: enumspb.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT},
	}
	var tt taskTrouble
	for _, e := range events {
		tt.visit(e)
	}
	if tt != (taskTrouble{TimedOut: 1, TurnedDown: 2}) {
		t.Fatalf("trouble = %+v, want 1 timed out and 2 turned down", tt)
	}
}

// A probe whose first task runs after its due time (a burst on a busy
// machine) is counted late, not failed: the SDK takes its negative sleep
// as none (its environment's NewTimer would refuse one; Sleep never
// passes it on).
func TestTimerProbeStartedAfterItsDueTimeIsLate(t *testing.T) {
	ts := temporaltest.NewServer(temporaltest.WithT(t))
	ts.NewWorker("late-probe", func(r worker.Registry) {
		r.RegisterWorkflowWithOptions(timerProbe, workflow.RegisterOptions{Name: "TimerProbe"})
		r.RegisterActivityWithOptions(probeActivity, activity.RegisterOptions{Name: "ProbeActivity"})
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run, err := ts.GetDefaultClient().ExecuteWorkflow(ctx, client.StartWorkflowOptions{TaskQueue: "late-probe"}, "TimerProbe", time.Now().Add(-time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	var late time.Duration
	if err := run.Get(ctx, &late); err != nil || late < time.Minute {
		t.Fatalf("lateness %v, %v; want at least the minute it started after its due time", late, err)
	}
}
