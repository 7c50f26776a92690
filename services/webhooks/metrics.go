package webhooks

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/handoff-health/handoff/services/pgdb"
)

// Sender metrics: attempts by outcome, and on each scrape the deliveries
// waiting, those already failed at least once (a receiver in trouble) and
// the dead letters, so an operator sees a receiver that is down before its
// events die.
var (
	meter    = otel.Meter("github.com/handoff-health/handoff/services/webhooks")
	attempts = func() metric.Int64Counter {
		c, _ := meter.Int64Counter("handoff.webhooks.attempts", metric.WithDescription("webhook delivery attempts by outcome"))
		return c
	}()
)

func outcome(o string) metric.AddOption {
	return metric.WithAttributes(attribute.String("outcome", o))
}

// gauges counts the deliveries pending, those of them retrying, and the
// dead letters, each read off its partial index (the states are the
// indexes' literals, PENDING and DEAD, not parameters, which no partial
// index matches): the table keeps 30 days of finished deliveries, which
// every scrape would otherwise read.
var gauges = fmt.Sprintf(`SELECT
	(SELECT count(*) FROM deliveries WHERE state = %[1]d),
	-- not attempts > 0: the claim counts an attempt before it is made, and
	-- a first send under way has not failed
	(SELECT count(*) FROM deliveries WHERE state = %[1]d AND last_error <> ''),
	(SELECT count(*) FROM deliveries WHERE state = %[2]d)`, statePending, stateDead)

// observe registers the gauges that read the deliveries table.
func (s *Sender) observe() {
	pending, err1 := meter.Int64ObservableGauge("handoff.webhooks.pending", metric.WithDescription("webhook deliveries not sent yet, reminders held for their time included"))
	// A try Handoff could not make gives its attempt back (attempts stays
	// 0) but leaves its error: it counts here, so that a sender stuck on
	// its own side shows.
	retrying, err2 := meter.Int64ObservableGauge("handoff.webhooks.retrying", metric.WithDescription("webhook deliveries waiting after a failed attempt or try"))
	dead, err3 := meter.Int64ObservableGauge("handoff.webhooks.dead", metric.WithDescription("webhook deliveries dead-lettered and not replayed"))
	if err1 != nil || err2 != nil || err3 != nil {
		return
	}
	_, _ = meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		var nPending, nRetrying, nDead int64
		if err := s.cfg.DB.QueryRow(pgdb.WithClinic(ctx, pgdb.SystemScope), gauges).Scan(&nPending, &nRetrying, &nDead); err != nil {
			return nil // a failed scrape of these gauges must not fail the rest
		}
		o.ObserveInt64(pending, nPending)
		o.ObserveInt64(retrying, nRetrying)
		o.ObserveInt64(dead, nDead)
		return nil
	}, pending, retrying, dead)
}
