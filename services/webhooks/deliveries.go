package webhooks

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/timestamppb"

	webhooksv1 "github.com/handoff-health/handoff/gen/go/handoff/webhooks/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/idempotency"
)

func deliveryName(clinic, subscription, id string) string {
	return aip.Name("clinics", clinic, "subscriptions", subscription, "deliveries", id)
}

var deliveryFilter = map[string]aip.FilterField{
	"state":      {Column: "state", Kind: aip.Enum, Enum: aip.EnumLookup(webhooksv1.DeliveryState_value, "DELIVERY_STATE_")},
	"topic":      {Column: "topic", Kind: aip.Enum, Enum: aip.EnumLookup(webhooksv1.Topic_value, "TOPIC_")},
	"resource":   {Column: "resource", Kind: aip.String},
	"event_type": {Column: "event_type", Kind: aip.String},
}

const deliverySelect = `SELECT seq, subscription_id, id, event_type, topic, resource, state, attempts, last_error,
	next_attempt_time, create_time, deliver_time FROM deliveries`

// ListDeliveries implements the API. Deliveries are listed in the order
// they were enqueued, which is the order they are sent in per resource.
func (s *Server) ListDeliveries(ctx context.Context, req *webhooksv1.ListDeliveriesRequest) (*webhooksv1.ListDeliveriesResponse, error) {
	clinic, sub, err := parseSubscription("parent", req.GetParent())
	if err != nil && !isAllSubscriptions(req.GetParent()) {
		return nil, err
	}
	if sub == "" {
		clinic, sub = aip.Clinic(req.GetParent()), "-"
	}
	if err := auth.CheckClinic(ctx, clinic, req.GetParent()); err != nil {
		return nil, err
	}
	f, after, q, err := aip.ListArgs("deliveries", req.GetParent(), req.GetFilter(), req.GetPageToken(), deliveryFilter)
	if err != nil {
		return nil, err
	}
	var afterSeq int64
	if after != "" {
		if afterSeq, err = strconv.ParseInt(after, 10, 64); err != nil {
			return nil, apperr.Field("page_token", "malformed")
		}
	}
	size := aip.PageSize(req.GetPageSize())
	where, args := f.SQL(5)
	rows, err := s.db.Query(ctx, deliverySelect+` WHERE clinic = $1 AND ($2 = '-' OR subscription_id = $2)
		AND seq > $3 AND `+where+` ORDER BY seq LIMIT $4`, append([]any{clinic, sub, afterSeq, size + 1}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("list deliveries: %w", err)
	}
	type row struct {
		seq int64
		d   *webhooksv1.Delivery
	}
	items, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		seq, d, err := scanDelivery(clinic, r)
		return row{seq, d}, err
	})
	if err != nil {
		return nil, fmt.Errorf("list deliveries: %w", err)
	}
	if sub != "-" && len(items) == 0 {
		// An empty page of a subscription that does not exist (a mistyped
		// id) would read as "nothing was sent".
		var exists bool
		if err := s.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM subscriptions WHERE clinic = $1 AND id = $2)`,
			clinic, sub).Scan(&exists); err != nil {
			return nil, fmt.Errorf("list deliveries: %w", err)
		}
		if !exists {
			return nil, apperr.NotFound(req.GetParent())
		}
	}
	items, next := aip.Page(items, size, q, func(r row) string { return strconv.FormatInt(r.seq, 10) })
	resp := &webhooksv1.ListDeliveriesResponse{NextPageToken: next}
	for _, r := range items {
		resp.Deliveries = append(resp.Deliveries, r.d)
	}
	return resp, nil
}

// isAllSubscriptions reports whether parent is `clinics/{c}/subscriptions/-`.
func isAllSubscriptions(parent string) bool {
	c := aip.Clinic(parent)
	return c != "" && parent == aip.Name("clinics", c, "subscriptions", "-")
}

// ReplayDelivery implements the API: a dead letter goes back in line with
// a fresh count of attempts. It keeps its id and its place in the order,
// so it goes before any later event of its resource that is still waiting.
// It is due at once by the database's clock, which the sender's claim
// reads: by this process's, running ahead, it would wait out the skew
// while its resource's later events wait behind it.
func (s *Server) ReplayDelivery(ctx context.Context, req *webhooksv1.ReplayDeliveryRequest) (*webhooksv1.Delivery, error) {
	ids, err := aip.Parse(req.GetName(), "clinics", "subscriptions", "deliveries")
	if err != nil {
		return nil, apperr.Field("name", "%v", err)
	}
	clinic, sub, id := ids[0], ids[1], ids[2]
	if err := auth.CheckClinic(ctx, clinic, req.GetName()); err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.db, clinic, svc+"ReplayDelivery", req.GetRequestId(), req, newDelivery,
		func(tx pgx.Tx) (*webhooksv1.Delivery, error) {
			cur, err := readDelivery(ctx, tx, clinic, sub, id, true)
			if err != nil {
				return nil, err
			}
			if cur.GetState() != webhooksv1.DeliveryState_DELIVERY_STATE_DEAD {
				return nil, apperr.InvalidTransition(cur.GetName(), stateName(cur.GetState()), "PENDING")
			}
			if _, err := tx.Exec(ctx, `UPDATE deliveries SET state = $4, attempts = 0, own_failures = 0, replays = replays + 1, record_unsure = false, next_attempt_time = now(), finish_time = NULL,
				first_try_time = NULL, refusals = 0, first_refusal_time = NULL, last_error = ''
				WHERE clinic = $1 AND subscription_id = $2 AND id = $3`, clinic, sub, id, statePending); err != nil {
				return nil, fmt.Errorf("replay delivery: %w", err)
			}
			return readDelivery(ctx, tx, clinic, sub, id, false)
		})
}

func stateName(st webhooksv1.DeliveryState) string {
	return st.String()[len("DELIVERY_STATE_"):]
}

func newDelivery() *webhooksv1.Delivery { return &webhooksv1.Delivery{} }

func readDelivery(ctx context.Context, tx pgx.Tx, clinic, sub, id string, lock bool) (*webhooksv1.Delivery, error) {
	q := deliverySelect + ` WHERE clinic = $1 AND subscription_id = $2 AND id = $3`
	if lock {
		q += ` FOR UPDATE`
	}
	rows, err := tx.Query(ctx, q, clinic, sub, id)
	if err != nil {
		return nil, fmt.Errorf("read delivery: %w", err)
	}
	d, err := pgx.CollectExactlyOneRow(rows, func(r pgx.CollectableRow) (*webhooksv1.Delivery, error) {
		_, d, err := scanDelivery(clinic, r)
		return d, err
	})
	if err == pgx.ErrNoRows {
		return nil, apperr.NotFound(deliveryName(clinic, sub, id))
	}
	if err != nil {
		return nil, fmt.Errorf("read delivery: %w", err)
	}
	return d, nil
}

func scanDelivery(clinic string, r pgx.CollectableRow) (int64, *webhooksv1.Delivery, error) {
	var (
		seq                      int64
		sub, id, event, resource string
		topic, state             int16
		attempts                 int32
		lastErr                  string
		next, created            time.Time
		delivered                *time.Time
	)
	if err := r.Scan(&seq, &sub, &id, &event, &topic, &resource, &state, &attempts, &lastErr, &next, &created, &delivered); err != nil {
		return 0, nil, err
	}
	d := &webhooksv1.Delivery{
		Name: deliveryName(clinic, sub, id), EventType: event, Topic: webhooksv1.Topic(topic), Resource: resource,
		State: webhooksv1.DeliveryState(state), AttemptCount: attempts, LastError: lastErr,
		CreateTime: timestamppb.New(created),
	}
	if d.State == webhooksv1.DeliveryState_DELIVERY_STATE_PENDING {
		d.NextAttemptTime = timestamppb.New(next)
	}
	if delivered != nil {
		d.DeliverTime = timestamppb.New(*delivered)
	}
	return seq, d, nil
}
