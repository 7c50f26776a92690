// Package ids derives Temporal workflow ids from Handoff resource names, so
// that the services, the outbox relays and the workflows agree on them and
// a duplicate start is refused rather than run twice.
package ids

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// Ref is a workflow id as logs and traces may name it: its kind, and a
// hash of the whole. The rest of an id names a family, a meeting or a
// warning sign, and its kind says what befell it (an overdose alert, a
// boundary follow-up): together they are Part 2 information, which no
// log pipeline or tracing backend is granted. The hash still tells runs
// apart, and one who holds an id (from the database) can find its lines.
func Ref(id string) string {
	kind, _, ok := strings.Cut(id, "/")
	if !ok {
		kind = "workflow"
	}
	h := sha256.Sum256([]byte(id))
	return kind + "/" + hex.EncodeToString(h[:6])
}

// Intervention is the id of the workflow that carries an intervention from
// scheduling to its outcome.
func Intervention(intervention string) string { return "intervention/" + intervention }

// MATIntake is the id of the MAT intake workflow started on acceptance.
func MATIntake(intervention string) string { return "mat-intake/" + intervention }

// Boundary is the id of the boundary reinforcement workflow of a family.
// There is one per family at a time: an overdose recorded for the family
// reaches it without knowing which intervention started it.
func Boundary(family string) string { return "boundary/" + family }

// Overdose is the id of the workflow that alerts the counselor to an
// overdose no boundary workflow answered: one per warning sign.
func Overdose(warningSign string) string { return "overdose/" + warningSign }

// FamilyDeleted is the id of the workflow that stops what still runs for a
// deleted family: one per family name (names are never reused).
func FamilyDeleted(family string) string { return "family-deleted/" + family }

// FamilyClosed is the id of the workflow that stops what still runs for a
// family whose case was closed: one per closing (the outbox event that
// carried it), as a family may be reopened and closed again.
func FamilyClosed(family string, event int64) string {
	return fmt.Sprintf("family-closed/%s/%d", family, event)
}

// CancelledHolds is the id of the workflow that releases the places still
// held for a cancelled or deleted intervention: one per intervention.
func CancelledHolds(intervention string) string { return "cancelled-holds/" + intervention }

// ContactWithdrawn is the id of the workflow that cancels the reminders of
// people a family change made no longer contactable: one per change (the
// outbox event that carried it).
func ContactWithdrawn(family string, event int64) string {
	return fmt.Sprintf("contact-withdrawn/%s/%d", family, event)
}

// TreatmentEntered is the id of the workflow that ends a family's boundary
// follow-up once a referral says the loved one entered treatment: one per
// referral, which completes once.
func TreatmentEntered(referral string) string { return "treatment-entered/" + referral }

// TreatmentEnteredByFamily is the id of the TreatmentEntered workflow for
// an entry recorded on the family itself (by staff, for treatment entered
// outside Handoff), announced by outbox event event: one per announcement.
func TreatmentEnteredByFamily(family string, event int64) string {
	return fmt.Sprintf("treatment-entered/%s/%d", family, event)
}
