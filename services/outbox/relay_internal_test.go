package outbox

import (
	"testing"
	"time"
)

// A failing lane's wait grows with each failure, also when a poll that
// read only part of the pending events left the lane out: its events are
// still there, and its next failure must wait longer, not the shortest
// time again. A poll that read everything and did not find the lane
// forgets it.
func TestLaneOutsideAPartialReadKeepsItsBackoff(t *testing.T) {
	r := &Relay{Interval: time.Second}
	t0 := time.Unix(1_000_000, 0)
	r.settle("a", true, t0)
	r.settle("a", true, t0.Add(time.Second)) // waits 2s, until t0+3s
	later := t0.Add(10 * time.Second)        // the wait is over
	others := []lane{{key: "b"}}
	if got := r.ready(others, false, later); len(got) != 1 {
		t.Fatalf("ready = %v; want lane b", got)
	}
	if b, ok := r.blocked["a"]; !ok || b.failures != 2 {
		t.Fatalf("after a partial read without lane a: %+v, %v; want its 2 failures kept", b, ok)
	}
	r.settle("a", true, later)
	if wait := r.blocked["a"].until.Sub(later); wait != 4*time.Second {
		t.Fatalf("the third failure waits %v; want 4s", wait)
	}
	r.ready(others, true, later.Add(time.Minute))
	if _, ok := r.blocked["a"]; ok {
		t.Fatal("a complete read without lane a, its wait over, kept it")
	}
}
