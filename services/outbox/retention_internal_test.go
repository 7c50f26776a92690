package outbox

import (
	"errors"
	"testing"
	"time"
)

// Pruning goes on while batches come back full, until its time is spent,
// each table for its share of it: no ceiling on the rows a pruning
// deletes, under which a table written faster would grow for good.
func TestInBatchesIsBoundedByTimeNotCount(t *testing.T) {
	clock := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	now := func() time.Time { return clock }
	backlog := func(rows int64, each time.Duration, calls *int) func(int) (int64, error) {
		return func(limit int) (int64, error) {
			*calls++
			clock = clock.Add(each)
			n := min(rows, int64(limit))
			rows -= n
			return n, nil
		}
	}
	// Two tables share 20 s, 10 s each (the budget is the caller's: the
	// relay's is a few seconds). The first's 25 full batches and a short
	// one, a tenth of a second each, all go within its share.
	var a, b int
	if err := inBatches(now, 20*time.Second, backlog(25_500, 100*time.Millisecond, &a), backlog(500, 100*time.Millisecond, &b)); err != nil {
		t.Fatal(err)
	}
	if a != 26 || b != 1 {
		t.Fatalf("batches run: %d and %d; want 26 (the whole backlog, past any count of ten) and 1", a, b)
	}
	var c, d int
	if err := inBatches(now, 20*time.Second, backlog(1_000_000, time.Second, &c), backlog(5_000, time.Second, &d)); err != nil {
		t.Fatal(err)
	}
	if c != 10 || d != 6 {
		t.Fatalf("batches run with slow deletes: %d and %d; want 10 (its 10 s) and 6 (the second's backlog, in its own share)", c, d)
	}
	failing := errors.New("database gone")
	if err := inBatches(now, time.Minute, func(int) (int64, error) { return 0, failing }); !errors.Is(err, failing) {
		t.Fatalf("a failing forget: %v", err)
	}
}
