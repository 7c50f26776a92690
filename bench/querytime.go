package main

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// queryClock times one statement of each sample through the span the
// pgdb package wraps every statement in, from sending it (with the
// clinic's scope, in the same round trip) until its last row is read:
// the query's own time. A whole call also pays for gRPC, the token check
// and the audit record's commit, the same at either size, which pulls a
// ratio of whole calls towards 1.
type queryClock struct {
	on     atomic.Bool
	mu     sync.Mutex
	prefix string // the statement timed begins with it
	spent  time.Duration
	n      int
	tp     *sdktrace.TracerProvider
}

// startQueryClock installs the clock as the process's tracer provider,
// recording only statements' spans; stop puts a no-op provider back. The
// services serving the samples must be made after it starts: gRPC's
// handlers take their tracer when they are made.
func startQueryClock() (q *queryClock, stop func()) {
	q = &queryClock{}
	q.tp = sdktrace.NewTracerProvider(sdktrace.WithSampler(q), sdktrace.WithSpanProcessor(q))
	otel.SetTracerProvider(q.tp)
	return q, func() {
		q.on.Store(false)
		otel.SetTracerProvider(noop.NewTracerProvider())
		_ = q.tp.Shutdown(context.Background())
	}
}

// time starts timing the statements that begin with prefix, forgetting
// what was timed before.
func (q *queryClock) time(prefix string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.prefix, q.spent, q.n = prefix, 0, 0
	q.on.Store(true)
}

// take returns the time the statements timed since the last take took,
// and how many there were.
func (q *queryClock) take() (time.Duration, int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	d, n := q.spent, q.n
	q.spent, q.n = 0, 0
	return d, n
}

// ShouldSample records statements' spans while the clock is on, and
// nothing else.
func (q *queryClock) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	if q.on.Load() && p.Name == "db.query" {
		return sdktrace.SamplingResult{Decision: sdktrace.RecordOnly}
	}
	return sdktrace.SamplingResult{Decision: sdktrace.Drop}
}

func (q *queryClock) Description() string { return "bench query clock" }

func (q *queryClock) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

func (q *queryClock) OnEnd(s sdktrace.ReadOnlySpan) {
	var stmt string
	for _, a := range s.Attributes() {
		if a.Key == attribute.Key("db.statement") {
			stmt = a.Value.AsString()
		}
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.prefix != "" && strings.HasPrefix(stmt, q.prefix) {
		q.spent += s.EndTime().Sub(s.StartTime())
		q.n++
	}
}

func (q *queryClock) Shutdown(context.Context) error   { return nil }
func (q *queryClock) ForceFlush(context.Context) error { return nil }
