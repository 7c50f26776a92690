package boundaries

import (
	"testing"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
)

// Only a boundary in force counts, and it states a consequence only when
// the consequence has more than blanks.
func TestHeldAndStatesConsequence(t *testing.T) {
	for _, c := range []struct {
		state            familiesv1.BoundaryState
		consequence      string
		held, consequent bool
	}{
		{familiesv1.BoundaryState_BOUNDARY_STATE_PROPOSED, "We stop paying rent.", false, false},
		{familiesv1.BoundaryState_BOUNDARY_STATE_AGREED, "We stop paying rent.", false, false},
		{familiesv1.BoundaryState_BOUNDARY_STATE_ACTIVE, "We stop paying rent.", true, true},
		{familiesv1.BoundaryState_BOUNDARY_STATE_REINFORCED, "  ", true, false},
		{familiesv1.BoundaryState_BOUNDARY_STATE_REINFORCED, "No rides.", true, true},
		{familiesv1.BoundaryState_BOUNDARY_STATE_RETIRED, "No rides.", false, false},
	} {
		b := &familiesv1.Boundary{State: c.state, Consequence: c.consequence}
		if Held(b) != c.held || StatesConsequence(b) != c.consequent {
			t.Errorf("%v %q: held %v, states a consequence %v; want %v, %v", c.state, c.consequence, Held(b), StatesConsequence(b), c.held, c.consequent)
		}
	}
}
