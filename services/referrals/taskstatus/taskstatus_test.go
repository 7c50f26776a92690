package taskstatus

import (
	"strconv"
	"strings"
	"testing"

	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
)

// Every state has a Task status of the closed-loop set, and the SQL says
// the same: a search and the Task it finds agree.
func TestEveryStateHasOneAndTheSQLAgrees(t *testing.T) {
	program := map[string]bool{"requested": true, "accepted": true, "rejected": true, "in-progress": true,
		"on-hold": true, "completed": true, "cancelled": true, "entered-in-error": true}
	sql := SQL("state")
	for v, name := range referralsv1.ReferralState_name {
		st := referralsv1.ReferralState(v)
		if st == referralsv1.ReferralState_REFERRAL_STATE_UNSPECIFIED {
			if Of(st) != "draft" {
				t.Errorf("%s: %q; want draft", name, Of(st))
			}
			continue
		}
		if !program[Of(st)] {
			t.Errorf("%s: Task status %q", name, Of(st))
		}
		if want := " WHEN " + strconv.Itoa(int(v)) + " THEN '" + Of(st) + "'"; !strings.Contains(sql, want) {
			t.Errorf("%s: the SQL %s lacks %q", name, sql, want)
		}
	}
	if Of(referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW) != "in-progress" {
		t.Error("a no-show reads failed, which the guides take as final")
	}
}
