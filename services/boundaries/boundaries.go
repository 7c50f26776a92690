// Package boundaries holds what makes a family's boundary one to hold the
// loved one to. The interventions service refuses a formal (level 3)
// meeting without a boundary that states a consequence, and the boundary
// workflow proposes one only then: both ask here, so that they cannot
// drift apart.
package boundaries

import (
	"strings"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
)

// Held reports whether b is in force: active, or reinforced since.
func Held(b *familiesv1.Boundary) bool {
	st := b.GetState()
	return st == familiesv1.BoundaryState_BOUNDARY_STATE_ACTIVE || st == familiesv1.BoundaryState_BOUNDARY_STATE_REINFORCED
}

// StatesConsequence reports whether b is in force and states a
// consequence to put to the loved one at a formal meeting.
func StatesConsequence(b *familiesv1.Boundary) bool {
	return Held(b) && strings.TrimSpace(b.GetConsequence()) != ""
}
