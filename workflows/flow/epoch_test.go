package flow_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	"go.temporal.io/server/temporaltest"

	"github.com/handoff-health/handoff/workflows/flow"
)

// epochFlow asks a change the epoch covers and one it does not, and
// returns what each answered.
func epochFlow(ctx workflow.Context, begin bool) ([]workflow.Version, error) {
	if begin {
		ctx = flow.BeginEpoch(ctx)
	}
	return afterVersions(ctx, flow.Version(ctx, "local-activities", 1), flow.Version(ctx, "a-later-change", 2))
}

// afterVersions makes a command for each version taken (a short timer), so
// that a replay taking another version than the run did fails, and
// returns the versions.
func afterVersions(ctx workflow.Context, vs ...workflow.Version) ([]workflow.Version, error) {
	for _, v := range vs {
		if v >= 1 {
			if err := workflow.Sleep(ctx, time.Millisecond); err != nil {
				return nil, err
			}
		}
	}
	return vs, nil
}

// A run begun at the epoch records one marker for the epoch and one for a
// change made after it, with the versions a run asking each would get; a
// run without the epoch asks each change. Both histories replay.
func TestEpochRecordsOneMarkerForTheChangesItCovers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ts := temporaltest.NewServer(temporaltest.WithT(t))
	ts.NewWorker("epoch", func(r worker.Registry) { r.RegisterWorkflow(epochFlow) })
	c := ts.GetDefaultClient()
	for _, c2 := range []struct {
		begin   bool
		markers []string
	}{
		{true, []string{"epoch-2026-12-07c", "a-later-change"}},
		{false, []string{"local-activities", "a-later-change"}},
	} {
		run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{TaskQueue: "epoch"}, epochFlow, c2.begin)
		if err != nil {
			t.Fatal(err)
		}
		var got []workflow.Version
		if err := run.Get(ctx, &got); err != nil || len(got) != 2 || got[0] != 1 || got[1] != 2 {
			t.Fatalf("begin %v: versions %v, %v; want [1 2]", c2.begin, got, err)
		}
		h, markers := versionMarkers(ctx, t, c, run)
		upserts := 0
		for _, e := range h.Events {
			if e.GetUpsertWorkflowSearchAttributesEventAttributes() != nil {
				upserts++
			}
		}
		if len(markers) != len(c2.markers) || markers[0] != c2.markers[0] || markers[1] != c2.markers[1] {
			t.Fatalf("begin %v: version markers %q; want %q", c2.begin, markers, c2.markers)
		}
		if upserts > len(markers) {
			t.Fatalf("begin %v: %d search attribute upserts for %d version markers", c2.begin, upserts, len(markers))
		}
		r := worker.NewWorkflowReplayer()
		r.RegisterWorkflow(epochFlow)
		if err := r.ReplayWorkflowHistory(nil, h); err != nil {
			t.Fatalf("begin %v: replay: %v", c2.begin, err)
		}
	}
}

// versionMarkers reads run's history and the change ids of its version
// markers, in order.
func versionMarkers(ctx context.Context, t *testing.T, c client.Client, run client.WorkflowRun) (*historypb.History, []string) {
	t.Helper()
	h := &historypb.History{}
	var markers []string
	it := c.GetWorkflowHistory(ctx, run.GetID(), run.GetRunID(), false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		e, err := it.Next()
		if err != nil {
			t.Fatal(err)
		}
		h.Events = append(h.Events, e)
		if a := e.GetMarkerRecordedEventAttributes(); a != nil && a.GetMarkerName() == "Version" {
			var id string
			if err := converter.GetDefaultDataConverter().FromPayloads(a.GetDetails()["change-id"], &id); err != nil {
				t.Fatal(err)
			}
			markers = append(markers, id)
		}
	}
	return h, markers
}

// firstEpochFlow is what code that knew only the first epoch ran: its
// marker, then the changes later epochs cover, asked on their own.
func firstEpochFlow(ctx workflow.Context) ([]workflow.Version, error) {
	workflow.GetVersion(ctx, "epoch-2026-12-03", workflow.DefaultVersion, 1)
	return afterVersions(ctx, 1, workflow.GetVersion(ctx, "stop-boundary-on-yes", workflow.DefaultVersion, 1),
		workflow.GetVersion(ctx, "failures-stay-unread", workflow.DefaultVersion, 1))
}

// secondEpochFlow is what code that knew the second epoch ran: its marker,
// then the change the third covers, asked on its own.
func secondEpochFlow(ctx workflow.Context) ([]workflow.Version, error) {
	workflow.GetVersion(ctx, "epoch-2026-12-04", workflow.DefaultVersion, 1)
	return afterVersions(ctx, 1, 1, workflow.GetVersion(ctx, "failures-stay-unread", workflow.DefaultVersion, 1))
}

// markerAlone is what code that knew the epoch id, the third or a later
// one, ran: its marker alone, every change asked being covered.
func markerAlone(id string) func(workflow.Context) ([]workflow.Version, error) {
	return func(ctx workflow.Context) ([]workflow.Version, error) {
		workflow.GetVersion(ctx, id, workflow.DefaultVersion, 1)
		return afterVersions(ctx, 1, 1, 1)
	}
}

// todaysEpochFlow is the same workflow under today's code.
func todaysEpochFlow(ctx workflow.Context) ([]workflow.Version, error) {
	ctx = flow.BeginEpoch(ctx)
	return afterVersions(ctx, flow.Version(ctx, "local-activities", 1), flow.Version(ctx, "stop-boundary-on-yes", 1),
		flow.Version(ctx, "failures-stay-unread", 1))
}

// Runs begun at earlier epochs replay under code that knows a later one:
// BeginEpoch finds the run's own epoch marker, and the changes later
// epochs cover are asked as they were. A run begun today records the
// newest epoch's marker alone.
func TestRunsOfAnEarlierEpochReplay(t *testing.T) {
	replayUnder(t, "EpochFlow", todaysEpochFlow, 3, []epochRun{
		{"begun at the first epoch", firstEpochFlow, "[epoch-2026-12-03 stop-boundary-on-yes failures-stay-unread]"},
		{"begun at the second epoch", secondEpochFlow, "[epoch-2026-12-04 failures-stay-unread]"},
		{"begun at the third epoch", markerAlone("epoch-2026-12-04b"), "[epoch-2026-12-04b]"},
		{"begun at the fourth epoch", markerAlone("epoch-2026-12-05"), "[epoch-2026-12-05]"},
		{"begun at the fifth epoch", markerAlone("epoch-2026-12-05b"), "[epoch-2026-12-05b]"},
		{"begun at the sixth epoch", markerAlone("epoch-2026-12-05c"), "[epoch-2026-12-05c]"},
		{"begun at the seventh epoch", markerAlone("epoch-2026-12-05d"), "[epoch-2026-12-05d]"},
		{"begun at the eighth epoch", markerAlone("epoch-2026-12-06"), "[epoch-2026-12-06]"},
		{"begun at the ninth epoch", markerAlone("epoch-2026-12-06b"), "[epoch-2026-12-06b]"},
		{"begun at the tenth epoch", markerAlone("epoch-2026-12-06c"), "[epoch-2026-12-06c]"},
		{"begun at the eleventh epoch", markerAlone("epoch-2026-12-07"), "[epoch-2026-12-07]"},
		{"begun at the twelfth epoch", markerAlone("epoch-2026-12-07b"), "[epoch-2026-12-07b]"},
		{"begun today", todaysEpochFlow, "[epoch-2026-12-07c]"},
		// In a sensitive state, no marker of its own: the change id would
		// go, in clear, into the run's TemporalChangeVersion search
		// attribute, for anyone reading visibility to list the families
		// in that state.
		{"begun today, in a sensitive state", sensitiveFlow, "[epoch-2026-12-07c]"},
	})
}

// epochRun is a workflow as code of some epoch ran it, and the version
// markers its run records.
type epochRun struct {
	name    string
	ran     func(workflow.Context) ([]workflow.Version, error)
	markers string
}

// replayUnder runs each of runs under the workflow type name on an
// embedded server, checks that it took n versions, all 1, and recorded
// its markers, and replays its history under today's code.
func replayUnder(t *testing.T, name string, today func(workflow.Context) ([]workflow.Version, error), n int, runs []epochRun) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ts := temporaltest.NewServer(temporaltest.WithT(t))
	c := ts.GetDefaultClient()
	for _, tc := range runs {
		queue := strings.ReplaceAll(tc.name, " ", "-")
		ts.NewWorker(queue, func(r worker.Registry) {
			r.RegisterWorkflowWithOptions(tc.ran, workflow.RegisterOptions{Name: name})
		})
		run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{TaskQueue: queue}, name)
		if err != nil {
			t.Fatal(err)
		}
		var got []workflow.Version
		if err := run.Get(ctx, &got); err != nil || len(got) != n || slices.ContainsFunc(got, func(v workflow.Version) bool { return v != 1 }) {
			t.Fatalf("%s: versions %v, %v; want %d, each 1", tc.name, got, err, n)
		}
		h, markers := versionMarkers(ctx, t, c, run)
		if fmt.Sprint(markers) != tc.markers {
			t.Fatalf("%s: version markers %v; want %s", tc.name, markers, tc.markers)
		}
		r := worker.NewWorkflowReplayer()
		r.RegisterWorkflowWithOptions(today, workflow.RegisterOptions{Name: name})
		if err := r.ReplayWorkflowHistory(nil, h); err != nil {
			t.Fatalf("%s: replay under today's code: %v", tc.name, err)
		}
	}
}

// Asking a covered change at another version than the epoch's is a
// programming error, caught before any run takes it.
func TestVersionRefusesACoveredChangeAtAnotherVersion(t *testing.T) {
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestWorkflowEnvironment()
	env.RegisterWorkflowWithOptions(func(ctx workflow.Context) error {
		flow.Version(flow.BeginEpoch(ctx), "local-activities", 2)
		return nil
	}, workflow.RegisterOptions{Name: "raised"})
	env.ExecuteWorkflow("raised")
	if err := env.GetWorkflowError(); err == nil || !strings.Contains(err.Error(), "new change id") {
		t.Fatalf("raised a covered change: %v; want a panic asking for a new id", err)
	}
}

// sensitiveFlow asks changes asked only in a sensitive state (a screen not
// current, a stalled intake's failed review, a family's case closed, an
// overdose as the boundary workflow ends, a meeting held back for risk, an
// intake that failed, an overdose's alert that can fail after a cancel, a
// loved one in treatment).
func sensitiveFlow(ctx workflow.Context) ([]workflow.Version, error) {
	ctx = flow.BeginEpoch(ctx)
	// Three versions, as every flow of the table gives: the last stands
	// for the newest epoch's changes together.
	return afterVersions(ctx, flow.Version(ctx, "gate-on-current-screen", 1), flow.Version(ctx, "stall-review-best-effort", 1),
		min(flow.Version(ctx, "close-before-boundary", 1), flow.Version(ctx, "answer-overdoses-after-tidy", 1),
			flow.Version(ctx, "escalate-when-safe", 1), flow.Version(ctx, "hold-members-on-risk", 1),
			flow.Version(ctx, "held-at-end-is-theirs", 1), flow.Version(ctx, "listen-after-failure", 1),
			flow.Version(ctx, "entered-past-failed-support", 1), flow.Version(ctx, "hear-alerts-out", 1),
			flow.Version(ctx, "boundary-ends-in-treatment", 1), flow.Version(ctx, "escalated-past-cancel", 1),
			flow.Version(ctx, "window-before-screen", 1), flow.Version(ctx, "unread-screen-waits", 1),
			flow.Version(ctx, "accepted-naloxone-once", 1), flow.Version(ctx, "accepted-beside-reason", 1)))
}

// seventhEpochFreshFlow is what every workflow ran under code that knew
// epoch-2026-12-05d: its marker, then fresh-results asked on its own
// (flow.WithActivityOptions asks it).
func seventhEpochFreshFlow(ctx workflow.Context) ([]workflow.Version, error) {
	workflow.GetVersion(ctx, "epoch-2026-12-05d", workflow.DefaultVersion, 1)
	return afterVersions(ctx, workflow.GetVersion(ctx, "fresh-results", workflow.DefaultVersion, 1))
}

// todaysFreshFlow is the same under today's code, whose newest epoch
// covers fresh-results.
func todaysFreshFlow(ctx workflow.Context) ([]workflow.Version, error) {
	ctx = flow.BeginEpoch(ctx)
	return afterVersions(ctx, flow.Version(ctx, "fresh-results", 1))
}

// A run begun at epoch-2026-12-05d, with its marker for a change it asked
// on its own, replays under code whose newest epoch covers that change;
// a run begun today records the newest epoch's marker alone.
func TestAChangeAskedOnItsOwnBeforeItsEpochReplays(t *testing.T) {
	replayUnder(t, "FreshFlow", todaysFreshFlow, 1, []epochRun{
		{"begun at epoch-2026-12-05d", seventhEpochFreshFlow, "[epoch-2026-12-05d fresh-results]"},
		{"begun today", todaysFreshFlow, "[epoch-2026-12-07c]"},
	})
}

// olderEpochUntil is what code that knew epoch-2026-12-06 ran of a
// workflow's first task: its marker, the changes asked (and recorded),
// then the wait for signal, past which it never ran.
func olderEpochUntil(signal string, asked ...string) func(workflow.Context) ([]workflow.Version, error) {
	return func(ctx workflow.Context) ([]workflow.Version, error) {
		workflow.GetVersion(ctx, "epoch-2026-12-06", workflow.DefaultVersion, 1)
		for _, id := range asked {
			workflow.GetVersion(ctx, id, workflow.DefaultVersion, 1)
		}
		workflow.GetSignalChannel(ctx, signal).Receive(ctx, nil)
		return nil, errors.New("the older code ran on past its first task")
	}
}

// todaysWaitFlow is WaitFlow under today's code: after "go", it asks two
// changes newer epochs than epoch-2026-12-06 cover, one asked only in a
// sensitive state and one asked in every run, and one no epoch covers.
func todaysWaitFlow(ctx workflow.Context) ([]workflow.Version, error) {
	ctx = flow.BeginEpoch(ctx)
	workflow.GetSignalChannel(ctx, "go").Receive(ctx, nil)
	return afterVersions(ctx, flow.Version(ctx, "held-at-end-is-theirs", 1), flow.Version(ctx, "resends-outlive-cancel", 1),
		flow.Version(ctx, "a-later-change", 1))
}

// A run begun at an older epoch and going on under today's code does not
// ask a change asked only in a sensitive state that a newer epoch covers,
// and goes on without it: asked, its id would go into the run's
// TemporalChangeVersion search attribute, in clear, naming the state. It
// asks other changes as ever, and takes them. The history replays under
// today's code.
func TestARunOfAnOlderEpochDoesNotAskANewerEpochsChanges(t *testing.T) {
	got, markers, _ := handedOver(t, "WaitFlow", olderEpochUntil("go"), handover{todaysWaitFlow, "go"})
	if fmt.Sprint(got) != "[-1 1 1]" {
		t.Fatalf("versions %v; want [-1 1 1]: the sensitive change not taken, the others taken", got)
	}
	if fmt.Sprint(markers) != "[epoch-2026-12-06 resends-outlive-cancel a-later-change]" {
		t.Fatalf("version markers %v; want the run's epoch and the changes not sensitive", markers)
	}
}

// handover is one step of a run handed from worker to worker: a worker of
// code starts, the last one having stopped, and signal is sent.
type handover struct {
	code   func(workflow.Context) ([]workflow.Version, error)
	signal string
}

// handedOver runs a workflow of type name begun by older code, whose first
// task it waits out, then under each step's worker in turn, each later
// one after the task the one before made: so that each replays the run
// from the start, as a worker restarted does. It returns the versions the
// run took, its version markers and its history, which it replays under
// the last step's code.
func handedOver(t *testing.T, name string, older func(workflow.Context) ([]workflow.Version, error), steps ...handover) ([]workflow.Version, []string, *historypb.History) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ts := temporaltest.NewServer(temporaltest.WithT(t))
	c := ts.GetDefaultClient()
	start := func(code func(workflow.Context) ([]workflow.Version, error)) worker.Worker {
		w := worker.New(c, name, worker.Options{})
		w.RegisterWorkflowWithOptions(code, workflow.RegisterOptions{Name: name})
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		return w
	}
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{TaskQueue: name}, name)
	if err != nil {
		t.Fatal(err)
	}
	tasks := func(want int) {
		for n := 0; n < want; time.Sleep(20 * time.Millisecond) {
			n = 0
			it := c.GetWorkflowHistory(ctx, run.GetID(), run.GetRunID(), false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
			for it.HasNext() {
				e, err := it.Next()
				if err != nil {
					t.Fatal(err)
				}
				if e.GetEventType() == enumspb.EVENT_TYPE_WORKFLOW_TASK_COMPLETED {
					n++
				}
			}
		}
	}
	w := start(older)
	for i, st := range steps {
		tasks(i + 1)
		w.Stop()
		w = start(st.code)
		if err := c.SignalWorkflow(ctx, run.GetID(), run.GetRunID(), st.signal, nil); err != nil {
			t.Fatal(err)
		}
	}
	defer w.Stop()
	var got []workflow.Version
	if err := run.Get(ctx, &got); err != nil {
		t.Fatal(err)
	}
	h, markers := versionMarkers(ctx, t, c, run)
	r := worker.NewWorkflowReplayer()
	r.RegisterWorkflowWithOptions(steps[len(steps)-1].code, workflow.RegisterOptions{Name: name})
	if err := r.ReplayWorkflowHistory(nil, h); err != nil {
		t.Fatalf("replay under today's code: %v", err)
	}
	return got, markers, h
}

// todaysAskedFlow is AskedFlow under today's code: the change asked
// before "go", as the older code did, and again after it.
func todaysAskedFlow(ctx workflow.Context) ([]workflow.Version, error) {
	ctx = flow.BeginEpoch(ctx)
	first := flow.Version(ctx, "held-at-end-is-theirs", 1)
	workflow.GetSignalChannel(ctx, "go").Receive(ctx, nil)
	return afterVersions(ctx, first, flow.Version(ctx, "held-at-end-is-theirs", 1))
}

// A sensitive change that code of a run's own time asked, and recorded,
// answers the same when today's code asks it again live, as the SDK
// would: answered otherwise, a replay of that history (which asks it from
// the marker) would take the other branch, and fail the run's tasks.
func TestASensitiveChangeTheRunTookStaysTaken(t *testing.T) {
	if got, _, _ := handedOver(t, "AskedFlow", olderEpochUntil("go", "held-at-end-is-theirs"), handover{todaysAskedFlow, "go"}); fmt.Sprint(got) != "[1 1]" {
		t.Fatalf("versions %v; want [1 1]: the change the run took, taken again", got)
	}
}

// todaysTwoStepFlow is TwoStepFlow under today's code: after "one" it
// asks a sensitive change a newer epoch covers, after "two" a change no
// epoch covers.
func todaysTwoStepFlow(ctx workflow.Context) ([]workflow.Version, error) {
	ctx = flow.BeginEpoch(ctx)
	workflow.GetSignalChannel(ctx, "one").Receive(ctx, nil)
	sensitive := flow.Version(ctx, "held-at-end-is-theirs", 1)
	workflow.GetSignalChannel(ctx, "two").Receive(ctx, nil)
	return afterVersions(ctx, sensitive, flow.Version(ctx, "a-later-change", 1))
}

// A run of an older epoch that met a sensitive change under today's code
// (live: nothing recorded) and is then replayed (a worker restarted), in
// which the SDK asked holds the change's id at DefaultVersion, records no
// later change either: the SDK would write that id into the run's
// TemporalChangeVersion with it.
func TestAReplayedSensitiveChangeIsNotWrittenWithALaterOne(t *testing.T) {
	got, markers, h := handedOver(t, "TwoStepFlow", olderEpochUntil("one"),
		handover{todaysTwoStepFlow, "one"}, // today's code meets the sensitive change live
		handover{todaysTwoStepFlow, "two"}) // a restarted worker replays it, and goes on
	if fmt.Sprint(got) != "[-1 -1]" {
		t.Fatalf("versions %v; want [-1 -1]: nothing recorded once the SDK holds the sensitive id", got)
	}
	if fmt.Sprint(markers) != "[epoch-2026-12-06]" {
		t.Fatalf("version markers %v; want the run's epoch alone", markers)
	}
	for _, e := range h.GetEvents() {
		if a := e.GetUpsertWorkflowSearchAttributesEventAttributes(); a != nil && strings.Contains(a.String(), "held-at-end") {
			t.Fatalf("the run's search attributes were given the sensitive id: %v", a)
		}
	}
}
