package outbox

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/handoff-health/handoff/services/pgdb"
)

// Relay delivers a service's outbox events, in order, at least once. Only
// one relay per schema delivers at a time (an advisory lock), so several
// replicas of a service can run a relay each without reordering events.
type Relay struct {
	DB       *pgdb.DB
	Deliver  func(ctx context.Context, e Stored) error
	Log      *slog.Logger
	Interval time.Duration // between polls; default 500 ms
	Batch    int           // events per poll; default 100
}

// Run delivers until ctx ends.
func (r *Relay) Run(ctx context.Context) {
	r.observe()
	interval := r.Interval
	if interval == 0 {
		interval = 500 * time.Millisecond
	}
	for {
		n, err := r.Once(ctx)
		if err != nil && ctx.Err() == nil {
			r.Log.Warn("outbox delivery paused", "error", err.Error())
		}
		wait := interval
		if err == nil && n > 0 {
			wait = 0 // more may be waiting
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// Once delivers the pending events it can, oldest first, and stops at the
// first failure so that later events never overtake it. It returns how many
// it delivered.
func (r *Relay) Once(ctx context.Context) (int, error) {
	conn, err := r.DB.Pool.Acquire(ctx)
	if err != nil {
		return 0, fmt.Errorf("outbox relay: acquire: %w", err)
	}
	defer conn.Release()
	// The relay serves every clinic.
	if _, err := conn.Exec(ctx, `SELECT set_config('handoff.clinic', $1, false)`, pgdb.SystemScope); err != nil {
		return 0, fmt.Errorf("outbox relay: scope: %w", err)
	}
	var leader bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext('handoff-outbox-' || current_schema()))`).Scan(&leader); err != nil {
		return 0, fmt.Errorf("outbox relay: lock: %w", err)
	}
	if !leader {
		return 0, nil
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtext('handoff-outbox-' || current_schema()))`) //nolint:errcheck
	batch := r.Batch
	if batch == 0 {
		batch = 100
	}
	events, err := Pending(ctx, conn, batch)
	if err != nil {
		return 0, err
	}
	for i, e := range events {
		if e.DecodeErr != nil {
			// Retrying cannot help an event that does not decode; it must not
			// hold back every event after it. It is set aside with its error
			// for an operator (delivered_at set, last_error says why).
			r.Log.Error("outbox event set aside", "id", e.ID, "type", e.Type, "error", e.DecodeErr.Error())
			if _, err := conn.Exec(ctx, `UPDATE outbox SET delivered_at = now(), last_error = $2 WHERE id = $1`,
				e.ID, "set aside: "+e.DecodeErr.Error()); err != nil {
				return i, fmt.Errorf("outbox relay: set aside %d: %w", e.ID, err)
			}
			continue
		}
		if err := r.Deliver(e.Context(ctx), e); err != nil {
			if _, uerr := conn.Exec(ctx, `UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1`, e.ID, err.Error()); uerr != nil {
				return i, fmt.Errorf("outbox relay: record failure: %w", uerr)
			}
			return i, fmt.Errorf("outbox relay: deliver %d (%s): %w", e.ID, e.Type, err)
		}
		if _, err := conn.Exec(ctx, `UPDATE outbox SET delivered_at = now(), attempts = attempts + 1 WHERE id = $1`, e.ID); err != nil {
			return i, fmt.Errorf("outbox relay: mark %d: %w", e.ID, err)
		}
	}
	return len(events), nil
}

// observe reports how far delivery lags: events waiting and the age of the
// oldest, per schema, on each metrics scrape.
func (r *Relay) observe() {
	m := otel.Meter("github.com/handoff-health/handoff/services/outbox")
	pending, err1 := m.Int64ObservableGauge("handoff.outbox.pending", metric.WithDescription("outbox events not delivered yet"))
	age, err2 := m.Float64ObservableGauge("handoff.outbox.oldest_pending_age", metric.WithUnit("s"),
		metric.WithDescription("age of the oldest undelivered outbox event"))
	if err1 != nil || err2 != nil {
		return
	}
	_, _ = m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		ctx = pgdb.WithClinic(ctx, pgdb.SystemScope)
		var n int64
		var oldest float64
		if err := r.DB.QueryRow(ctx, `SELECT count(*), coalesce(extract(epoch FROM now() - min(create_time)), 0)
			FROM outbox WHERE delivered_at IS NULL`).Scan(&n, &oldest); err != nil {
			return nil // a failed scrape of one gauge must not fail the rest
		}
		schema := attribute.String("schema", r.DB.Pool.Config().ConnConfig.RuntimeParams["search_path"])
		o.ObserveInt64(pending, n, metric.WithAttributes(schema))
		o.ObserveFloat64(age, oldest, metric.WithAttributes(schema))
		return nil
	}, pending, age)
}
