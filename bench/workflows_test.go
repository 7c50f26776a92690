package main

import (
	"context"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
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
