package flow

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// An epoch's changes never change once it is released: a run begun under it
// takes them without asking, and would not replay against another list. A
// change released after an epoch goes into a new one. Each epoch's list is
// pinned here by its digest; a new epoch adds its own line.
func TestEpochsAreFrozen(t *testing.T) {
	pinned := map[string]string{
		"epoch-2026-12-03":  "541d711b47d95389",
		"epoch-2026-12-04":  "ee68661af467a037",
		"epoch-2026-12-04b": "4cb32be79b28abaf",
		"epoch-2026-12-05":  "37d32e43717d3d87",
		"epoch-2026-12-05b": "4e9c1b59900dfe2a",
		"epoch-2026-12-05c": "88b6fc2d195bc239",
		"epoch-2026-12-05d": "def442686407c8be",
		"epoch-2026-12-06":  "f7a39f4091fc481f",
		"epoch-2026-12-06b": "453d18930f2d08ee",
		"epoch-2026-12-06c": "c7c27f31bc372cbd",
		"epoch-2026-12-07":  "6e6fca7158cea1ec",
		"epoch-2026-12-07b": "96f90a83e430688a",
		"epoch-2026-12-07c": "5e350e6c5317a687",
	}
	for _, e := range epochs {
		var lines []string
		for id, v := range e.covers {
			lines = append(lines, fmt.Sprintf("%s=%d", id, v))
		}
		slices.Sort(lines)
		sum := sha256.Sum256([]byte(strings.Join(lines, "\n")))
		got := hex.EncodeToString(sum[:8])
		want, ok := pinned[e.id]
		if !ok || got != want {
			t.Errorf("epoch %s covers %d changes, digest %s; pinned %q: an epoch's changes never change, a new change goes in a new epoch (pin a new one here)", e.id, len(lines), got, want)
		}
	}
	if len(pinned) != len(epochs) {
		t.Errorf("%d epochs pinned, %d in the code", len(pinned), len(epochs))
	}
}

// TestDeployGuideNamesTheRollbackFloor keeps deploy/README.md naming the
// newest epoch as the floor no worker may be rolled back below: an
// operator trusting an older name would roll back to code that cannot
// replay the runs begun since.
func TestDeployGuideNamesTheRollbackFloor(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	want := "now `" + epochs[0].id + "`"
	if !strings.Contains(strings.Join(strings.Fields(string(b)), " "), want) {
		t.Fatalf("deploy/README.md does not say the floor is %s (%q)", epochs[0].id, want)
	}
}

// A change asked only in a sensitive state is in an epoch before it is
// released: Version never asks it live in a run begun before its epoch,
// so, outside every epoch, no run would ever take it.
func TestSensitiveChangesAreInTheNewestEpoch(t *testing.T) {
	for id := range sensitive {
		if _, ok := epochs[0].covers[id]; !ok {
			t.Errorf("%q is asked only in a sensitive state and no epoch covers it: put it in a new epoch", id)
		}
	}
}
