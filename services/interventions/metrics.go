package interventions

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/handoff-health/handoff/services/pgdb"
)

// Reminder metrics: created, delivered and failed by kind, and how many are
// due and not delivered, so an operator sees when delivery falls behind.
var (
	meter              = otel.Meter("github.com/handoff-health/handoff/services/interventions")
	remindersCreated   = counter("handoff.reminders.created", "reminders created by the workflows")
	remindersDelivered = counter("handoff.reminders.delivered", "reminders the automation delivered")
	remindersFailed    = counter("handoff.reminders.failed", "reminders whose delivery failed")
)

func counter(name, desc string) metric.Int64Counter {
	c, _ := meter.Int64Counter(name, metric.WithDescription(desc))
	return c
}

func kindAttr(kind string) metric.AddOption {
	return metric.WithAttributes(attribute.String("kind", kind))
}

// dueUndelivered counts the reminders due and not delivered in every
// clinic: SCHEDULED and CLAIMED as stored (a lapsed claim is due again),
// literals that the partial index reminders_undelivered matches.
const dueUndelivered = `SELECT count(*) FROM reminders WHERE state IN (1, 3) AND due_time <= now()`

// observeDue reports the reminders that are due and not yet delivered.
func (s *Server) observeDue() {
	g, err := meter.Int64ObservableGauge("handoff.reminders.due_undelivered", metric.WithDescription("reminders past due and not delivered"))
	if err != nil {
		return
	}
	_, _ = meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		var n int64
		if err := s.pool.QueryRow(pgdb.WithClinic(ctx, pgdb.SystemScope), dueUndelivered).Scan(&n); err == nil {
			o.ObserveInt64(g, n)
		}
		return nil
	}, g)
}
