package flow

import (
	"fmt"

	"go.temporal.io/sdk/workflow"
)

// Every change guarded by workflow.GetVersion costs a run that takes it a
// marker in its history and, from the SDK, an upsert of the
// TemporalChangeVersion search attribute: a history event and a visibility
// write each, on the server, in every run, for changes no run begun today
// can be without. An epoch stands for all changes made before it: a run
// begun under code that knows the epoch records one marker for it, and
// takes each change it covers without asking. A run begun before the epoch
// finds no epoch marker when its first task replays, and asks each change
// as it always did.
//
// A change made after the epoch is asked on its own (Version with an id
// not in atEpoch), until a later epoch covers it. In visibility, a run's
// TemporalChangeVersion "epoch-2026-12-03-1" stands for every change in
// atEpoch at its version.
const epochID = "epoch-2026-12-03"

// atEpoch is each change's version at the epoch. It never changes: a run
// begun at the epoch replays with these versions. A change that later
// needs a higher version gets a new id.
var atEpoch = map[string]workflow.Version{
	// flow
	"local-activities":   1,
	"skip-stale-resends": 1,
	// intervention
	"clean-up-on-abandon":                     1,
	"hold-after-reminders":                    1,
	"refer-services-accepted-beside-mat":      1,
	"start-boundary-that-ended-while-joining": 1,
	// matintake
	"cancel-stale-intake-reminders": 1,
	"listen-after-escalation":       1,
	"intake-on-hold":                1,
	"keep-intake-timer":             1,
	// boundary
	"overdose-once-and-reload-family": 1,
	"request-ids-by-run":              1,
	"current-counselor":               1,
	"answer-overdoses-before-start":   1,
	"listen-before-end":               1,
	"wait-when-reinforcement-refused": 1,
}

type epochKey struct{}

// BeginEpoch decides whether this run began at the epoch, and returns ctx
// carrying the answer for Version. Call it first in the workflow function,
// before anything that asks a version: in a run begun before the epoch it
// must run while the first task replays, and find no marker.
func BeginEpoch(ctx workflow.Context) workflow.Context {
	at := workflow.GetVersion(ctx, epochID, workflow.DefaultVersion, 1) >= 1
	return workflow.WithValue(ctx, epochKey{}, at)
}

// Version is workflow.GetVersion(ctx, changeID, DefaultVersion, max),
// answered without a marker in a run begun at the epoch when the epoch
// covers the change. Without BeginEpoch in ctx it asks, which is always
// safe: the question is recorded and replays the same.
//
// It panics (a workflow task failure, retried until fixed) when asked a
// covered change at a version other than the epoch's: runs begun at the
// epoch would keep the epoch's version without a marker to say otherwise,
// so a change needing a new version takes a new id.
func Version(ctx workflow.Context, changeID string, max workflow.Version) workflow.Version {
	if v, ok := atEpoch[changeID]; ok {
		if v != max {
			panic(fmt.Sprintf("flow.Version: %q is covered by %s at version %d; give the new version a new change id", changeID, epochID, v))
		}
		if at, _ := ctx.Value(epochKey{}).(bool); at {
			return v
		}
	}
	return workflow.GetVersion(ctx, changeID, workflow.DefaultVersion, max)
}
