package webhooks_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	webhooksv1 "github.com/handoff-health/handoff/gen/go/handoff/webhooks/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/outbox"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
	"github.com/handoff-health/handoff/services/servicetest"
	"github.com/handoff-health/handoff/services/webhooks"
)

func byResource(got []map[string]any, resource string) map[string]any {
	for _, n := range got {
		if n["resource"] == resource {
			return n
		}
	}
	return nil
}

// The consent asked for is the kind of information the payload is, not
// the topic it is delivered under: a referral event delivered as an
// APPOINTMENT_CHANGED carries the whole Referral, so a consent to
// appointments only must not let it out.
func TestConsentKindFollowsPayload(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	rcv, _ := f.receiving(t, f.ehr, webhooksv1.PayloadKind_PAYLOAD_KIND_FULL, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED)
	fam := &fakeFamilies{covers: familiesv1.InformationKind_INFORMATION_KIND_APPOINTMENTS}
	fam.consent.Store(true)

	ref := referralEvent(t, "r1", "scheduled") // a Referral, under APPOINTMENT_CHANGED
	iv := event(t, "handoff.interventions.v1.intervention.scheduled",
		&interventionsv1.Intervention{Name: "clinics/north/interventions/i1", Family: "clinics/north/families/f1",
			Etag: "v7", UpdateTime: timestamppb.Now(), State: interventionsv1.InterventionState_INTERVENTION_STATE_SCHEDULED},
		"clinics/north/interventions/i1")
	// A payload of a type the sender does not know how to classify is
	// never disclosed; naming no family the sender can ask about, it is
	// not even told to the EHR.
	odd := event(t, "handoff.interventions.v1.intervention.updated",
		&familiesv1.Family{Name: "clinics/north/families/f1"}, "clinics/north/interventions/i2")
	for _, e := range []outbox.Stored{ref, iv, odd} {
		if n, err := f.sink.Enqueue(ctx, "interventions", e); err != nil || n != 1 {
			t.Fatalf("Enqueue %s = %d, %v", e.Type, n, err)
		}
	}
	var stored int
	if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM deliveries WHERE outbox_id = $1 AND payload IS NOT NULL`, odd.ID).Scan(&stored); err != nil || stored != 0 {
		t.Fatalf("an unclassified payload is stored (%d, %v)", stored, err)
	}
	runSender(t, fastSender(f.db, fam, 10))
	eventually(t, 5*time.Second, "the intervention's notification, the unclassified one withheld", func() bool {
		var state int16
		err := f.pool.QueryRow(ctx, `SELECT state FROM deliveries WHERE outbox_id = $1`, odd.ID).Scan(&state)
		return len(rcv.received()) == 1 && err == nil && state == int16(webhooksv1.DeliveryState_DELIVERY_STATE_WITHDRAWN)
	})
	got := rcv.received()
	// The EHR hears nothing of a referral that only an appointments
	// consent covers: the notification is withheld.
	if n := byResource(got, "clinics/north/referrals/r1"); n != nil {
		t.Fatalf("referral under APPOINTMENT_CHANGED with an appointments-only consent: %v", n)
	}
	// The referral's delivery is decided beside the others, not before
	// them: wait for it to leave PENDING.
	var state int16
	var reason string
	var err error
	eventually(t, 5*time.Second, "the referral's delivery decided", func() bool {
		err = f.pool.QueryRow(ctx, `SELECT state, last_error FROM deliveries WHERE outbox_id = $1`, ref.ID).Scan(&state, &reason)
		return err != nil || state != int16(webhooksv1.DeliveryState_DELIVERY_STATE_PENDING)
	})
	if err != nil || state != int16(webhooksv1.DeliveryState_DELIVERY_STATE_WITHDRAWN) || !strings.Contains(reason, "consent") {
		t.Fatalf("the referral's delivery: state %d, %q, %v; want WITHDRAWN for want of consent", state, reason, err)
	}
	if n := byResource(got, "clinics/north/interventions/i1"); n == nil || n["data"] == nil || n["notice"] != webhooks.Notice {
		t.Fatalf("intervention with an appointments consent: %v", n)
	} else if data := fmt.Sprint(n["data"]); strings.Contains(data, "v7") || strings.Contains(data, "pdate") || !strings.Contains(data, "SCHEDULED") {
		// The intervention's own version counts changes the appointment
		// leaves out.
		t.Fatalf("the appointment sent to the EHR: %s; want it without the intervention's version and update time", data)
	}
	if n := byResource(got, "clinics/north/interventions/i2"); n != nil {
		t.Fatalf("unclassified payload of no known family told to the EHR: %v", n)
	}
	fam.mu.Lock()
	defer fam.mu.Unlock()
	kinds := map[string]familiesv1.InformationKind{}
	for _, a := range fam.asked {
		kinds[a.GetDisclosure().GetResource()] = a.GetDisclosure().GetInformation()
	}
	if kinds["clinics/north/referrals/r1"] != familiesv1.InformationKind_INFORMATION_KIND_REFERRALS ||
		kinds["clinics/north/interventions/i1"] != familiesv1.InformationKind_INFORMATION_KIND_APPOINTMENTS ||
		len(kinds) != 2 {
		t.Fatalf("consent asked for %v", kinds)
	}
}

// FULL copies of events are dropped once delivered or withdrawn; a dead
// letter keeps its copy so that a replay sends it in full.
func TestPayloadRetention(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	rcv, _ := f.receiving(t, f.ehr, webhooksv1.PayloadKind_PAYLOAD_KIND_FULL, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	rcv.setFail(func(_ string, n map[string]any) bool { return n["resource"] == "clinics/north/referrals/r2" })
	f.subscribe(t, f.env.As("north", "reminders-1", auth.RoleReminders), "https://reminders.example.org/hooks",
		webhooksv1.PayloadKind_PAYLOAD_KIND_FULL, webhooksv1.Topic_TOPIC_REMINDER_DUE)

	delivered, dead := referralEvent(t, "r1", "accepted"), referralEvent(t, "r2", "accepted")
	rem := &interventionsv1.Reminder{Name: "clinics/north/reminders/m1", DueTime: timestamppb.New(time.Now().Add(time.Hour)),
		RelatedResource: "clinics/north/families/f1"}
	created := event(t, "handoff.interventions.v1.reminder.created", rem, rem.GetName())
	for _, e := range []outbox.Stored{delivered, dead, created} {
		if _, err := f.sink.Enqueue(ctx, "referrals", e); err != nil {
			t.Fatal(err)
		}
	}
	payloadOf := func(id int64) (int16, int) {
		t.Helper()
		var state int16
		var n int
		if err := f.pool.QueryRow(ctx, `SELECT state, coalesce(length(payload), 0) FROM deliveries WHERE outbox_id = $1`, id).Scan(&state, &n); err != nil {
			t.Fatal(err)
		}
		return state, n
	}
	if _, n := payloadOf(created.ID); n == 0 {
		t.Fatal("a pending FULL reminder keeps no payload")
	}
	if _, err := f.sink.Enqueue(ctx, "referrals", event(t, "handoff.interventions.v1.reminder.cancelled", rem, rem.GetName())); err != nil {
		t.Fatal(err)
	}
	runSender(t, fastSender(f.db, nil, 1))
	eventually(t, 5*time.Second, "r1 delivered and r2 dead", func() bool {
		s1, _ := payloadOf(delivered.ID)
		s2, _ := payloadOf(dead.ID)
		return s1 == int16(webhooksv1.DeliveryState_DELIVERY_STATE_DELIVERED) && s2 == int16(webhooksv1.DeliveryState_DELIVERY_STATE_DEAD)
	})
	if _, n := payloadOf(delivered.ID); n != 0 {
		t.Errorf("a DELIVERED delivery keeps %d bytes of payload", n)
	}
	if _, n := payloadOf(dead.ID); n == 0 {
		t.Errorf("a DEAD delivery lost its payload; a replay could not send it in full")
	}
	if st, n := payloadOf(created.ID); st != int16(webhooksv1.DeliveryState_DELIVERY_STATE_WITHDRAWN) || n != 0 {
		t.Errorf("withdrawn reminder: state %d, %d bytes of payload", st, n)
	}

	// The withdraw UPDATE has an index to use (the planner is told to
	// avoid sequential scans, as it would on a large table).
	tx, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if _, err := tx.Exec(ctx, `SET LOCAL enable_seqscan = off`); err != nil {
		t.Fatal(err)
	}
	plan := pgtest.Explain(t, tx, `UPDATE deliveries SET state = 4, payload = NULL
		WHERE clinic = 'north' AND resource = 'clinics/north/reminders/m1' AND topic = 3 AND state IN (1, 3)`)
	if !strings.Contains(plan, "deliveries_open_resource") {
		t.Fatalf("the withdraw UPDATE does not use deliveries_open_resource:\n%s", plan)
	}
}

// An event the sink can never enqueue is set aside, identifiers and error
// only, and the relay goes on; a transient failure still makes the relay
// retry.
func TestSinkSetsAsideWhatCannotBeEnqueued(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	f.subscribe(t, f.ehr, "https://ehr.example.org/hooks", webhooksv1.PayloadKind_PAYLOAD_KIND_FULL, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	deliver := f.sink.For("referrals")

	bad := referralEvent(t, "r1", "accepted")
	bad.Resource = "clinics/north/referrals/r1\x00" // PostgreSQL text cannot hold it
	if err := deliver(ctx, bad); err != nil {
		t.Fatalf("a deterministic failure stalls the relay: %v", err)
	}
	var source, typ, reason string
	if err := f.pool.QueryRow(ctx, `SELECT source, event_type, error FROM sink_failures WHERE outbox_id = $1`, bad.ID).
		Scan(&source, &typ, &reason); err != nil {
		t.Fatalf("set-aside event: %v", err)
	}
	if source != "referrals" || typ != bad.Type || !strings.HasPrefix(reason, "sqlstate ") {
		t.Fatalf("set aside as %q %q %q", source, typ, reason)
	}
	var payloadColumns int
	if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM information_schema.columns
		WHERE table_name = 'sink_failures' AND column_name LIKE '%payload%'`).Scan(&payloadColumns); err != nil || payloadColumns != 0 {
		t.Fatalf("sink_failures has %d payload columns (%v)", payloadColumns, err)
	}
	// The relay retries it anyway (it has no way to know): set aside again.
	if err := deliver(ctx, bad); err != nil {
		t.Fatalf("second attempt: %v", err)
	}

	good := referralEvent(t, "r1", "scheduled")
	if err := deliver(ctx, good); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM deliveries WHERE outbox_id = $1`, good.ID).Scan(&n); err != nil || n != 1 {
		t.Fatalf("the next event enqueued %d deliveries (%v)", n, err)
	}

	gone, cancel := context.WithCancel(ctx)
	cancel()
	later := referralEvent(t, "r2", "accepted")
	if err := deliver(gone, later); err == nil {
		t.Fatal("a transient failure was swallowed: the relay would not retry")
	}
	if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM sink_failures WHERE outbox_id = $1`, later.ID).Scan(&n); err != nil || n != 0 {
		t.Fatalf("a transient failure was set aside (%d, %v)", n, err)
	}
}

// gate is a receiver whose requests wait, in arrival order, until the test
// answers them.
type gate struct {
	secret  atomic.Value
	arrived chan int
	mu      sync.Mutex
	n       int
	answers map[int]chan int
	bodies  map[int][]byte
	headers map[int]http.Header
	srv     *httptest.Server
}

func newGate(t *testing.T) *gate {
	g := &gate{arrived: make(chan int, 100), answers: map[int]chan int{}, bodies: map[int][]byte{}, headers: map[int]http.Header{}}
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		g.mu.Lock()
		g.n++
		n := g.n
		ch := g.answer(n)
		g.bodies[n], g.headers[n] = body, r.Header.Clone()
		g.mu.Unlock()
		g.arrived <- n
		select {
		case code := <-ch:
			w.WriteHeader(code)
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(g.srv.Close)
	return g
}

// answer returns request n's answer channel; g.mu is held.
func (g *gate) answer(n int) chan int {
	if g.answers[n] == nil {
		g.answers[n] = make(chan int, 1)
	}
	return g.answers[n]
}

func (g *gate) reply(n, code int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.answer(n) <- code
}

func (g *gate) wait(t *testing.T, want int) {
	t.Helper()
	select {
	case n := <-g.arrived:
		if n != want {
			t.Fatalf("request %d arrived, want %d", n, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("request %d never arrived", want)
	}
}

func senderWith(f *fixture, maxAttempts, parallel int) *webhooks.Sender {
	return webhooks.NewSender(webhooks.SenderConfig{
		DB: f.db, Log: slog.New(slog.DiscardHandler), MaxAttempts: maxAttempts, Parallel: parallel,
		BaseBackoff: time.Hour, MaxBackoff: time.Hour, Timeout: 3 * time.Second, AllowPrivate: true,
	})
}

func (f *fixture) deliveryState(t *testing.T) (webhooksv1.DeliveryState, int) {
	t.Helper()
	var state int16
	var attempts int
	if err := f.pool.QueryRow(context.Background(), `SELECT state, attempts FROM deliveries`).Scan(&state, &attempts); err != nil {
		t.Fatal(err)
	}
	return webhooksv1.DeliveryState(state), attempts
}

// A sender whose lease ran out (so another sender claimed the delivery
// again) cannot overwrite the newer attempt's outcome: its outcome is
// fenced on the attempt number.
func TestStaleSenderCannotOverwriteOutcome(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	g := newGate(t)
	f.subscribe(t, f.ehr, g.srv.URL, 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r1", "accepted")); err != nil {
		t.Fatal(err)
	}
	stale, current := senderWith(f, 1, 1), senderWith(f, 10, 1)
	staleDone, currentDone := make(chan error, 1), make(chan error, 1)
	go func() { _, err := stale.Once(ctx); staleDone <- err }()
	g.wait(t, 1)
	// The stale sender's lease runs out while its POST hangs.
	if _, err := f.pool.Exec(ctx, `UPDATE deliveries SET next_attempt_time = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	go func() { _, err := current.Once(ctx); currentDone <- err }()
	g.wait(t, 2)
	// The stale attempt fails, and it was its sender's last: without the
	// fence it would dead-letter the delivery the other sender is sending.
	g.reply(1, http.StatusServiceUnavailable)
	if err := <-staleDone; err != nil {
		t.Fatal(err)
	}
	if st, n := f.deliveryState(t); st != webhooksv1.DeliveryState_DELIVERY_STATE_PENDING || n != 2 {
		t.Fatalf("after the stale sender's failure: %v, %d attempts; want PENDING, 2", st, n)
	}
	g.reply(2, http.StatusNoContent)
	if err := <-currentDone; err != nil {
		t.Fatal(err)
	}
	if st, _ := f.deliveryState(t); st != webhooksv1.DeliveryState_DELIVERY_STATE_DELIVERED {
		t.Fatalf("after the current sender's success: %v, want DELIVERED", st)
	}
}

// A round claims no more deliveries than it sends at once: a claimed
// delivery never waits for a slot while its lease runs out.
func TestClaimsOnlyFreeSlots(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	g := newGate(t)
	for i := range 6 {
		// Six receivers' paths: one owner subscribes a URL once per topic.
		f.subscribe(t, f.ehr, fmt.Sprintf("%s/hooks/%d", g.srv.URL, i), 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	}
	if n, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r1", "accepted")); err != nil || n != 6 {
		t.Fatalf("Enqueue = %d, %v", n, err)
	}
	s := senderWith(f, 10, 2)
	done := make(chan int, 1)
	go func() { n, _ := s.Once(ctx); done <- n }()
	g.wait(t, 1)
	g.wait(t, 2)
	time.Sleep(100 * time.Millisecond)
	var claimed int
	if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM deliveries WHERE attempts > 0`).Scan(&claimed); err != nil {
		t.Fatal(err)
	}
	g.reply(1, http.StatusNoContent)
	g.reply(2, http.StatusNoContent)
	if n := <-done; n != 2 || claimed != 2 {
		t.Fatalf("a round with 2 slots claimed %d and sent %d; want 2 and 2", claimed, n)
	}
}

// A secret that does not open with the sender's key (a replica started
// with a wrong key, or one of the release before while the keys change in
// one rollout) is Handoff's failure, not the receiver's: nothing is sent,
// the try is given back, and a sender with the right key delivers it.
func TestUnreadableSecretIsHeldNotDead(t *testing.T) {
	_, schema := pgtest.Schema(t, webhooks.Migrations()...)
	db := pgtest.App(t, schema)
	key := make([]byte, 32)
	box, err := webhooks.NewSecretBox(key)
	if err != nil {
		t.Fatal(err)
	}
	key[0] = 1
	otherBox, err := webhooks.NewSecretBox(key)
	if err != nil {
		t.Fatal(err)
	}
	srv := webhooks.New(db, webhooks.Config{AllowInsecure: true, AllowPrivate: true, Secrets: box})
	env := servicetest.Start(t, webhooks.Policy(), func(s *grpc.Server) { webhooksv1.RegisterWebhooksServiceServer(s, srv) })
	c := webhooksv1.NewWebhooksServiceClient(env.Conn)
	g := newGate(t)
	sub, err := c.CreateSubscription(env.As("north", "ehr-1", auth.RoleEHR), &webhooksv1.CreateSubscriptionRequest{Parent: "clinics/north",
		Subscription: &webhooksv1.Subscription{Url: g.srv.URL, Topics: []webhooksv1.Topic{webhooksv1.Topic_TOPIC_REFERRAL_CHANGED}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (&webhooks.Sink{DB: db}).Enqueue(context.Background(), "referrals", referralEvent(t, "r1", "accepted")); err != nil {
		t.Fatal(err)
	}
	admin := env.As("north", "admin-1", auth.RoleClinicAdmin)
	delivery := func() *webhooksv1.Delivery {
		t.Helper()
		resp, err := c.ListDeliveries(admin, &webhooksv1.ListDeliveriesRequest{Parent: sub.GetName()})
		if err != nil || len(resp.GetDeliveries()) != 1 {
			t.Fatalf("ListDeliveries = %v, %v", resp, err)
		}
		return resp.GetDeliveries()[0]
	}
	wrong := webhooks.NewSender(webhooks.SenderConfig{DB: db, Log: slog.New(slog.DiscardHandler), AllowPrivate: true, Secrets: otherBox})
	if _, err := wrong.Once(context.Background()); err != nil {
		t.Fatal(err)
	}
	d := delivery()
	if d.GetState() != webhooksv1.DeliveryState_DELIVERY_STATE_PENDING || !strings.Contains(d.GetLastError(), "secret") || d.GetAttemptCount() != 0 {
		t.Fatalf("delivery with an unreadable secret: %v; want it pending, the try given back, the reason kept", d)
	}
	select {
	case <-g.arrived:
		t.Fatal("sent without a signature")
	default:
	}
	// The sender with the right key sends it once it is due again.
	if _, err := db.Exec(pgdb.WithClinic(context.Background(), "north"), `UPDATE deliveries SET next_attempt_time = now()`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := webhooks.NewSender(webhooks.SenderConfig{DB: db, Log: slog.New(slog.DiscardHandler), AllowPrivate: true, Secrets: box}).Once(context.Background())
		done <- err
	}()
	g.wait(t, 1)
	g.reply(1, http.StatusNoContent)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if d := delivery(); d.GetState() != webhooksv1.DeliveryState_DELIVERY_STATE_DELIVERED {
		t.Fatalf("with the right key: %v; want it delivered", d)
	}
}

// The Handoff-Webhook-Id header is not signed; the signed body carries the
// same id, which is what receivers deduplicate on.
func TestBodyIDIsHeaderID(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	g := newGate(t)
	sub := f.subscribe(t, f.ehr, g.srv.URL, 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r1", "accepted")); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := senderWith(f, 10, 1).Once(ctx); done <- err }()
	g.wait(t, 1)
	g.reply(1, http.StatusNoContent)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	body, header := g.bodies[1], g.headers[1]
	g.mu.Unlock()
	if err := webhooks.Verify(sub.GetSecret(), header.Get(webhooks.SignatureHeader), body, time.Now()); err != nil {
		t.Fatalf("signature: %v", err)
	}
	var n struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(body, &n); err != nil {
		t.Fatal(err)
	}
	resp, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: sub.GetName()})
	if err != nil || len(resp.GetDeliveries()) != 1 {
		t.Fatalf("ListDeliveries = %v, %v", resp, err)
	}
	if id := header.Get(webhooks.IDHeader); n.ID == "" || n.ID != id || n.ID != aipID(resp.GetDeliveries()[0].GetName()) {
		t.Fatalf("body id %q, header %q, delivery %s", n.ID, id, resp.GetDeliveries()[0].GetName())
	}
}

// A reminder is disclosed under the consent of its recipient's family, not
// that of the resource it relates to.
func TestReminderFamilyIsTheRecipients(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	f.subscribe(t, f.env.As("north", "reminders-1", auth.RoleReminders), "https://reminders.example.org/hooks",
		webhooksv1.PayloadKind_PAYLOAD_KIND_FULL, webhooksv1.Topic_TOPIC_REMINDER_DUE)
	rem := &interventionsv1.Reminder{Name: "clinics/north/reminders/m1",
		Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mem-1",
			Family: "clinics/north/families/f2"},
		RelatedResource: "clinics/north/families/f1", DueTime: timestamppb.New(time.Now().Add(time.Hour))}
	counselors := &interventionsv1.Reminder{Name: "clinics/north/reminders/m2",
		Recipient:       &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR, Id: "counselor-1"},
		RelatedResource: "clinics/north/families/f1", DueTime: timestamppb.New(time.Now().Add(time.Hour))}
	for _, m := range []*interventionsv1.Reminder{rem, counselors} {
		if _, err := f.sink.Enqueue(ctx, "interventions", event(t, "handoff.interventions.v1.reminder.created", m, m.GetName())); err != nil {
			t.Fatal(err)
		}
	}
	for resource, want := range map[string]string{rem.GetName(): "clinics/north/families/f2", counselors.GetName(): "clinics/north/families/f1"} {
		var family string
		if err := f.pool.QueryRow(ctx, `SELECT family FROM deliveries WHERE resource = $1`, resource).Scan(&family); err != nil {
			t.Fatal(err)
		}
		if family != want {
			t.Errorf("%s disclosed under %q, want %q", resource, family, want)
		}
	}
}

// Every notification carries a sequence that grows per resource; a dead
// letter replayed after a later notification of its resource went out is
// recognisably older.
func TestSequenceGrowsPerResource(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	rcv, sub := f.receiving(t, f.ehr, 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	var failFirst atomic.Bool
	failFirst.Store(true)
	first := referralEvent(t, "r1", "accepted")
	// The first notification of r1 fails for good (identifiers only: its
	// type no longer says which it is).
	var firstID atomic.Value
	rcv.setFail(func(_ string, n map[string]any) bool {
		if n["resource"] == first.Resource {
			firstID.CompareAndSwap(nil, n["id"])
		}
		return failFirst.Load() && n["id"] == firstID.Load()
	})
	events := []outbox.Stored{first, referralEvent(t, "r2", "accepted"), referralEvent(t, "r1", "scheduled"),
		referralEvent(t, "r2", "scheduled"), referralEvent(t, "r1", "completed")}
	for _, e := range events {
		if _, err := f.sink.Enqueue(ctx, "referrals", e); err != nil {
			t.Fatal(err)
		}
	}
	runSender(t, fastSender(f.db, nil, 1))
	eventually(t, 5*time.Second, "four notifications", func() bool { return len(rcv.received()) == 4 })
	last := map[string]float64{}
	for _, n := range rcv.received() {
		seq, ok := n["sequence"].(float64)
		if !ok || seq <= 0 {
			t.Fatalf("notification without a sequence: %v", n)
		}
		r := n["resource"].(string)
		if seq <= last[r] {
			t.Fatalf("%s: sequence %v after %v", r, seq, last[r])
		}
		last[r] = seq
	}
	resp, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: sub.GetName(), Filter: "state = DEAD"})
	if err != nil || len(resp.GetDeliveries()) != 1 {
		t.Fatalf("dead letters %v, %v", resp, err)
	}
	// Delivered and dead alike carry when they finished: retention counts
	// from it.
	finished := func(want int) bool {
		var n, unstamped int
		if err := f.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state <> 1), count(*) FILTER (WHERE state <> 1 AND finish_time IS NULL)
			FROM deliveries`).Scan(&n, &unstamped); err != nil {
			t.Fatal(err)
		}
		return n == want && unstamped == 0
	}
	eventually(t, 5*time.Second, "five finished deliveries with their finish time", func() bool { return finished(5) })
	failFirst.Store(false)
	if _, err := f.client.ReplayDelivery(f.admin, &webhooksv1.ReplayDeliveryRequest{Name: resp.GetDeliveries()[0].GetName()}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the replayed dead letter", func() bool { return len(rcv.received()) == 5 })
	replayed := rcv.received()[4]
	if replayed["resource"] != first.Resource || replayed["sequence"].(float64) >= last[first.Resource] {
		t.Fatalf("replayed %v; its sequence must be below %v, the last applied for %s", replayed, last[first.Resource], first.Resource)
	}
}

// Finished deliveries and sink failures older than Keep are deleted, and
// request ids older than their retention (a stored CreateSubscription
// answer holds the signing secret); pending and recent ones stay.
func TestSenderForgetsWhatIsPastItsRetention(t *testing.T) {
	if webhooks.Keep <= outbox.DefaultKeep {
		t.Fatalf("deliveries are kept %v, not longer than the outbox keeps events (%v): a redelivered event could be sent twice", webhooks.Keep, outbox.DefaultKeep)
	}
	f := setup(t)
	ctx := context.Background()
	f.subscribe(t, f.ehr, "https://ehr.example.org/hooks", webhooksv1.PayloadKind_PAYLOAD_KIND_ID_ONLY, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	for _, r := range []string{"old-delivered", "old-dead", "late-dead", "earlier-dead", "new-dead", "old-pending"} {
		if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, r, "accepted")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.pool.Exec(ctx, `
		UPDATE deliveries SET state = 2, create_time = now() - interval '32 days', finish_time = now() - interval '31 days' WHERE resource LIKE '%/old-delivered';
		UPDATE deliveries SET state = 3, create_time = now() - interval '40 days', finish_time = now() - interval '31 days' WHERE resource LIKE '%/old-dead';
		-- An old event whose delivery died only yesterday (a reminder due
		-- a month after it was set): kept, to be replayed.
		UPDATE deliveries SET state = 3, create_time = now() - interval '40 days', finish_time = now() - interval '1 day' WHERE resource LIKE '%/late-dead';
		-- Finished before finish_time was recorded: counted from its last
		-- attempt.
		UPDATE deliveries SET state = 3, create_time = now() - interval '40 days', next_attempt_time = now() - interval '35 days' WHERE resource LIKE '%/earlier-dead';
		UPDATE deliveries SET state = 3, finish_time = now() WHERE resource LIKE '%/new-dead';
		UPDATE deliveries SET create_time = now() - interval '40 days', next_attempt_time = now() + interval '1 day' WHERE resource LIKE '%/old-pending';
		INSERT INTO sink_failures (clinic, source, outbox_id, event_type, error, create_time) VALUES
			('north', 'referrals', 1, 't', 'e', now() - interval '31 days'), ('north', 'referrals', 2, 't', 'e', now());
		INSERT INTO idempotency_keys (clinic, request_id, method, request_hash, create_time) VALUES
			('north', 'old', 'm', '\x00', now() - interval '31 days'), ('north', 'new', 'm', '\x00', now())`); err != nil {
		t.Fatal(err)
	}
	s := webhooks.NewSender(webhooks.SenderConfig{DB: f.db, Log: slog.New(slog.DiscardHandler), AllowPrivate: true})
	if n, err := s.Once(ctx); err != nil || n != 0 {
		t.Fatalf("Once = %d, %v; want nothing due", n, err)
	}
	strs := func(sql string) string {
		t.Helper()
		rows, _ := f.pool.Query(ctx, sql)
		got, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(got, " ")
	}
	if got := strs(`SELECT split_part(resource, '/', 4) FROM deliveries ORDER BY seq`); got != "late-dead new-dead old-pending" {
		t.Errorf("deliveries kept: %s; want late-dead new-dead old-pending", got)
	}
	if got := strs(`SELECT outbox_id::text FROM sink_failures`); got != "2" {
		t.Errorf("sink failures kept: %s; want 2", got)
	}
	if got := strs(`SELECT request_id FROM idempotency_keys WHERE request_id IN ('old', 'new')`); got != "new" {
		t.Errorf("request ids kept: %s; want new", got)
	}
}

// A receiver that hangs holds only its own share of the slots: another
// receiver's notifications keep flowing meanwhile, not one round per
// timeout of the slow one.
func TestAHangingReceiverHoldsOnlyItsOwnSlots(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	stop := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	t.Cleanup(slow.Close)
	t.Cleanup(func() { close(stop) })
	fast, got := counting(t)
	f.subscribe(t, f.ehr, slow.URL, 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	f.subscribe(t, f.env.As("north", "ehr-2", auth.RoleEHR), fast.URL, 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	for i := range 10 {
		if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, fmt.Sprintf("r%d", i), "accepted")); err != nil {
			t.Fatal(err)
		}
	}
	runSender(t, webhooks.NewSender(webhooks.SenderConfig{
		DB: f.db, Log: slog.New(slog.DiscardHandler), MaxAttempts: 10, Parallel: 4,
		BaseBackoff: time.Hour, MaxBackoff: time.Hour, Timeout: 30 * time.Second, Interval: 20 * time.Millisecond, AllowPrivate: true,
	}))
	// Well within the hanging receiver's timeout, which a round waiting
	// on it would take, and roomy for a busy machine.
	eventually(t, 15*time.Second, "the other receiver's 10 notifications", func() bool { return got.Load() == 10 })
	// The slow receiver never had more than its share under way.
	var leased int
	if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id
		WHERE s.owner = 'ehr-1' AND d.attempts > 0`).Scan(&leased); err != nil || leased != 2 {
		t.Fatalf("deliveries of the hanging receiver attempted: %d, %v; want its share of 2", leased, err)
	}
}

// A failed attempt of a delivery withdrawn on its way is not reported as
// one to be retried: the row says withdrawn, and so does the log.
func TestFailedAttemptOfAWithdrawnDeliveryIsNotRetried(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := f.pool.Exec(context.Background(), `UPDATE deliveries SET state = 4, finish_time = now()`); err != nil {
			t.Error(err)
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(rcv.Close)
	f.subscribe(t, f.ehr, rcv.URL, 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r1", "accepted")); err != nil {
		t.Fatal(err)
	}
	var logs servicetest.LogBuffer
	s := webhooks.NewSender(webhooks.SenderConfig{
		DB: f.db, Log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})), MaxAttempts: 10, Parallel: 1,
		BaseBackoff: time.Hour, MaxBackoff: time.Hour, Timeout: 3 * time.Second, AllowPrivate: true,
	})
	if n, err := s.Once(ctx); err != nil || n != 1 {
		t.Fatalf("Once = %d, %v; want one attempt", n, err)
	}
	if st, _ := f.deliveryState(t); st != webhooksv1.DeliveryState_DELIVERY_STATE_WITHDRAWN {
		t.Fatalf("state %v; want WITHDRAWN", st)
	}
	if out := logs.String(); !strings.Contains(out, "superseded") || strings.Contains(out, "attempt failed") {
		t.Fatalf("log of a withdrawn delivery's failed attempt:\n%s\nwant it superseded, not to be retried", out)
	}
}

// counting is a receiver that takes every notification at once, and how
// many it took.
func counting(t *testing.T) (*httptest.Server, *atomic.Int32) {
	got := &atomic.Int32{}
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(rcv.Close)
	return rcv, got
}

// Receivers that hang (one before its answer, one in the middle of its
// body) lose their share after one timeout: together they get a quarter
// of the slots, one send each at a time, so that two of them cannot hold
// every slot round after round while another receiver waits.
func TestHangingReceiversGetOneSlotAfterATimeout(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	stop := make(chan struct{})
	// Long enough that the first sends end well within a quarter of it
	// on a busy machine; 12 notifications held behind the hanging pair
	// would still take 6 of it.
	const timeout = 2 * time.Second
	var hung, mostLate, now atomic.Int32
	var start atomic.Pointer[time.Time]
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hung.Add(1)
		// Read to the end, so that the server hears the sender hang up.
		_, _ = io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/b" {
			// Answers at once, then never ends the body: as slow.
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
		}
		n := now.Add(1)
		defer now.Add(-1)
		// Under way at once, counted from a quarter timeout past the first
		// timeout, when the first sends have ended.
		if s := start.Load(); s != nil && time.Since(*s) > timeout+timeout/4 {
			for m := mostLate.Load(); n > m && !mostLate.CompareAndSwap(m, n); m = mostLate.Load() {
			}
		}
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	t.Cleanup(slow.Close)
	t.Cleanup(func() { close(stop) })
	fast, got := counting(t)
	f.subscribe(t, f.ehr, slow.URL+"/a", 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	f.subscribe(t, f.env.As("north", "ehr-3", auth.RoleEHR), slow.URL+"/b", 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	f.subscribe(t, f.env.As("north", "ehr-2", auth.RoleEHR), fast.URL, 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	for i := range 12 {
		if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, fmt.Sprintf("r%d", i), "accepted")); err != nil {
			t.Fatal(err)
		}
	}
	var logs servicetest.LogBuffer
	began := time.Now()
	start.Store(&began)
	runSender(t, webhooks.NewSender(webhooks.SenderConfig{
		DB: f.db, Log: slog.New(slog.NewTextHandler(&logs, nil)), MaxAttempts: 10, Parallel: 4,
		BaseBackoff: time.Hour, MaxBackoff: time.Hour, Timeout: timeout, Interval: 20 * time.Millisecond, AllowPrivate: true,
	}))
	// With a share each (two slots of four), the hanging pair would hold
	// every slot for a timeout at a time, the other receiver getting one
	// or two notifications between timeouts: 12 would take 6 timeouts.
	eventually(t, 3*timeout, "the other receiver's 12 notifications", func() bool { return got.Load() == 12 })
	// Before the first timeout they held their shares (four); since, one
	// between them at a time.
	time.Sleep(timeout + timeout/2)
	took := time.Since(began)
	if n, want := int(hung.Load()), 4+int(took/timeout)+1; n > want {
		t.Errorf("the hanging receivers were sent %d notifications in %v; want at most %d: 4, then one at a time", n, took.Round(time.Millisecond), want)
	}
	if m := mostLate.Load(); m > 1 {
		t.Errorf("the hanging receivers had %d notifications under way at once after the first timeout; want one", m)
	}
	if out := logs.String(); !strings.Contains(out, "webhook receiver slow") {
		t.Errorf("log:\n%s\nwant the slow receivers named", out)
	}
}
