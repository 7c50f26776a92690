package webhooks

import (
	"context"
	"fmt"
	"time"

	"github.com/handoff-health/handoff/services/idempotency"
	"github.com/handoff-health/handoff/services/outbox"
	"github.com/handoff-health/handoff/services/pgdb"
)

// Keep is how long a finished delivery (delivered, dead or withdrawn) and
// a sink failure are kept: long enough to replay a dead letter after a
// month's outage. It is longer than the outbox keeps a delivered event
// (outbox.DefaultKeep): deliveries dedupe redelivered events by their
// outbox id, and an event deleted from the outbox cannot come again.
const Keep = 30 * 24 * time.Hour

var _ = outbox.DefaultKeep // Keep must stay longer; see its comment

// finishedAt is when a finished delivery finished; rows finished before
// finish_time was recorded count from their last attempt. The index
// deliveries_finished is on this expression.
const finishedAt = `COALESCE(finish_time, GREATEST(create_time, next_attempt_time))`

// prune deletes, at most once every pruneEvery, finished deliveries and
// sink failures older than Keep, and request ids older than
// outbox.DefaultKeepRequestIDs (a stored CreateSubscription answer holds
// the signing secret). Several senders may prune at once: each deletes
// what is left.
func (s *Sender) prune(ctx context.Context, now time.Time) error {
	s.mu.Lock()
	due := now.Sub(s.pruned) >= outbox.PruneEvery
	if due {
		s.pruned = now
	}
	s.mu.Unlock()
	if !due || ctx.Err() != nil {
		return nil
	}
	ctx = pgdb.WithClinic(ctx, pgdb.SystemScope)
	err := outbox.InBatches(
		func(limit int) (int64, error) {
			// Counted from when the delivery finished, not from its event:
			// a reminder's delivery waits for its due time, and a dead
			// letter stays replayable for all of Keep.
			// The outer condition is checked again on the row as it is
			// when locked: a dead letter replayed meanwhile is pending and
			// stays.
			tag, err := s.cfg.DB.Exec(ctx, `DELETE FROM deliveries WHERE seq IN (
				SELECT seq FROM deliveries WHERE state <> 1 AND `+finishedAt+` < $1 ORDER BY `+finishedAt+` LIMIT $2)
				AND state <> 1 AND `+finishedAt+` < $1`, now.Add(-Keep), limit)
			return tag.RowsAffected(), err
		},
		func(limit int) (int64, error) {
			tag, err := s.cfg.DB.Exec(ctx, `DELETE FROM sink_failures WHERE (source, outbox_id) IN (
				SELECT source, outbox_id FROM sink_failures WHERE create_time < $1 ORDER BY create_time LIMIT $2)`, now.Add(-Keep), limit)
			return tag.RowsAffected(), err
		},
		func(limit int) (int64, error) {
			return idempotency.Forget(ctx, s.cfg.DB, now.Add(-outbox.DefaultKeepRequestIDs), limit)
		},
	)
	if err != nil {
		return fmt.Errorf("webhooks: prune: %w", err)
	}
	return nil
}
