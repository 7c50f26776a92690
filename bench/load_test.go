package main

import (
	"context"
	"errors"
	"math"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestInterleaveRotatesThePathsAndMergesTheirRounds(t *testing.T) {
	var order []string
	n := map[string]int{}
	got, err := interleave(3, []string{"a", "b", "c"}, func(name string) (result, error) {
		order = append(order, name)
		n[name]++
		// Path a is 10 ms per call in its first round, 20 ms after; the
		// others 5 ms. One second per round.
		d := 5 * time.Millisecond
		if name == "a" {
			d = time.Duration(min(n[name], 2)) * 10 * time.Millisecond
		}
		var lat []time.Duration
		for range int(time.Second / d) {
			lat = append(lat, d)
		}
		r := summarize(lat, 0, time.Second)
		r.SyncMax, r.SyncSlow, r.Steal, r.StealPeak = time.Duration(n[name])*time.Millisecond, 1, 0.1*float64(n[name]), 0.1*float64(n[name])
		return r, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := "a b c b c a c a b"; strings.Join(order, " ") != want {
		t.Errorf("order %q, want %q", strings.Join(order, " "), want)
	}
	a := got["a"]
	if a.Ops != 100+50+50 || a.Duration != 3*time.Second {
		t.Errorf("a merged %d ops over %s, want 200 over 3s", a.Ops, a.Duration)
	}
	if math.Abs(a.Throughput-200.0/3) > 1e-9 {
		t.Errorf("a throughput %.3f, want %.3f (all ops over all time)", a.Throughput, 200.0/3)
	}
	if !slices.Equal(a.Rounds, []float64{100, 50, 50}) {
		t.Errorf("a rounds %v, want [100 50 50] in round order", a.Rounds)
	}
	// 100 calls of 10 ms and 100 of 20 ms: the 100th is the median.
	if a.P50 != 10*time.Millisecond || a.P99 != 20*time.Millisecond || a.Max != 20*time.Millisecond {
		t.Errorf("a p50/p99/max %s/%s/%s, want 10ms/20ms/20ms over all rounds' calls", a.P50, a.P99, a.Max)
	}
	if a.SyncMax != 3*time.Millisecond || a.SyncSlow != 3 {
		t.Errorf("a probe: slowest %s, slow %d; want the worst round (3ms) and the sum (3)", a.SyncMax, a.SyncSlow)
	}
	if math.Abs(a.Steal-0.2) > 1e-9 || math.Abs(a.StealPeak-0.3) > 1e-9 {
		t.Errorf("a steal %.3f, peak %.3f; want the mean 0.2 and the worst 0.3", a.Steal, a.StealPeak)
	}
}

func TestInterleaveStopsAtAFailedRound(t *testing.T) {
	calls := 0
	_, err := interleave(3, []string{"a", "b"}, func(name string) (result, error) {
		calls++
		if name == "b" {
			return result{}, errors.New("refused")
		}
		return summarize([]time.Duration{time.Millisecond}, 0, time.Second), nil
	})
	if err == nil || !strings.Contains(err.Error(), "b, round 1: refused") {
		t.Errorf("err %v, want it to name the path and round", err)
	}
	if calls != 2 {
		t.Errorf("%d calls after the failure, want 2 (none after it)", calls)
	}
}

func TestMergeKeepsStealUnknownWhereItCannotBeRead(t *testing.T) {
	r := summarize([]time.Duration{time.Millisecond}, 0, time.Second)
	r.Steal, r.StealPeak = math.NaN(), math.NaN()
	m := merge([]result{r, r})
	if !math.IsNaN(m.Steal) || !math.IsNaN(m.StealPeak) {
		t.Errorf("steal %v, peak %v; want NaN (unknown), not a number made up", m.Steal, m.StealPeak)
	}
}

func TestOpenLoopLeavesOutItsWarmup(t *testing.T) {
	var calls atomic.Int64
	const rate, d = 200.0, 500 * time.Millisecond
	warm := int(openLoopWarmup(d) / (time.Second / rate))
	// The warm-up's requests are slow, as the first of a run were after
	// another path's run; none of them may count. Slow by when they run,
	// not by their count: requests started together may count in another
	// order than they were due, and a timed one counted among the first
	// would be slow.
	start, warmFor := time.Now(), openLoopWarmup(d)
	r, err := openLoop(context.Background(), rate, d, func(context.Context) error {
		calls.Add(1)
		if time.Since(start) < warmFor-5*time.Millisecond {
			time.Sleep(300 * time.Millisecond)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if warm != 20 || r.Ops != 100 || int(calls.Load()) != warm+r.Ops {
		t.Fatalf("warm-up %d, timed %d, calls %d; want 20, 100, 120", warm, r.Ops, calls.Load())
	}
	if r.Max >= 300*time.Millisecond {
		t.Fatalf("max %v: a warm-up request was timed", r.Max)
	}

	// A failure fails the run, in the warm-up too.
	calls.Store(0)
	if _, err := openLoop(context.Background(), rate, d, func(context.Context) error {
		if calls.Add(1) == 1 {
			return errors.New("refused")
		}
		return nil
	}); err == nil {
		t.Fatal("a run with a failed warm-up request passed")
	}
}

func TestPairedTakesTurnsAndKeepsEachOpsTimes(t *testing.T) {
	var order []string
	op := func(name string, d time.Duration) func(context.Context) error {
		return func(context.Context) error {
			order = append(order, name)
			time.Sleep(d)
			return nil
		}
	}
	// b sleeps far longer than a: on a loaded machine (the whole suite on
	// two cores) a 1 ms sleep has taken 65 ms, so the checks below look at
	// a's median and totals, which one stalled call cannot move past b's.
	got, err := paired(context.Background(), 4, 1, [2]func(context.Context) error{op("a", time.Millisecond), op("b", 50*time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	// One untimed call of each, then turns that swap who goes first.
	if want := "a b a b b a a b b a"; strings.Join(order, " ") != want {
		t.Errorf("order %q, want %q", strings.Join(order, " "), want)
	}
	if got[0].Ops != 4 || got[1].Ops != 4 {
		t.Fatalf("ops %d and %d, want 4 each (warm-up calls untimed)", got[0].Ops, got[1].Ops)
	}
	if got[0].P50 >= 50*time.Millisecond || got[1].P50 < 50*time.Millisecond || got[1].Max < 50*time.Millisecond {
		t.Errorf("a's median %s, b's median %s: each op's times must stay its own", got[0].P50, got[1].P50)
	}
	if got[1].Duration < 200*time.Millisecond || got[0].Duration >= got[1].Duration {
		t.Errorf("durations %s and %s: each op's own time spent", got[0].Duration, got[1].Duration)
	}

	boom := errors.New("boom")
	calls := 0
	_, err = paired(context.Background(), 3, 0, [2]func(context.Context) error{
		func(context.Context) error { calls++; return nil },
		func(context.Context) error { return boom },
	})
	if !errors.Is(err, boom) || calls != 1 {
		t.Errorf("err %v after %d calls of a; want the failure at once", err, calls)
	}
}

// Every failure counts: one that ends after the deadline, and one in the
// untimed warm-up.
func TestSaturateCountsEveryFailure(t *testing.T) {
	var calls atomic.Int64
	late := closedLoop(context.Background(), 1, 50*time.Millisecond, func(context.Context, int, int) error {
		if calls.Add(1) == 1 {
			time.Sleep(100 * time.Millisecond) // past the deadline
			return errors.New("failed late")
		}
		return nil
	})
	if late.Errors != 1 {
		t.Errorf("a failure ending past the deadline: %d errors counted, want 1", late.Errors)
	}
	calls.Store(0)
	r := saturate(context.Background(), 1, 100*time.Millisecond, func(context.Context, int, int) error {
		if calls.Add(1) == 1 {
			return errors.New("failed while warming up")
		}
		return nil
	})
	if r.Errors != 1 || r.Ops == 0 {
		t.Errorf("a failure in the warm-up: %d errors and %d ops, want 1 error", r.Errors, r.Ops)
	}
}

// A run too short for one timed request at its rate reports an error, not
// a p99 of zero that would meet any target.
func TestOpenLoopWithNothingTimedFails(t *testing.T) {
	r, err := openLoop(context.Background(), 1, 500*time.Millisecond, func(context.Context) error { return nil })
	if err == nil {
		t.Fatalf("result %+v with no operation timed; want an error", r)
	}
}
