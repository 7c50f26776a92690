package webhooks

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/telemetry"
)

// resealEvery is how often a running sender looks for signing secrets
// sealed under a key that is no longer the current one. It also looks
// once as it starts, which is when a new key arrives.
const resealEvery = time.Hour

// resealBatch is how many subscriptions one statement reads.
const resealBatch = 100

// Reseal seals again, under the box's current key, every subscription's
// signing secret that only a previous key opens, or that is not sealed at
// all; and it drops rotated secrets whose grace has ended, which nothing
// reads again. A secret that opens with none of the keys is left as it is
// and counted in skipped (its deliveries fail until it is rotated).
// resealed counts the subscriptions changed, one whose rotated secret
// alone was dropped included.
// Several senders may run it at once: each update checks that the row
// still holds what was read.
//
// Retiring a key takes three rollouts, so that no process ever meets a
// secret it cannot open: add the new key as a previous one (every process
// then opens both); make it the current key and the old one previous (the
// senders reseal); once a pass skips none and request ids older than the
// change are forgotten (outbox.DefaultKeepRequestIDs: a retried create
// answers with the secret sealed as it was), drop the old key.
func (s *Sender) Reseal(ctx context.Context) (resealed, skipped int, err error) {
	box := s.cfg.Secrets
	if box == nil {
		return 0, 0, nil
	}
	ctx = pgdb.WithClinic(ctx, pgdb.SystemScope)
	type row struct {
		clinic, id, secret, previous string
		expired                      bool
	}
	var afterClinic, afterID string
	for {
		rows, err := s.cfg.DB.Query(ctx, `SELECT clinic, id, secret, coalesce(previous_secret, ''),
				coalesce(previous_secret_expire_time <= now(), false)
			FROM subscriptions WHERE (clinic, id) > ($1, $2) ORDER BY clinic, id LIMIT $3`, afterClinic, afterID, resealBatch)
		if err != nil {
			return resealed, skipped, fmt.Errorf("webhooks: reseal: read: %w", err)
		}
		batch, err := pgx.CollectRows(rows, func(c pgx.CollectableRow) (row, error) {
			var r row
			return r, c.Scan(&r.clinic, &r.id, &r.secret, &r.previous, &r.expired)
		})
		if err != nil {
			return resealed, skipped, fmt.Errorf("webhooks: reseal: read: %w", err)
		}
		for _, r := range batch {
			name := subscriptionName(r.clinic, r.id)
			secret, changed, err := box.reseal(name, r.secret)
			if err != nil {
				skipped++
				s.cfg.Log.Error("webhook secret not resealed: it opens with none of the configured keys", "subscription", name)
				if r.previous == "" || !r.expired {
					continue
				}
				// The rotation's grace is over, by the clock and not by a
				// key: its secret goes all the same, or it would stay at
				// rest, under a key being retired, for as long as the
				// current one is not rotated.
				secret = r.secret
			}
			previous := r.previous
			if r.previous != "" {
				p, c, err := box.reseal(name, r.previous)
				switch {
				case r.expired:
					previous, changed = "", true
				case err != nil:
					// Only the grace of a rotation is lost: drop it.
					s.cfg.Log.Warn("webhook previous secret dropped: it opens with none of the configured keys", "subscription", name)
					previous, changed = "", true
				default:
					previous, changed = p, changed || c
				}
			}
			if !changed {
				continue
			}
			tag, err := s.cfg.DB.Exec(ctx, `UPDATE subscriptions
				SET secret = $3, previous_secret = nullif($4, ''),
					previous_secret_expire_time = CASE WHEN $4 = '' THEN NULL ELSE previous_secret_expire_time END
				WHERE clinic = $1 AND id = $2 AND secret = $5 AND coalesce(previous_secret, '') = $6`,
				r.clinic, r.id, secret, previous, r.secret, r.previous)
			if err != nil {
				return resealed, skipped, fmt.Errorf("webhooks: reseal %s: %w", name, err)
			}
			resealed += int(tag.RowsAffected())
		}
		if len(batch) < resealBatch {
			return resealed, skipped, nil
		}
		afterClinic, afterID = batch[len(batch)-1].clinic, batch[len(batch)-1].id
	}
}

// resealDue reports whether Reseal is due, and marks it done if so.
func (s *Sender) resealDue(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.resealed.IsZero() && now.Sub(s.resealed) < resealEvery {
		return false
	}
	s.resealed = now
	return true
}

// resealIfDue runs Reseal when it is due and logs what it did.
func (s *Sender) resealIfDue(ctx context.Context) {
	if s.cfg.Secrets == nil || !s.resealDue(time.Now()) {
		return
	}
	n, skipped, err := s.Reseal(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.cfg.Log.Warn("webhook secrets not all resealed", "resealed", n, "skipped", skipped, "error", telemetry.LogSafe(err))
			s.mu.Lock()
			s.resealed = time.Time{} // try again on the next round
			s.mu.Unlock()
		}
		return
	}
	if n > 0 || skipped > 0 {
		// changed counts secrets sealed again and rotated secrets dropped
		// (past their grace, or opening with no key), the latter also
		// beside a current secret skipped.
		s.cfg.Log.Info("webhook secrets resealed under the current key", "changed", n, "skipped", skipped)
	}
}
