package treatmententered_test

import (
	"testing"

	"github.com/handoff-health/handoff/workflows/replaytest"
)

// TestReplay checks this workflow's recorded histories still replay.
func TestReplay(t *testing.T) { replaytest.Run(t) }
