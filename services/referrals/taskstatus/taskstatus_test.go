package taskstatus

import (
	"slices"
	"testing"

	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
)

// Every state has a Task status of the closed-loop set, and a search by
// status finds the states that have it, and no other: a search and the
// Task it finds agree.
func TestEveryStateHasOneAndTheSearchAgrees(t *testing.T) {
	program := map[string]bool{"requested": true, "accepted": true, "rejected": true, "in-progress": true,
		"on-hold": true, "completed": true, "cancelled": true, "entered-in-error": true}
	found := map[int32]string{}
	for status := range program {
		for _, v := range States(status) {
			if prev, ok := found[v]; ok {
				t.Errorf("state %d found by %q and %q", v, prev, status)
			}
			found[v] = status
		}
	}
	for v, name := range referralsv1.ReferralState_name {
		st := referralsv1.ReferralState(v)
		if st == referralsv1.ReferralState_REFERRAL_STATE_UNSPECIFIED {
			if Of(st) != "draft" || found[v] != "" {
				t.Errorf("%s: %q, found by %q; want draft, found by none of the set", name, Of(st), found[v])
			}
			continue
		}
		if !program[Of(st)] {
			t.Errorf("%s: Task status %q", name, Of(st))
		}
		if found[v] != Of(st) {
			t.Errorf("%s: found by %q; want by its status %q", name, found[v], Of(st))
		}
	}
	if got := States("in-progress"); !slices.Equal(got, []int32{int32(referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED),
		int32(referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW)}) {
		t.Errorf("in-progress finds %v; want booked and missed", got)
	}
	if got := States("failed"); len(got) != 0 {
		t.Errorf("failed finds %v; want none", got)
	}
	if Of(referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW) != "in-progress" {
		t.Error("a no-show reads failed, which the guides take as final")
	}
}
