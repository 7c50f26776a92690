package flow_test

import (
	"context"
	"errors"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	"go.temporal.io/server/temporaltest"

	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/flow"
)

// carryFlow does what a workflow about to end or continue as new does: on
// the signal "next" it settles the failures delivered so far, finds none
// left unread, and hands over the resends waiting, as a continued run
// would get them.
func carryFlow(ctx workflow.Context) ([]string, error) {
	ctx = flow.BeginEpoch(ctx)
	var r flow.Resends
	failed := flow.RetryFailedReminders(ctx, activities.Settings{ReminderRetries: 3, ReminderRetryDelay: time.Hour}, &r, nil)
	workflow.GetSignalChannel(ctx, "next").Receive(ctx, nil)
	flow.Settle(ctx, failed)
	if failed.Len() > 0 {
		return nil, errors.New("a failure is still unread after Settle")
	}
	var names []string
	for _, p := range r.Pending {
		names = append(names, p.Reminder)
	}
	return names, nil
}

// A failure delivered in the same workflow task as the signal on which the
// workflow continues as new is in the state it hands over. The worker is
// stopped while both signals are sent, so that one task carries both, as
// happens when a failure and another event come close together.
func TestFailureDeliveredWithTheLastSignalIsCarried(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ts := temporaltest.NewServer(temporaltest.WithT(t))
	c := ts.GetDefaultClient()
	start := func() worker.Worker {
		w := worker.New(c, "carry", worker.Options{})
		w.RegisterWorkflow(carryFlow)
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		return w
	}
	w := start()
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{TaskQueue: "carry"}, carryFlow)
	if err != nil {
		t.Fatal(err)
	}
	for done := false; !done; {
		it := c.GetWorkflowHistory(ctx, run.GetID(), run.GetRunID(), false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		for it.HasNext() {
			e, err := it.Next()
			if err != nil {
				t.Fatal(err)
			}
			done = done || e.GetEventType() == enumspb.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
		}
		if !done {
			time.Sleep(20 * time.Millisecond)
		}
	}
	w.Stop()
	if err := c.SignalWorkflow(ctx, run.GetID(), run.GetRunID(), flow.SignalReminderFailed, flow.ReminderFailed{Reminder: "clinics/north/reminders/r1"}); err != nil {
		t.Fatal(err)
	}
	if err := c.SignalWorkflow(ctx, run.GetID(), run.GetRunID(), "next", nil); err != nil {
		t.Fatal(err)
	}
	defer start().Stop()
	var got []string
	if err := run.Get(ctx, &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != "clinics/north/reminders/r1" {
		t.Fatalf("handed over %q; want the failure signalled with the last signal", got)
	}
}
