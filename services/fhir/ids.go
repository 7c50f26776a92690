package fhir

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"

	"github.com/google/uuid"
)

// FHIR ids are [A-Za-z0-9\-\.]{1,64}. Handoff ids are [a-z0-9-]{1,63}, so a
// Handoff id is a FHIR id as it is, and "." (never in a Handoff id) can join
// two of them without ambiguity.
var (
	handoffID = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	hex64     = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// intakePrefix marks an Appointment id that is a referral's intake
// appointment. Handoff ids are UUIDs, so no intervention id starts with it.
const intakePrefix = "intake-"

// pairID names a child (a member, a consent) by its parent's id and its own
// within a 64-character FHIR id: "parent.child" when it fits; two UUIDs
// without their hyphens (a consent in a family); otherwise "parent.H" and a
// hash of the child's id, found again by comparing hashes (Handoff ids have
// no capitals, so the H cannot be mistaken for an id).
func pairID(parent, child string) string {
	if len(parent)+1+len(child) <= 64 {
		return parent + "." + child
	}
	p, errP := uuid.Parse(parent)
	c, errC := uuid.Parse(child)
	if errP == nil && errC == nil && p.String() == parent && c.String() == child {
		return hex.EncodeToString(p[:]) + hex.EncodeToString(c[:])
	}
	return parent + ".H" + childHash(child)
}

func childHash(child string) string {
	sum := sha256.Sum256([]byte(child))
	return hex.EncodeToString(sum[:12])
}

// splitPairID undoes pairID. When the child is known only by its hash,
// child is empty and hash is set; the caller finds the child among the
// parent's.
func splitPairID(id string) (parent, child, hash string, ok bool) {
	if p, c, found := strings.Cut(id, "."); found {
		if !handoffID.MatchString(p) {
			return "", "", "", false
		}
		if h, isHash := strings.CutPrefix(c, "H"); isHash {
			return p, "", h, len(h) == 24
		}
		return p, c, "", handoffID.MatchString(c)
	}
	if hex64.MatchString(id) {
		p, errP := uuid.Parse(id[:32])
		c, errC := uuid.Parse(id[32:])
		return p.String(), c.String(), "", errP == nil && errC == nil
	}
	return "", "", "", false
}

// matches reports whether child is the one split from a pair id.
func matches(child, wantChild, wantHash string) bool {
	if wantHash != "" {
		return childHash(child) == wantHash
	}
	return child == wantChild
}

// lastSegment returns the id at the end of a resource name.
func lastSegment(name string) string {
	return name[strings.LastIndexByte(name, '/')+1:]
}

// segment returns the id after kind in a resource name such as
// clinics/c/families/f/consents/x (segment(name, "families") = "f").
func segment(name, kind string) string {
	parts := strings.Split(name, "/")
	for i := 0; i+1 < len(parts); i++ {
		if parts[i] == kind {
			return parts[i+1]
		}
	}
	return ""
}
