package main

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// result is one measured load run.
type result struct {
	Ops        int
	Errors     int
	Duration   time.Duration
	Throughput float64 // operations per second
	P50, P99   time.Duration
}

// closedLoop runs op from conc workers back to back for d and measures
// throughput and latency: the saturation point at that concurrency.
func closedLoop(ctx context.Context, conc int, d time.Duration, op func(ctx context.Context, worker, i int) error) result {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var mu sync.Mutex
	var lat []time.Duration
	var errs atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for i := 0; ctx.Err() == nil; i++ {
				t0 := time.Now()
				err := op(context.WithoutCancel(ctx), w, i)
				if ctx.Err() != nil && err != nil {
					break // cut off by the deadline, not a failure
				}
				if err != nil {
					errs.Add(1)
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return summarize(lat, int(errs.Load()), time.Since(start))
}

// openLoop starts op at a fixed rate for d, whatever the latency, and
// measures latency: how the system behaves below saturation.
func openLoop(ctx context.Context, rate float64, d time.Duration, op func(ctx context.Context, i int) error) result {
	var mu sync.Mutex
	var lat []time.Duration
	var errs atomic.Int64
	var wg sync.WaitGroup
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now()
	n := int(d / interval)
	for i := 0; i < n; i++ {
		due := start.Add(time.Duration(i) * interval)
		if w := time.Until(due); w > 0 {
			time.Sleep(w)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			if err := op(ctx, i); err != nil {
				errs.Add(1)
				return
			}
			l := time.Since(t0)
			mu.Lock()
			lat = append(lat, l)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return summarize(lat, int(errs.Load()), time.Since(start))
}

func summarize(lat []time.Duration, errs int, d time.Duration) result {
	slices.Sort(lat)
	r := result{Ops: len(lat), Errors: errs, Duration: d}
	if len(lat) > 0 {
		r.Throughput = float64(len(lat)) / d.Seconds()
		r.P50 = lat[len(lat)*50/100]
		r.P99 = lat[min(len(lat)-1, len(lat)*99/100)]
	}
	return r
}

// latencies times n sequential calls of op and returns p50 and p99.
func latencies(ctx context.Context, n int, op func(ctx context.Context, i int) error) (result, error) {
	lat := make([]time.Duration, 0, n)
	start := time.Now()
	for i := 0; i < n; i++ {
		t0 := time.Now()
		if err := op(ctx, i); err != nil {
			return result{}, err
		}
		lat = append(lat, time.Since(t0))
	}
	return summarize(lat, 0, time.Since(start)), nil
}
