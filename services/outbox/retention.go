package outbox

import (
	"context"
	"fmt"
	"time"

	"github.com/handoff-health/handoff/services/idempotency"
)

// Retention defaults: how long a delivered event and a request id are kept.
const (
	// DefaultKeep leaves a week to look into what was delivered. Webhook
	// deliveries, which dedupe redelivered events by outbox id, are kept
	// longer (webhooks.Keep), so a pruned event can never come again.
	DefaultKeep = 7 * 24 * time.Hour
	// DefaultKeepRequestIDs is well past the longest a call is retried:
	// the workflows' activities give up after a day.
	DefaultKeepRequestIDs = 30 * 24 * time.Hour
)

// PruneEvery is how often the relay (and the webhook sender) prunes, and
// pruneBatch and pruneBudget bound one pruning: each transaction is short,
// and a backlog is worked off over several prunings.
const (
	PruneEvery  = time.Minute
	pruneBatch  = 1000
	pruneBudget = 3 * time.Second
)

// InBatches runs each forget, which deletes up to limit rows and says how
// many it deleted, until it deletes fewer than a batch or the pruning's
// time is spent. Bounded by time, not by a count of batches: a count made
// a ceiling on the rows pruned a minute (ten thousand), under which a
// table written faster grew for good. The time is short: the relay and
// the sender prune between polls, and poll nothing meanwhile.
func InBatches(forgets ...func(limit int) (int64, error)) error {
	return inBatches(time.Now, pruneBudget, forgets...)
}

func inBatches(now func() time.Time, budget time.Duration, forgets ...func(limit int) (int64, error)) error {
	for _, forget := range forgets {
		// Each its share, so that one table's backlog does not starve
		// the others' pruning.
		end := now().Add(budget / time.Duration(len(forgets)))
		for {
			n, err := forget(pruneBatch)
			if err != nil {
				return err
			}
			if n < pruneBatch || !now().Before(end) {
				break
			}
		}
	}
	return nil
}

// Forget deletes up to limit events delivered (or set aside) before
// before, oldest first, and returns how many it deleted. Their payloads
// are records under 42 CFR Part 2, kept no longer than they serve.
//
// With awaitSink, an event the Sink consumer has not taken yet is kept,
// however old its dispatch.
func Forget(ctx context.Context, q idempotency.Execer, before time.Time, limit int, awaitSink bool) (int64, error) {
	tag, err := q.Exec(ctx, `DELETE FROM outbox WHERE id IN (
		SELECT id FROM outbox WHERE delivered_at < $1 AND (NOT $3 OR sink_delivered_at IS NOT NULL)
		ORDER BY delivered_at LIMIT $2)`, before, limit, awaitSink)
	if err != nil {
		return 0, fmt.Errorf("outbox: forget delivered events: %w", err)
	}
	return tag.RowsAffected(), nil
}

// prune forgets delivered events and request ids past their retention, at
// most once every PruneEvery. It runs in the relay's poll, under its lock:
// one replica prunes at a time.
func (r *Relay) prune(ctx context.Context, q idempotency.Execer, now time.Time) error {
	if now.Sub(r.pruned) < PruneEvery {
		return nil
	}
	r.pruned = now
	keep, keepIDs := r.Keep, r.KeepRequestIDs
	if keep <= 0 {
		keep = DefaultKeep
	}
	if keepIDs <= 0 {
		keepIDs = DefaultKeepRequestIDs
	}
	return InBatches(
		func(limit int) (int64, error) { return Forget(ctx, q, now.Add(-keep), limit, r.AwaitSink) },
		func(limit int) (int64, error) { return idempotency.Forget(ctx, q, now.Add(-keepIDs), limit) },
	)
}
