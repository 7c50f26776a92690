// Package aip holds the Google API Improvement Proposal mechanics shared by
// Handoff's services: resource names, etags, page tokens and list filters.
package aip

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/google/uuid"
)

var idPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// ValidID reports whether id is a valid resource id segment.
func ValidID(id string) bool { return idPattern.MatchString(id) }

// NewID returns a new resource id. UUIDv7 ids sort by creation time, which
// keeps keyset pagination in creation order and b-tree inserts local.
func NewID() string { return uuid.Must(uuid.NewV7()).String() }

// Parse splits name into the ids for collections, in order. For example
// Parse("clinics/a/families/b", "clinics", "families") returns ["a", "b"].
func Parse(name string, collections ...string) ([]string, error) {
	parts := strings.Split(name, "/")
	if len(parts) != 2*len(collections) {
		return nil, fmt.Errorf("want %s", pattern(collections))
	}
	ids := make([]string, len(collections))
	for i, c := range collections {
		if parts[2*i] != c || !ValidID(parts[2*i+1]) {
			return nil, fmt.Errorf("want %s", pattern(collections))
		}
		ids[i] = parts[2*i+1]
	}
	return ids, nil
}

var collectionPattern = regexp.MustCompile(`^[a-z][a-zA-Z0-9]{0,62}$`)

// ValidName reports whether name is the resource name of a record of a
// clinic: collection/id pairs under the clinic, each collection a lower
// camel case word and each id valid, at most five pairs deep. It says
// nothing of whether the record exists.
func ValidName(name string) bool {
	parts := strings.Split(name, "/")
	if len(parts)%2 != 0 || len(parts) < 4 || len(parts) > 10 || parts[0] != "clinics" {
		return false
	}
	for i := 0; i < len(parts); i += 2 {
		if !collectionPattern.MatchString(parts[i]) || !ValidID(parts[i+1]) {
			return false
		}
	}
	return true
}

// Name joins collection/id pairs into a resource name.
func Name(pairs ...string) string { return strings.Join(pairs, "/") }

// Clinic returns the clinic id at the start of any Handoff resource name, or
// "" if the name is not under a clinic.
func Clinic(name string) string {
	rest, ok := strings.CutPrefix(name, "clinics/")
	if !ok {
		return ""
	}
	id, _, _ := strings.Cut(rest, "/")
	if !ValidID(id) {
		return ""
	}
	return id
}

// Family returns `clinics/{c}/families/{f}` when name is that family or one
// of its sub-resources, and "" otherwise.
func Family(name string) string {
	parts := strings.SplitN(name, "/", 5)
	if len(parts) < 4 {
		return ""
	}
	f := strings.Join(parts[:4], "/")
	if _, err := Parse(f, "clinics", "families"); err != nil {
		return ""
	}
	return f
}

func pattern(collections []string) string {
	var b strings.Builder
	for i, c := range collections {
		if i > 0 {
			b.WriteByte('/')
		}
		fmt.Fprintf(&b, "%s/{%s}", c, strings.TrimSuffix(singular(c), "s"))
	}
	return b.String()
}

func singular(c string) string {
	switch {
	case strings.HasSuffix(c, "ies"):
		return strings.TrimSuffix(c, "ies") + "y"
	default:
		return c
	}
}

// ID returns the last segment of a resource name: its own id.
func ID(name string) string {
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		return name[i+1:]
	}
	return name
}
