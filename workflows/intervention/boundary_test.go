package intervention

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	"go.temporal.io/server/temporaltest"

	"github.com/handoff-health/handoff/workflows/boundary"
	"github.com/handoff-health/handoff/workflows/flow"
)

// fakeBoundary stands in for the boundary workflow under its registered
// name: it runs until stopped and answers with the intervention it was
// started for and those it was restarted for.
func fakeBoundary(ctx workflow.Context, in boundary.Input) (boundary.Result, error) {
	var restarts []string
	restart, stop := workflow.GetSignalChannel(ctx, boundary.SignalRestart), workflow.GetSignalChannel(ctx, "stop")
	for done := false; !done; {
		sel := workflow.NewSelector(ctx)
		sel.AddReceive(restart, func(c workflow.ReceiveChannel, _ bool) {
			var r boundary.Restart
			c.Receive(ctx, &r)
			restarts = append(restarts, r.Intervention)
		})
		sel.AddReceive(stop, func(c workflow.ReceiveChannel, _ bool) { c.Receive(ctx, nil); done = true })
		sel.Select(ctx)
	}
	return boundary.Result{Summary: fmt.Sprintf("started for %s, restarted for %v", in.Intervention, restarts)}, nil
}

// refusal hands one refused intervention to the family's boundary
// workflow, with the child options the intervention workflow uses.
func refusal(ctx workflow.Context, id, intervention string) (string, error) {
	return startOrRestartBoundary(new(wf).child(ctx, id, enumspb.PARENT_CLOSE_POLICY_ABANDON), id,
		boundary.Input{Intervention: intervention}, boundary.Restart{Intervention: intervention})
}

// endFirst ends the boundary workflow just before a restart signal to it
// is sent, when armed: the race of a boundary workflow finishing its last
// check-in while another refusal joins it, made certain.
type endFirst struct {
	interceptor.WorkerInterceptorBase
	armed atomic.Bool
	end   func(id string)
}

func (e *endFirst) InterceptWorkflow(_ workflow.Context, next interceptor.WorkflowInboundInterceptor) interceptor.WorkflowInboundInterceptor {
	return &endFirstIn{WorkflowInboundInterceptorBase: interceptor.WorkflowInboundInterceptorBase{Next: next}, e: e}
}

type endFirstIn struct {
	interceptor.WorkflowInboundInterceptorBase
	e *endFirst
}

func (i *endFirstIn) Init(out interceptor.WorkflowOutboundInterceptor) error {
	return i.Next.Init(&endFirstOut{WorkflowOutboundInterceptorBase: interceptor.WorkflowOutboundInterceptorBase{Next: out}, e: i.e})
}

type endFirstOut struct {
	interceptor.WorkflowOutboundInterceptorBase
	e *endFirst
}

func (o *endFirstOut) SignalExternalWorkflow(ctx workflow.Context, id, runID, name string, arg any) workflow.Future {
	if name == boundary.SignalRestart && o.e.armed.CompareAndSwap(true, false) {
		o.e.end(id)
	}
	return o.Next.SignalExternalWorkflow(ctx, id, runID, name, arg)
}

// A refusal while the family's boundary workflow runs restarts it; one
// that ended between the refusal's start attempt and its signal is started
// anew for the refusal, where the refusal's workflow used to fail.
func TestRefusalJoinsOrRestartsTheBoundaryWorkflow(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ts := temporaltest.NewServer(temporaltest.WithT(t))
	c := ts.GetDefaultClient()
	ends := &endFirst{end: func(id string) {
		if err := c.TerminateWorkflow(ctx, id, "", "the test ends it before the signal"); err != nil {
			t.Errorf("terminate %s: %v", id, err)
		}
	}}
	ts.NewWorkerWithOptions(flow.TaskQueue, func(r worker.Registry) {
		r.RegisterWorkflowWithOptions(fakeBoundary, workflow.RegisterOptions{Name: boundary.Name})
		r.RegisterWorkflow(refusal)
	}, worker.Options{Interceptors: []interceptor.WorkerInterceptor{ends}})
	const id = "boundary-north-f1"
	startFake := func(intervention string) client.WorkflowRun {
		t.Helper()
		run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: flow.TaskQueue}, boundary.Name,
			boundary.Input{Intervention: intervention})
		if err != nil {
			t.Fatalf("start the boundary workflow: %v", err)
		}
		return run
	}
	refuse := func(intervention string) client.WorkflowRun {
		t.Helper()
		run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "refusal-" + intervention, TaskQueue: flow.TaskQueue},
			refusal, id, intervention)
		if err != nil {
			t.Fatalf("start the refusal: %v", err)
		}
		return run
	}
	result := func(run client.WorkflowRun) (string, error) {
		var s string
		err := run.Get(ctx, &s)
		return s, err
	}
	stop := func(runID string) {
		t.Helper()
		if err := c.SignalWorkflow(ctx, id, runID, "stop", nil); err != nil {
			t.Fatalf("stop %s: %v", id, err)
		}
	}

	// Running: the refusal joins it.
	first := startFake("i1")
	if got, err := result(refuse("i2")); err != nil || got != "joined the running boundary workflow" {
		t.Fatalf("refusal while it runs = %q, %v", got, err)
	}
	stop(first.GetRunID())
	var out boundary.Result
	if err := first.Get(ctx, &out); err != nil || out.Summary != "started for i1, restarted for [i2]" {
		t.Fatalf("the running workflow = %+v, %v; want it told of i2", out, err)
	}

	// Ended in between: started anew for the refusal.
	ended := startFake("i3")
	ends.armed.Store(true)
	joining := refuse("i4")
	var again string
	for again == "" {
		d, err := c.DescribeWorkflowExecution(ctx, id, "")
		if err != nil {
			t.Fatalf("describe %s: %v", id, err)
		}
		if info := d.GetWorkflowExecutionInfo(); info.GetExecution().GetRunId() != ended.GetRunID() &&
			info.GetStatus() == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
			again = info.GetExecution().GetRunId()
		} else if r, err := c.DescribeWorkflowExecution(ctx, joining.GetID(), ""); err == nil &&
			r.GetWorkflowExecutionInfo().GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
			_, err := result(joining)
			t.Fatalf("the refusal ended (%v) and started no new boundary workflow", err)
		} else if ctx.Err() != nil {
			t.Fatal("no new boundary workflow started")
		} else {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if err := ended.Get(ctx, nil); err == nil || !strings.Contains(err.Error(), "terminated") {
		t.Fatalf("the first run ended with %v; want terminated", err)
	}
	stop(again)
	if got, err := result(joining); err != nil || got != "started for i4, restarted for []" {
		t.Fatalf("refusal after the workflow ended = %q, %v; want a new workflow started for i4", got, err)
	}
	if ends.armed.Load() {
		t.Fatal("the refusal sent no restart signal: the race was not made")
	}
}

// waitingBoundary stands in for a boundary workflow that runs until it is
// cancelled.
// startRefusal runs refusal for intervention iv on a fresh server, with
// waitingBoundary as the boundary workflow id, and returns once that runs.
func startRefusal(t *testing.T, id, iv string) (context.Context, client.Client, client.WorkflowRun) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	ts := temporaltest.NewServer(temporaltest.WithT(t))
	c := ts.GetDefaultClient()
	ts.NewWorker(flow.TaskQueue, func(r worker.Registry) {
		r.RegisterWorkflowWithOptions(waitingBoundary, workflow.RegisterOptions{Name: boundary.Name})
		r.RegisterWorkflow(refusal)
	})
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "refusal-" + iv, TaskQueue: flow.TaskQueue}, refusal, id, iv)
	if err != nil {
		t.Fatal(err)
	}
	for {
		if d, err := c.DescribeWorkflowExecution(ctx, id, ""); err == nil &&
			d.GetWorkflowExecutionInfo().GetStatus() == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
			return ctx, c, run
		}
		if ctx.Err() != nil {
			t.Fatal("the boundary workflow did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitingBoundary(ctx workflow.Context, _ boundary.Input) (boundary.Result, error) {
	_ = workflow.Await(ctx, func() bool { return false })
	return boundary.Result{}, temporal.NewCanceledError()
}

// A boundary workflow cancelled because the family's record was deleted
// ends the refusal's wait as a summary, not a failure: the meeting's
// outcome stands.
func TestCancelledBoundaryEndsTheRefusal(t *testing.T) {
	ctx, c, run := startRefusal(t, "boundary-north-f2", "i9")
	const id = "boundary-north-f2"
	if err := c.CancelWorkflow(ctx, id, ""); err != nil {
		t.Fatal(err)
	}
	var got string
	if err := run.Get(ctx, &got); err != nil || got != "the boundary workflow was cancelled" {
		t.Fatalf("refusal after its boundary workflow was cancelled = %q, %v", got, err)
	}
}

// The refusal's own cancellation (an operator cancelling the meeting's
// workflow, which cancels its boundary child too) stays a cancellation:
// only a boundary workflow cancelled on its own ends the wait as a summary.
func TestCancelledRefusalStaysCancelled(t *testing.T) {
	ctx, c, run := startRefusal(t, "boundary-north-f3", "i10")
	if err := c.CancelWorkflow(ctx, "refusal-i10", ""); err != nil {
		t.Fatal(err)
	}
	var got string
	if err := run.Get(ctx, &got); !temporal.IsCanceledError(err) {
		t.Fatalf("a cancelled refusal = %q, %v; want its cancellation", got, err)
	}
}
