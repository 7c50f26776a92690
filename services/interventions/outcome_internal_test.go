package interventions

import (
	"strings"
	"testing"

	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	"github.com/handoff-health/handoff/workflows/activities"
)

// The service hears check-ins after exactly the partial yeses that the
// intervention workflow follows up like a refusal: a partial yes that the
// workflow hands to intake (MAT, or inpatient or outpatient care) starts
// no follow-up, and a check-in recorded for it would go unheard.
func TestCheckInsFollowWhatTheWorkflowFollowsUp(t *testing.T) {
	for n := range interventionsv1.ServiceKind_name {
		k := interventionsv1.ServiceKind(n)
		if k == interventionsv1.ServiceKind_SERVICE_KIND_UNSPECIFIED {
			continue
		}
		name := strings.TrimPrefix(k.String(), "SERVICE_KIND_")
		intake := activities.IsMAT(name) || activities.IsCare(name)
		o := &interventionsv1.Outcome{Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_PARTIALLY_ACCEPTED,
			AcceptedServices: []interventionsv1.ServiceKind{interventionsv1.ServiceKind_SERVICE_KIND_PEER_SUPPORT, k}}
		if followedUp(o) == intake {
			t.Errorf("a partial yes to %s: check-ins heard %v, but the workflow hands it to intake: %v", name, followedUp(o), intake)
		}
	}
}
