// Package outbox writes the events that announce every change, in the same
// transaction as the change, and hands them to a relay that delivers them
// (to Temporal, to webhooks) at least once and in order within each family.
package outbox

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/handoff-health/handoff/services/pgdb"
)

// Event is one change to announce. Payload is a snapshot or a small message
// about the change; consumers that leave the clinic get identifiers only.
type Event struct {
	Clinic   string
	Type     string // for example "handoff.families.v1.family.created"
	Resource string
	Payload  proto.Message
}

// Write appends e to the outbox within tx.
func Write(ctx context.Context, tx pgx.Tx, e Event) error {
	a, err := anypb.New(e.Payload)
	if err != nil {
		return fmt.Errorf("outbox: wrap payload: %w", err)
	}
	b, err := proto.Marshal(a)
	if err != nil {
		return fmt.Errorf("outbox: encode payload: %w", err)
	}
	carrier := propagation.MapCarrier{}
	otel.GetTextMapPropagator().Inject(ctx, carrier)
	var trace any // NULL without a trace
	if len(carrier) > 0 {
		trace = map[string]string(carrier)
	}
	// A record's creation names it: the audit record of the call that
	// creates it, waiting for its name, goes with this (pgdb.ExecNaming).
	exec := tx.Exec
	if strings.HasSuffix(e.Type, ".created") {
		exec = func(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
			return pgdb.ExecNaming(ctx, tx, e.Resource, sql, args...)
		}
	}
	if _, err := exec(ctx, `INSERT INTO outbox (clinic, event_type, resource, payload, trace_context, generation) VALUES ($1, $2, $3, $4, $5, $6)`,
		e.Clinic, e.Type, e.Resource, b, trace, Generation); err != nil {
		return fmt.Errorf("outbox: insert %s: %w", e.Type, err)
	}
	return nil
}

// Generation numbers the releases whose consumers of the outbox (the
// workflow dispatcher, the webhook sink) know a new event type or payload,
// or do something new with one: raise it with such a change. Every event
// carries the generation that wrote it, and a relay of an older one leaves
// the event to a newer relay for a while (Relay.NewerGrace): during a
// rolling update, replicas of both releases take turns at delivering, and
// an older one would pass over, as delivered, what it does not know.
// Only relays that have this check leave anything: the release that brought
// it is generation 0, like every event written before, and protects the
// rollouts after it, not its own.
//
// Raised so far for:
//   - 1: a meeting's outcome with nothing accepted also gives back the
//     places held for it (the dispatcher starts CancelledHolds).
//   - 2: a completed referral of the loved one's treatment ends the
//     family's boundary follow-up (the dispatcher starts TreatmentEntered).
//   - 3: referral.entered_in_error, which the dispatcher passes to the
//     MAT intake as a cancellation and the webhook sink routes.
//   - 4: referral.follow_up_recorded and follow_up_retracted, which the
//     dispatcher does not pass to the MAT intake as transitions (an older
//     one would).
//   - 5: Intervention.published, by which the webhook sink tells no one
//     of a draft never scheduled (an older one would tell the EHR).
//   - 6: family.closed, on which the dispatcher starts FamilyClosed (an
//     older one would pass it over, and the closed family's meetings and
//     reminders would go on). The families database writes it (migration
//     0009), at generation 6 whatever this constant says later.
//   - 7: family.treatment_entered, on which the dispatcher starts
//     TreatmentEntered for the family (an older one would pass it over,
//     and the boundary follow-up would go on for someone in treatment).
//     The families database writes it (migration 0012), at generation 7.
//     The same release gives back the places held for a meeting whose
//     outcome accepted support services alone (CancelledHolds), which an
//     older dispatcher left held: its events are generation 7 too.
const Generation = 7

// Stored is an event as read back from the outbox. DecodeErr is set when the
// payload cannot be decoded (its envelope, or a message of a type this
// binary knows): such an event can never be delivered.
type Stored struct {
	ID        int64
	Clinic    string
	Type      string
	Resource  string
	Payload   *anypb.Any
	DecodeErr error
	// Trace is the trace context of the request that wrote the event.
	Trace map[string]string
	// Created is when the change was committed with its event (the
	// transaction's time), not when a relay got to it.
	Created time.Time
	// Generation is that of the release that wrote the event (see
	// Generation).
	Generation int
	// Held says the consumer that read it waits, after a failure, before
	// it tries the event again (its retry time lies ahead, by the
	// database's clock).
	Held bool

	// The payload's message, decoded once by Pending for the relay's lane
	// and every consumer.
	msg    proto.Message
	msgErr error
	parsed bool
}

// Message returns the payload's message. An event read by Pending was
// decoded there; one made otherwise is decoded now. An error means the
// payload's type is unknown to this binary (or there is no payload).
func (e Stored) Message() (proto.Message, error) {
	if e.parsed {
		return e.msg, e.msgErr
	}
	if e.Payload == nil {
		return nil, errors.New("outbox: no payload")
	}
	return e.Payload.UnmarshalNew()
}

// Context returns ctx continuing the trace of the request that wrote e.
func (e Stored) Context(ctx context.Context) context.Context {
	if len(e.Trace) == 0 {
		return ctx
	}
	return otel.GetTextMapPropagator().Extract(ctx, propagation.MapCarrier(e.Trace))
}

// Consumer names a reader of the outbox with a delivery mark of its own:
// Dispatch (the zero value: Temporal, the mark delivered_at) or Sink (the
// webhook subscriptions, sink_delivered_at). Each goes at its own pace, so
// that one's outage holds back none of the other's events.
type Consumer string

const (
	Dispatch Consumer = ""
	Sink     Consumer = "sink"
)

// column is the consumer's delivery mark, one of a fixed set: never taken
// from input. Another consumer is a programming error: it would share the
// dispatch's mark under a lock of its own.
func (c Consumer) column() string {
	switch c {
	case Dispatch:
		return "delivered_at"
	case Sink:
		return "sink_delivered_at"
	}
	panic(fmt.Sprintf("outbox: unknown consumer %q", string(c)))
}

// retry names the consumer's columns that keep its failures with an
// event: how many, and when it tries the event again.
func (c Consumer) retry() (attempts, at string) {
	if c == Sink {
		return "sink_attempts", "sink_retry_at"
	}
	_ = c.column() // an unknown consumer panics here too
	return "attempts", "retry_at"
}

// PendingFor returns up to limit events consumer c has not taken after the
// event with id after (0 for the oldest), oldest first.
func PendingFor(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, c Consumer, after int64, limit int) ([]Stored, error) {
	_, retryAt := c.retry()
	rows, err := q.Query(ctx, `SELECT id, clinic, event_type, resource, payload, trace_context, create_time, generation,
		`+retryAt+` IS NOT NULL AND `+retryAt+` > now() FROM outbox
		WHERE `+c.column()+` IS NULL AND id > $1 ORDER BY id LIMIT $2`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("outbox: pending: %w", err)
	}
	defer rows.Close()
	var out []Stored
	for rows.Next() {
		var s Stored
		var b []byte
		if err := rows.Scan(&s.ID, &s.Clinic, &s.Type, &s.Resource, &b, &s.Trace, &s.Created, &s.Generation, &s.Held); err != nil {
			return nil, fmt.Errorf("outbox: scan: %w", err)
		}
		s.Payload = &anypb.Any{}
		if err := proto.Unmarshal(b, s.Payload); err != nil {
			s.DecodeErr = fmt.Errorf("outbox: decode %d: %w", s.ID, err)
		} else {
			s.msg, s.msgErr = s.Payload.UnmarshalNew()
			s.parsed = true
			if s.msgErr != nil && !errors.Is(s.msgErr, protoregistry.NotFound) {
				// A type this binary knows whose bytes do not decode will
				// not decode on any try: retried, it would hold back its
				// family's later events for good. (A type it does not
				// know is a newer release's, and is not an error here.)
				s.DecodeErr = fmt.Errorf("outbox: decode %d (%s): %w", s.ID, s.Payload.GetTypeUrl(), s.msgErr)
			}
		}
		out = append(out, s)
	}
	return out, rows.Err()
}
