package webhooks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"google.golang.org/protobuf/proto"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	webhooksv1 "github.com/handoff-health/handoff/gen/go/handoff/webhooks/v1"
	"github.com/handoff-health/handoff/services/consentgate"
	"github.com/handoff-health/handoff/services/outbox"
	"github.com/handoff-health/handoff/services/pgdb"
)

// Sink turns outbox events into deliveries. A relay of each service's
// outbox calls it for every event, as the outbox's Sink consumer, apart
// from the Temporal dispatch; an error makes the relay retry the event,
// and a retried event enqueues nothing twice. An event that can
// never be enqueued (its failure is deterministic) is set aside in
// sink_failures instead, so that it cannot hold back every later event.
type Sink struct {
	// DB is the webhooks schema.
	DB *pgdb.DB
	// Log receives identifiers of events set aside (default slog.Default).
	Log *slog.Logger
}

// For returns the function the relay of the outbox in schema source calls.
func (k *Sink) For(source string) func(ctx context.Context, e outbox.Stored) error {
	return func(ctx context.Context, e outbox.Stored) error {
		_, err := k.Enqueue(ctx, source, e)
		if err == nil || !permanent(err) {
			return err // transient (the database is away): the relay retries
		}
		return k.setAside(ctx, source, e, err)
	}
}

// permanentError is an enqueue failure that retrying cannot cure.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// permanent reports whether err will recur however often the event is
// retried: the payload does not encode, or PostgreSQL refuses the values
// themselves (data exceptions, program limits such as an index row too
// large, NOT NULL and CHECK violations). Connection failures, timeouts,
// serialization failures and foreign keys (a subscription deleted
// meanwhile) are transient.
func permanent(err error) bool {
	var pe *permanentError
	if errors.As(err, &pe) {
		return true
	}
	var pg *pgconn.PgError
	if !errors.As(err, &pg) {
		return false
	}
	switch {
	case strings.HasPrefix(pg.Code, "22"), strings.HasPrefix(pg.Code, "54"):
		return true
	case pg.Code == "23502", pg.Code == "23514":
		return true
	}
	return false
}

// reasonCode is a short, data-free name for why an event was set aside.
func reasonCode(err error) string {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return "sqlstate " + pg.Code
	}
	return "encode"
}

// clean makes s storable as PostgreSQL text.
func clean(s string, limit int) string {
	s = strings.ReplaceAll(strings.ToValidUTF8(s, "\ufffd"), "\x00", "")
	if len(s) > limit {
		s = strings.ToValidUTF8(s[:limit], "")
	}
	return s
}

// setAside records that e could not be enqueued: its outbox id and why,
// never its payload or the values refused. The event counts as handled; an operator finds
// it in sink_failures.
func (k *Sink) setAside(ctx context.Context, source string, e outbox.Stored, cause error) error {
	log := k.Log
	if log == nil {
		log = slog.Default()
	}
	clinic := clean(e.Clinic, 200)
	if _, err := k.DB.Exec(pgdb.WithClinic(ctx, clinic), `INSERT INTO sink_failures (clinic, source, outbox_id, event_type, error)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (source, outbox_id) DO UPDATE SET error = EXCLUDED.error, failure_count = sink_failures.failure_count + 1`,
		// The reason code, not the message: PostgreSQL quotes the values it
		// refuses, and they may be health data.
		clinic, source, e.ID, clean(e.Type, 200), reasonCode(cause)); err != nil {
		return fmt.Errorf("webhooks: set aside %s event %d: %w", source, e.ID, err)
	}
	log.Error("webhook event set aside", "source", source, "outbox_id", e.ID, "event_type", clean(e.Type, 200),
		"reason", reasonCode(cause))
	return nil
}

// route is what an event means for subscribers.
type route struct {
	// topics the event is published under, in order of preference: a
	// subscription to several of them gets one delivery, under the first.
	topics []webhooksv1.Topic
	// notBefore holds a delivery back until then (a reminder's due time).
	notBefore *time.Time
	// withdraw marks the resource's pending deliveries of this topic as
	// no longer to be sent.
	withdraw webhooksv1.Topic
}

const (
	referralEvents     = "handoff.referrals.v1.referral."
	interventionEvents = "handoff.interventions.v1.intervention."
	reminderEvents     = "handoff.interventions.v1.reminder."
)

// routeOf maps an event to topics. Referral changes are REFERRAL_CHANGED;
// those that book, settle or pause an intake appointment are
// APPOINTMENT_CHANGED too, as are the intervention changes that change
// its appointment. A new reminder
// is REMINDER_DUE at its due time, withdrawn once the reminder is
// delivered, failed or cancelled. generation is the outbox generation of
// the release that wrote the event (outbox.Generation).
func routeOf(eventType string, msg proto.Message, generation int) route {
	switch {
	case strings.HasPrefix(eventType, referralEvents):
		r := route{topics: []webhooksv1.Topic{webhooksv1.Topic_TOPIC_REFERRAL_CHANGED}}
		ref, _ := msg.(*referralsv1.Referral)
		switch strings.TrimPrefix(eventType, referralEvents) {
		case "scheduled":
			r.topics = append(r.topics, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED)
		case "completed", "no_show", "cancelled", "on_hold", "entered_in_error":
			if ref.GetIntakeAppointment() != nil {
				r.topics = append(r.topics, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED)
			}
		}
		return r
	case strings.HasPrefix(eventType, interventionEvents):
		switch strings.TrimPrefix(eventType, interventionEvents) {
		case "check_in_recorded", "checklist_updated", "details_updated":
			// They leave the appointment as it was. A check-in follows only
			// a meeting that ended without a yes: its notification would
			// tell the EHR the loved one refused, which the appointment
			// leaves out (consentgate.Appointment).
			return route{}
		}
		// Events written before generation 5 carry no published: they
		// are routed as they were then.
		if iv, ok := msg.(*interventionsv1.Intervention); ok && generation >= 5 && !iv.GetPublished() &&
			(iv.GetState() == interventionsv1.InterventionState_INTERVENTION_STATE_DRAFT ||
				iv.GetState() == interventionsv1.InterventionState_INTERVENTION_STATE_CANCELLED) {
			// A draft never scheduled is no appointment yet, and its
			// cancellation takes none off: a meeting proposed after one
			// that ended without a yes, or withdrawn after a yes, would
			// tell the EHR how the loved one answered.
			return route{}
		}
		return route{topics: []webhooksv1.Topic{webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED}}
	case eventType == reminderEvents+"created":
		r := route{topics: []webhooksv1.Topic{webhooksv1.Topic_TOPIC_REMINDER_DUE}}
		if rem, ok := msg.(*interventionsv1.Reminder); ok && rem.GetDueTime() != nil {
			due := rem.GetDueTime().AsTime()
			r.notBefore = &due
		}
		return r
	case eventType == reminderEvents+"delivered", eventType == reminderEvents+"failed", eventType == reminderEvents+"cancelled":
		return route{withdraw: webhooksv1.Topic_TOPIC_REMINDER_DUE}
	}
	return route{}
}

// Enqueue records one delivery of e for every subscription of e's clinic
// to one of its topics, in one statement, and returns how many it added.
// A redelivered event adds none: deliveries are unique per source, outbox
// id and subscription.
func (k *Sink) Enqueue(ctx context.Context, source string, e outbox.Stored) (int64, error) {
	if e.Payload == nil || e.Clinic == "" {
		return 0, nil
	}
	// An event whose payload type is unknown here still announces its
	// resource; it only cannot be disclosed in full.
	msg, _ := e.Message()
	r := routeOf(e.Type, msg, e.Generation)
	ctx = pgdb.WithClinic(ctx, e.Clinic)
	if r.withdraw != webhooksv1.Topic_TOPIC_UNSPECIFIED {
		// Pending deliveries and dead letters alike: a dead letter replayed
		// after the reminder was handled would send it stale. The states
		// (1 PENDING, 3 DEAD) are literals so that the partial index
		// deliveries_open_resource matches; a withdrawn delivery keeps no
		// payload.
		if _, err := k.DB.Exec(ctx, `UPDATE deliveries SET state = $4, payload = NULL, finish_time = now()
			WHERE clinic = $1 AND resource = $2 AND topic = $3 AND state IN (1, 3)`,
			e.Clinic, e.Resource, int16(r.withdraw), stateWithdrawn); err != nil {
			return 0, fmt.Errorf("webhooks: withdraw %s deliveries: %w", e.Type, err)
		}
	}
	if len(r.topics) == 0 {
		return 0, nil
	}
	topics := make([]int16, len(r.topics))
	for i, t := range r.topics {
		topics[i] = int16(t)
	}
	// Only a payload the sender may disclose is kept (see informationOf);
	// any other goes out with identifiers only.
	var payload []byte
	if _, ok := informationOf(msg); ok {
		var err error
		if payload, err = proto.Marshal(e.Payload); err != nil {
			return 0, &permanentError{fmt.Errorf("webhooks: encode %s payload: %w", e.Type, err)}
		}
	}
	// The delivery's time is the change's (the outbox row's), not the
	// relay's: a relay held up for hours must not stamp its notifications
	// with the hour it caught up.
	var created *time.Time
	if !e.Created.IsZero() {
		created = &e.Created
	}
	// A member's own referral is asked of the member's consent (member_id).
	// A referral's event whose payload this binary cannot read may be a
	// member's: NULL, unknown, as for deliveries enqueued before the
	// column, which the sender does not take for the loved one's.
	member := new(string)
	if ref, ok := msg.(*referralsv1.Referral); ok {
		*member = consentgate.ReferralPatient(ref).Member
	} else if strings.HasPrefix(e.Type, referralEvents) {
		member = nil
	}
	tag, err := k.DB.Exec(ctx, `INSERT INTO deliveries (clinic, subscription_id, id, source, outbox_id, event_type,
			topic, resource, family, payload, next_attempt_time, create_time, member_id)
		SELECT s.clinic, s.id, gen_random_uuid()::text, $2, $3, $4,
			(SELECT u.t FROM unnest($5::smallint[]) WITH ORDINALITY AS u(t, o) WHERE u.t = ANY(s.topics) ORDER BY u.o LIMIT 1),
			$6, $7, CASE WHEN s.payload = $9 THEN $8::bytea END, coalesce($10::timestamptz, now()), coalesce($11::timestamptz, now()), $12
		FROM subscriptions s
		WHERE s.clinic = $1 AND s.topics && $5::smallint[]
		ORDER BY s.id
		ON CONFLICT (source, outbox_id, subscription_id) DO NOTHING`,
		e.Clinic, source, e.ID, e.Type, topics, e.Resource, outbox.Family(e.Resource, msg), payload,
		int16(webhooksv1.PayloadKind_PAYLOAD_KIND_FULL), r.notBefore, created, member)
	if err != nil {
		return 0, fmt.Errorf("webhooks: enqueue %s: %w", e.Type, err)
	}
	return tag.RowsAffected(), nil
}

// informationOf is what a payload discloses, by its message type, for the
// consent check: a Referral is REFERRALS, an Intervention or a Reminder
// APPOINTMENTS. Any other payload is never disclosed (ok is false): its
// notifications carry identifiers only, whatever the topic.
func informationOf(msg proto.Message) (familiesv1.InformationKind, bool) {
	switch msg.(type) {
	case *referralsv1.Referral:
		return familiesv1.InformationKind_INFORMATION_KIND_REFERRALS, true
	case *interventionsv1.Intervention, *interventionsv1.Reminder:
		return familiesv1.InformationKind_INFORMATION_KIND_APPOINTMENTS, true
	}
	return familiesv1.InformationKind_INFORMATION_KIND_UNSPECIFIED, false
}
