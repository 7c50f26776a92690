package flow

import (
	"fmt"
	"maps"

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
// A change made after the newest epoch is asked on its own (Version with
// an id the epoch does not cover), until a later epoch covers it. A later
// epoch covers everything an earlier one does. A run records the marker of
// the newest epoch its code knew when it began, and only that one: when
// its first task replays, BeginEpoch asks the epochs newest first and the
// run's own is the first whose marker it finds. In visibility, a run's
// TemporalChangeVersion "<epoch id>-1" stands for every change its epoch
// covers at its version.
type epoch struct {
	id string
	// covers is each change's version at the epoch. It never changes: a
	// run begun at the epoch replays with these versions. A change that
	// later needs a higher version gets a new id.
	covers map[string]workflow.Version
}

// epochs, newest first.
//
// The newest covers the changes asked only in a sensitive state (a safety
// screen not current, an overdose beside a check-in, a referral failing
// under an overdose alert, a stalled intake's failed review, a partial yes
// to care other than medication, a family's case closed, an intake whose
// referral moved with no signal, a loved one in treatment): a run that asked one would carry it in
// its TemporalChangeVersion search attribute, which no codec seals, so
// that anyone reading visibility could list the families in that state. A
// change like that goes into a new epoch before it is released.
var epochs = []epoch{
	{"epoch-2026-12-07c", with(eleventhEpoch,
		// boundary: asked only when the family reads engaged in treatment;
		// only at a check-in that reported a window of opportunity or
		// warning signs while the family waited for a safety screen
		"boundary-ends-in-treatment", "window-before-screen",
		// boundary: asked only when a meeting held back for risk waits
		// and the family could not be read at a screen's signal
		"unread-screen-waits",
		// matintake: asked only when an escalated intake is cancelled; in
		// every run
		"escalated-past-cancel", "intake-target-nudge",
		// intervention: asked only on a yes with other services accepted;
		// only at a move while no place is held and the counselor was told
		"accepted-beside-reason", "hold-notice-after-move",
		// intervention: asked only when a called-off notice goes to
		// someone with quiet hours
		"called-off-until-quiet",
		// boundary: asked only after a refusal with naloxone accepted
		"accepted-naloxone-once",
	)},
	{"epoch-2026-12-07b", eleventhEpoch},
	{"epoch-2026-12-07", tenthEpoch},
	{"epoch-2026-12-06c", ninthEpoch},
	{"epoch-2026-12-06b", eighthEpoch},
	{"epoch-2026-12-06", seventhEpoch},
	{"epoch-2026-12-05d", with(sixthEpoch,
		// intervention: asked only for a partial yes to inpatient,
		// outpatient or intensive outpatient care
		"care-intake",
		// intervention: asked only when a meeting's length alone changed
		"length-keeps-reminders",
		// overdose
		"open-before-handover", "resend-while-open",
	)},
	{"epoch-2026-12-05c", sixthEpoch},
	{"epoch-2026-12-05b", fifthEpoch},
	{"epoch-2026-12-05", fourthEpoch},
	{"epoch-2026-12-04b", thirdEpoch},
	{"epoch-2026-12-04", secondEpoch},
	{"epoch-2026-12-03", firstEpoch},
}

// eleventhEpoch is epoch-2026-12-07b's.
var eleventhEpoch = with(tenthEpoch,
	// boundary: asked in every run (it costs each a marker), and only
	// when a run cancelled or closed has an overdose's alert that can
	// still fail
	"resends-outlive-cancel", "hear-alerts-out",
)

// tenthEpoch is epoch-2026-12-07's.
var tenthEpoch = with(ninthEpoch,
	// boundary: asked only at a check-in an overdose brought after the
	// check-ins ended with a meeting left to the counselor
	"held-at-end-is-theirs",
	// matintake: asked only when an intake failed, or the family's own
	// referrals did after the loved one entered treatment
	"listen-after-failure", "entered-past-failed-support",
)

// ninthEpoch is epoch-2026-12-06c's.
var ninthEpoch = with(eighthEpoch,
	// boundary: asked only when an overdose came in as the workflow
	// tidied up on its way out
	"answer-overdoses-after-tidy",
	// boundary: asked only while a next meeting waits for a safe screen;
	// at a screen after boundaries were reinforced, and at a member's
	// failed reminder
	"escalate-when-safe", "hold-members-on-risk",
	// overdose: asked in every run, of a type that tells of an overdose
	// already
	"overdose-resend-from-alert",
)

// eighthEpoch is epoch-2026-12-06b's.
var eighthEpoch = with(seventhEpoch,
	// familydeleted: asked only for a family whose case was closed
	"close-before-boundary",
	// intervention: asked on their own since epoch-2026-12-06, only when a
	// reschedule's sweep or a replan's step failed
	"go-on-past-failed-reschedule-cancel", "go-on-past-failed-replan",
)

// seventhEpoch took in every change asked on its own when it was made:
// those asked in every run (fresh-results, intake-resync-from-status),
// which cost each run a marker and a visibility write, and those asked
// only in a sensitive state.
var seventhEpoch = with(sixthEpoch,
	// The rest of epoch-2026-12-05d.
	"care-intake", "length-keeps-reminders", "open-before-handover", "resend-while-open",
	// flow
	"fresh-results",
	// intervention
	"go-on-past-failed-notice",
	// matintake: asked as an intake starts to follow a referral it
	// adopted; only when a review found the referral moved with no
	// signal; only when a step failed
	"intake-resync-from-status", "intake-resync-on-review", "intake-go-on-past-failed-notice",
	// boundary: asked only after a refusal (a series of level 2 meetings,
	// support no one could be referred to, warning signs at a check-in,
	// check-ins recorded before it ran), and only for a closed family
	"level-two-series", "support-unreferred-told", "warning-signs-at-check-in",
	"check-ins-before-start", "check-ins-of-the-next-meeting", "next-meetings-check-in-once",
	"end-when-family-closed", "boundary-reads-closed",
)

// sixthEpoch took in the changes asked only in a sensitive state when it
// was made, and TreatmentEntered's.
var sixthEpoch = with(fifthEpoch,
	// matintake: asked only when a stalled intake's review failed
	"stall-review-best-effort",
	// treatmententered
	"treatment-entered-records-entry", "treatment-entered-withdraws-drafts",
)

// fifthEpoch took in the changes asked only in a sensitive state when it
// was made.
var fifthEpoch = with(fourthEpoch,
	// intervention
	"abandon-stops-reminders-first", "stale-outcome-chasers", "refusal-replans",
	// matintake
	"review-stalled-intake",
	// boundary
	"gate-on-current-screen", "tighten-keeps-sooner", "boundary-tidy-on-cancel",
	// overdose
	"referral-failure-keeps-alert",
)

var fourthEpoch = with(thirdEpoch,
	// flow
	"listen-past-last-due", "listen-settles", "resend-fails-by",
	// intervention
	"listen-after-notices", "boundary-past-failed-referrals", "go-on-past-failed-reschedule-release", "outcome-past-failed-reminder-cancel",
	"release-cut-off-by-cancel", "release-unknown-hold", "resend-notices-after-outcome", "stop-boundary-by-origin",
	"stop-meeting-reminders-first", "withdraw-drafts-on-yes", "stop-boundary-by-origin-only",
	// matintake
	"no-cancel-notice-after-entry", "release-every-held-place", "release-hold-on-cancel", "tell-counselor-on-cancel",
	// boundary
	"answer-overdoses-on-failure", "blocked-escalation-kept", "check-in-once", "new-cycle-clears-blocked-escalation",
	"overdose-alert-first", "overdose-during-steps", "retry-blocked-escalation",
)

var thirdEpoch = with(secondEpoch,
	// flow
	"failures-stay-unread",
	// boundary
	"check-ins-before-screen",
)

var secondEpoch = with(firstEpoch,
	// flow
	"recheck-stale-after-resend",
	// intervention
	"no-resend-after-start", "stop-boundary-on-yes", "boundary-cancelled",
	"go-on-past-failed-release", "intake-first",
	// matintake
	"hold-rereads", "notices-to-current-counselor", "tell-counselor-on-failure",
	// boundary
	"refusals-counted", "refer-before-screen", "end-when-family-deleted",
)

var firstEpoch = map[string]workflow.Version{
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

// with returns what an earlier epoch covers and the changes named, each
// at version 1.
func with(earlier map[string]workflow.Version, changes ...string) map[string]workflow.Version {
	out := maps.Clone(earlier)
	for _, c := range changes {
		if _, dup := out[c]; dup {
			panic(fmt.Sprintf("flow: %q is covered by an earlier epoch already", c))
		}
		out[c] = 1
	}
	return out
}

type epochKey struct{}

// sensitive are the changes asked only in a sensitive state: a safety
// screen found risk or not current, an overdose, warning signs, a second
// refusal, a refusal at a meeting, a meeting abandoned, support no one
// could be referred to, a partial yes to care other than medication, an
// intake stalled or failed, a family's referrals failed after entry, a
// family's case closed, a loved one in treatment. Each is in an epoch
// before it is released (a test holds it to that): a new run takes it
// without asking, and runs begun before do not ask it (see Version). Changes asked in every run
// of a workflow, or only when a step of Handoff's own failed, are not
// here, nor are those of the overdose workflow, whose every run tells
// of an overdose already: those reach runs in flight.
//
// Some boundary changes asked only on an overdose or a risk found
// (overdose-alert-first, answer-overdoses-on-failure,
// overdose-once-and-reload-family, wait-when-reinforcement-refused,
// refusals-counted, check-ins-before-screen) were released before this
// set, and stay out of it: made sensitive now, a run begun before their
// epochs would lose them, and with them an overdose's alert that a failed
// referral held back, or the check-ins of a family waiting for its
// screen. Such a run, asking one, records its id in visibility; those
// runs end (or continue as new, at the newest epoch) within weeks.
var sensitive = map[string]bool{
	// boundary
	"hear-alerts-out": true, "held-at-end-is-theirs": true, "answer-overdoses-after-tidy": true,
	"escalate-when-safe": true, "hold-members-on-risk": true, "level-two-series": true,
	"support-unreferred-told": true, "warning-signs-at-check-in": true, "end-when-family-closed": true,
	"boundary-reads-closed": true, "gate-on-current-screen": true, "tighten-keeps-sooner": true,
	"boundary-tidy-on-cancel": true, "boundary-ends-in-treatment": true, "window-before-screen": true,
	"unread-screen-waits": true, "accepted-naloxone-once": true,
	// intervention: asked on a yes with other services accepted, the
	// partial yes to care without medication among them
	"accepted-beside-reason": true,
	// matintake
	"listen-after-failure": true, "entered-past-failed-support": true, "stall-review-best-effort": true,
	"review-stalled-intake": true, "escalated-past-cancel": true,
	// intervention
	"care-intake": true, "abandon-stops-reminders-first": true, "stale-outcome-chasers": true,
	"refusal-replans": true,
	// familydeleted
	"close-before-boundary": true,
}

// BeginEpoch finds the epoch this run began at, and returns ctx carrying
// what it covers for Version. Call it first in the workflow function,
// before anything that asks a version: in a run begun before an epoch it
// must run while the first task replays, and find no marker. A new run
// records the newest epoch's marker alone; one begun at an older epoch
// finds no marker for the newer ones, which then record nothing.
func BeginEpoch(ctx workflow.Context) workflow.Context {
	ctx = workflow.WithValue(ctx, takenKey{}, &taken{versions: map[string]workflow.Version{}})
	for _, e := range epochs {
		if workflow.GetVersion(ctx, e.id, workflow.DefaultVersion, 1) >= 1 {
			return workflow.WithValue(ctx, epochKey{}, e.covers)
		}
	}
	return workflow.WithValue(ctx, epochKey{}, map[string]workflow.Version(nil))
}

// takenKey holds, for a run, its *taken.
type takenKey struct{}

// taken is what Version answered a run for the changes its epoch does not
// cover: asked again, a change answers as it did first, in replay as
// live. sealed says the SDK holds a sensitive change's id for the run, at
// DefaultVersion, asked in replay: it writes every id it holds into
// TemporalChangeVersion with the next change it records, so none is
// recorded live in the run from then on.
type taken struct {
	versions map[string]workflow.Version
	sealed   bool
}

// Version is workflow.GetVersion(ctx, changeID, DefaultVersion, max),
// answered without a marker in a run begun at an epoch that covers the
// change. Without BeginEpoch in ctx it asks, which is always safe: the
// question is recorded and replays the same.
//
// A change asked only in a sensitive state (sensitive) is never asked
// live by a run begun before the epoch that covers it (at an older one,
// or before any): asked, its id would go into the run's
// TemporalChangeVersion search attribute, which no codec seals, and list
// the family in that state to anyone reading visibility. Such a run
// answers DefaultVersion and records nothing; in replay it asks, and
// finds the marker if code of its own time recorded one. Either way the
// first ask's answer stands for the rest of the run, live and in replay,
// as it does for every change the run's epoch does not cover. Asked in
// replay without a marker, the SDK keeps the id at DefaultVersion and
// would write it into the search attribute with the next change the run
// records: from then on the run records none (taken.sealed). It keeps
// the behaviour it began with; the changes reach a boundary follow-up at
// its next continue-as-new, and other workflows in their next runs.
// Other changes reach runs in flight as ever until then.
//
// A sensitive change never gains or moves a call site (new behaviour
// takes a new id): its first ask decides for the run, where the SDK
// would let a later marker answer a later ask.
//
// It panics (a workflow task failure, retried until fixed) when asked a
// covered change at a version other than an epoch's: runs begun at that
// epoch would keep the epoch's version without a marker to say otherwise,
// so a change needing a new version takes a new id.
func Version(ctx workflow.Context, changeID string, max workflow.Version) workflow.Version {
	for _, e := range epochs {
		if v, ok := e.covers[changeID]; ok && v != max {
			panic(fmt.Sprintf("flow.Version: %q is covered by %s at version %d; give the new version a new change id", changeID, e.id, v))
		}
	}
	covers, began := ctx.Value(epochKey{}).(map[string]workflow.Version)
	if v, ok := covers[changeID]; ok {
		return v
	}
	t, _ := ctx.Value(takenKey{}).(*taken)
	if !began || t == nil {
		return workflow.GetVersion(ctx, changeID, workflow.DefaultVersion, max)
	}
	// The first ask decides, for the rest of the run: a marker older
	// code recorded is found in replay, and a later ask made live must
	// give the same (the SDK would), or the next replay would take the
	// other branch there.
	if v, ok := t.versions[changeID]; ok {
		return v
	}
	var v workflow.Version
	switch {
	case workflow.IsReplaying(ctx):
		v = workflow.GetVersion(ctx, changeID, workflow.DefaultVersion, max)
		t.sealed = t.sealed || sensitive[changeID] && v == workflow.DefaultVersion
	case sensitive[changeID] || t.sealed:
		// Asked live, a sensitive change records nothing; nor, once
		// sealed, does any other, whose record would carry the
		// sensitive id the SDK holds.
		v = workflow.DefaultVersion
	default:
		v = workflow.GetVersion(ctx, changeID, workflow.DefaultVersion, max)
	}
	t.versions[changeID] = v
	return v
}
