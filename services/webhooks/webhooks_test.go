package webhooks_test

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	webhooksv1 "github.com/handoff-health/handoff/gen/go/handoff/webhooks/v1"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/outbox"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
	"github.com/handoff-health/handoff/services/servicetest"
	"github.com/handoff-health/handoff/services/webhooks"
)

type fixture struct {
	env    *servicetest.Env
	pool   *pgxpool.Pool
	db     *pgdb.DB
	client webhooksv1.WebhooksServiceClient
	sink   *webhooks.Sink
	ehr    context.Context // the EHR integration "ehr-1" of clinic "north"
	admin  context.Context
}

func setup(t *testing.T) *fixture {
	t.Helper()
	return setupWith(t, webhooks.Config{})
}

// setupWith is setup with cfg, loopback receivers allowed.
func setupWith(t *testing.T, cfg webhooks.Config) *fixture {
	t.Helper()
	pool, schema := pgtest.Schema(t, webhooks.Migrations()...)
	db := pgtest.App(t, schema)
	cfg.AllowInsecure, cfg.AllowPrivate = true, true
	srv := webhooks.New(db, cfg)
	env := servicetest.Start(t, webhooks.Policy(), func(s *grpc.Server) {
		webhooksv1.RegisterWebhooksServiceServer(s, srv)
	})
	env.Server.SetAuditor(srv.Auditor())
	return &fixture{
		env: env, pool: pool, db: db, client: webhooksv1.NewWebhooksServiceClient(env.Conn),
		sink: &webhooks.Sink{DB: db},
		ehr:  env.As("north", "ehr-1", auth.RoleEHR), admin: env.As("north", "admin-1", auth.RoleClinicAdmin),
	}
}

func (f *fixture) subscribe(t *testing.T, ctx context.Context, url string, payload webhooksv1.PayloadKind, topics ...webhooksv1.Topic) *webhooksv1.Subscription {
	t.Helper()
	sub, err := f.client.CreateSubscription(ctx, &webhooksv1.CreateSubscriptionRequest{Parent: "clinics/north",
		Subscription: &webhooksv1.Subscription{Url: url, Topics: topics, Payload: payload}})
	if err != nil {
		t.Fatalf("CreateSubscription: %v", err)
	}
	return sub
}

var outboxID atomic.Int64

// event is an outbox event as the referrals relay would pass it.
func event(t *testing.T, typ string, msg proto.Message, resource string) outbox.Stored {
	t.Helper()
	a, err := anypb.New(msg)
	if err != nil {
		t.Fatal(err)
	}
	return outbox.Stored{ID: outboxID.Add(1), Clinic: "north", Type: typ, Resource: resource, Payload: a, Generation: outbox.Generation}
}

func referralEvent(t *testing.T, ref, state string) outbox.Stored {
	name := "clinics/north/referrals/" + ref
	return event(t, "handoff.referrals.v1.referral."+state,
		&referralsv1.Referral{Name: name, Family: "clinics/north/families/f1", Reason: "private"}, name)
}

func TestSubscriptionsAreTheirOwners(t *testing.T) {
	f := setup(t)
	sub := f.subscribe(t, f.ehr, "https://ehr.example.org/hooks", 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	if sub.GetOwner() != "ehr-1" || len(sub.GetSecret()) < 40 || sub.GetPayload() != webhooksv1.PayloadKind_PAYLOAD_KIND_ID_ONLY {
		t.Fatalf("created %v", sub)
	}
	got, err := f.client.GetSubscription(f.ehr, &webhooksv1.GetSubscriptionRequest{Name: sub.GetName()})
	if err != nil || got.GetSecret() != "" || got.GetUrl() != sub.GetUrl() {
		t.Fatalf("Get = %v, %v; the secret must not be returned again", got, err)
	}
	other := f.env.As("north", "ehr-2", auth.RoleEHR)
	if _, err := f.client.GetSubscription(other, &webhooksv1.GetSubscriptionRequest{Name: sub.GetName()}); status.Code(err) != codes.NotFound {
		t.Fatalf("another integration's Get = %v, want NOT_FOUND", err)
	}
	if _, err := f.client.DeleteSubscription(other, &webhooksv1.DeleteSubscriptionRequest{Name: sub.GetName()}); status.Code(err) != codes.NotFound {
		t.Fatalf("another integration's Delete = %v, want NOT_FOUND", err)
	}
	mine := f.subscribe(t, other, "https://ehr2.example.org/hooks", 0, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED)
	list, err := f.client.ListSubscriptions(other, &webhooksv1.ListSubscriptionsRequest{Parent: "clinics/north"})
	if err != nil || len(list.GetSubscriptions()) != 1 || list.GetSubscriptions()[0].GetName() != mine.GetName() {
		t.Fatalf("ehr-2 lists %v, %v; want only its own", list, err)
	}
	all, err := f.client.ListSubscriptions(f.admin, &webhooksv1.ListSubscriptionsRequest{Parent: "clinics/north"})
	if err != nil || len(all.GetSubscriptions()) != 2 {
		t.Fatalf("admin lists %v, %v; want both", all, err)
	}
	// An EHR token that also says clinic_admin is still the outside system.
	mixed := f.env.As("north", "ehr-2", auth.RoleEHR, auth.RoleClinicAdmin)
	list, err = f.client.ListSubscriptions(mixed, &webhooksv1.ListSubscriptionsRequest{Parent: "clinics/north"})
	if err != nil || len(list.GetSubscriptions()) != 1 || list.GetSubscriptions()[0].GetName() != mine.GetName() {
		t.Fatalf("ehr-2 with an admin role beside lists %v, %v; want only its own", list, err)
	}
	if _, err := f.client.GetSubscription(mixed, &webhooksv1.GetSubscriptionRequest{Name: sub.GetName()}); status.Code(err) != codes.NotFound {
		t.Fatalf("ehr-2 with an admin role beside reads ehr-1's subscription: %v; want NOT_FOUND", err)
	}
	if _, err := f.client.ListDeliveries(f.ehr, &webhooksv1.ListDeliveriesRequest{Parent: sub.GetName()}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("EHR ListDeliveries = %v, want PERMISSION_DENIED", err)
	}
	south := f.env.As("south", "ehr-1", auth.RoleEHR)
	if _, err := f.client.GetSubscription(south, &webhooksv1.GetSubscriptionRequest{Name: sub.GetName()}); status.Code(err) != codes.NotFound {
		t.Fatalf("other clinic's Get = %v, want NOT_FOUND", err)
	}
	if _, err := f.client.DeleteSubscription(f.admin, &webhooksv1.DeleteSubscriptionRequest{Name: sub.GetName()}); err != nil {
		t.Fatalf("admin Delete: %v", err)
	}
}

func TestCreateRefusesUnsafeURLs(t *testing.T) {
	pool, schema := pgtest.Schema(t, webhooks.Migrations()...)
	srv := webhooks.New(pgtest.App(t, schema), webhooks.Config{})
	env := servicetest.Start(t, webhooks.Policy(), func(s *grpc.Server) { webhooksv1.RegisterWebhooksServiceServer(s, srv) })
	c := webhooksv1.NewWebhooksServiceClient(env.Conn)
	ctx := env.As("north", "ehr-1", auth.RoleEHR)
	for _, u := range []string{"http://ehr.example.org/hooks", "https://127.0.0.1:9000/hooks", "https://169.254.169.254/"} {
		_, err := c.CreateSubscription(ctx, &webhooksv1.CreateSubscriptionRequest{Parent: "clinics/north",
			Subscription: &webhooksv1.Subscription{Url: u, Topics: []webhooksv1.Topic{webhooksv1.Topic_TOPIC_REFERRAL_CHANGED}}})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("CreateSubscription(%s) = %v, want INVALID_ARGUMENT", u, err)
		}
	}
	// What is not a topic or a payload kind is bad input, not a topic the
	// caller may not read.
	for name, sub := range map[string]*webhooksv1.Subscription{
		"no topic":        {Topics: []webhooksv1.Topic{webhooksv1.Topic_TOPIC_UNSPECIFIED}},
		"unknown topic":   {Topics: []webhooksv1.Topic{webhooksv1.Topic_TOPIC_REFERRAL_CHANGED, 99}},
		"unknown payload": {Topics: []webhooksv1.Topic{webhooksv1.Topic_TOPIC_REFERRAL_CHANGED}, Payload: 7},
	} {
		sub.Url = "https://ehr.example.org/hooks"
		_, err := c.CreateSubscription(ctx, &webhooksv1.CreateSubscriptionRequest{Parent: "clinics/north", Subscription: sub})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want INVALID_ARGUMENT", name, err)
		}
	}
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM subscriptions`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d subscriptions, %v: refused requests must store nothing", n, err)
	}
}

// A name in a domain for local networks, or one that resolves only to
// addresses that are not public, is refused when the subscription is
// made, with the reason: accepted, every send to it would fail for hours.
// A name that does not resolve now, or resolves to a public address among
// others, is accepted (the sender checks each connection again).
func TestCreateRefusesNamesOfInternalHosts(t *testing.T) {
	pool, schema := pgtest.Schema(t, webhooks.Migrations()...)
	dns := map[string][]netip.Addr{
		"ehr.clinic.example":  {netip.MustParseAddr("10.0.0.5")},
		"ehr6.clinic.example": {netip.MustParseAddr("fd12::5"), netip.MustParseAddr("::ffff:192.168.1.9")},
		"mixed.example":       {netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("93.184.216.34")},
		"ehr.example.org":     {netip.MustParseAddr("93.184.216.34")},
	}
	var looked []string
	srv := webhooks.New(pgtest.App(t, schema), webhooks.Config{Resolve: func(_ context.Context, host string) ([]netip.Addr, error) {
		looked = append(looked, host)
		if a, ok := dns[host]; ok {
			return a, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}})
	env := servicetest.Start(t, webhooks.Policy(), func(s *grpc.Server) { webhooksv1.RegisterWebhooksServiceServer(s, srv) })
	c := webhooksv1.NewWebhooksServiceClient(env.Conn)
	ctx := env.As("north", "ehr-1", auth.RoleEHR)
	create := func(u string) error {
		_, err := c.CreateSubscription(ctx, &webhooksv1.CreateSubscriptionRequest{Parent: "clinics/north",
			Subscription: &webhooksv1.Subscription{Url: u, Topics: []webhooksv1.Topic{webhooksv1.Topic_TOPIC_REFERRAL_CHANGED}}})
		return err
	}
	for u, why := range map[string]string{
		"https://ehr.clinic.example/hooks":  "resolves only to addresses that are not public",
		"https://ehr6.clinic.example/hooks": "resolves only to addresses that are not public",
		"https://ehr.clinic.internal/hooks": "public unicast",
		"https://printer.local/hooks":       "public unicast",
		"https://ehr.home.arpa./hooks":      "public unicast",
	} {
		err := create(u)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), why) {
			t.Errorf("CreateSubscription(%s) = %v; want INVALID_ARGUMENT, %q", u, err, why)
		}
	}
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM subscriptions`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d subscriptions, %v: refused requests must store nothing", n, err)
	}
	// The refusal does not tell the caller the internal address: it would
	// map the network Handoff runs in for anyone who may subscribe.
	if err := create("https://ehr.clinic.example/hooks"); strings.Contains(status.Convert(err).Message(), "10.0.0.5") {
		t.Errorf("the refusal names the address: %v", err)
	}
	// The refusal does not tell the caller the internal address: it would
	// map the network Handoff runs in for anyone who may subscribe.
	if err := create("https://ehr.clinic.example/hooks"); strings.Contains(status.Convert(err).Message(), "10.0.0.5") {
		t.Errorf("the refusal names the address: %v", err)
	}
	for _, u := range []string{"https://mixed.example/hooks", "https://ehr.example.org/hooks", "https://not-yet.example/hooks", "https://93.184.216.34/hooks"} {
		if err := create(u); err != nil {
			t.Errorf("CreateSubscription(%s) = %v", u, err)
		}
	}
	if slices.Contains(looked, "93.184.216.34") || slices.Contains(looked, "ehr.clinic.internal") {
		t.Errorf("looked up %v: an address, or a name refused as it is, needs no look-up", looked)
	}
	// A retry of a create whose answer was lost gets that answer, secret
	// and all, though the name resolves only to an internal address since
	// (a DNS cut-over): checked again, it would be refused, and the one
	// answer that carries the secret lost.
	moving := &webhooksv1.CreateSubscriptionRequest{Parent: "clinics/north", RequestId: "create-moving",
		Subscription: &webhooksv1.Subscription{Url: "https://moving.example/hooks", Topics: []webhooksv1.Topic{webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED}}}
	first, err := c.CreateSubscription(ctx, moving)
	if err != nil {
		t.Fatal(err)
	}
	dns["moving.example"] = []netip.Addr{netip.MustParseAddr("10.0.0.9")}
	if again, err := c.CreateSubscription(ctx, moving); err != nil || again.GetName() != first.GetName() || again.GetSecret() != first.GetSecret() {
		t.Errorf("the retry: %v, %v; want the first answer, %s with its secret", again.GetName(), err, first.GetName())
	}
}

func TestEnqueueIsIdempotentAndByTopic(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	refSub := f.subscribe(t, f.ehr, "https://ehr.example.org/a", webhooksv1.PayloadKind_PAYLOAD_KIND_FULL, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	apptSub := f.subscribe(t, f.ehr, "https://ehr.example.org/b", 0, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED)
	bothSub := f.subscribe(t, f.ehr, "https://ehr.example.org/c", 0, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	f.subscribe(t, f.admin, "https://ehr.example.org/d", 0, webhooksv1.Topic_TOPIC_REMINDER_DUE)

	accepted := referralEvent(t, "r1", "accepted")
	for i, want := range []int64{2, 0, 0} { // a redelivered outbox event adds nothing
		n, err := f.sink.Enqueue(ctx, "referrals", accepted)
		if err != nil || n != want {
			t.Fatalf("Enqueue #%d = %d, %v; want %d", i+1, n, err, want)
		}
	}
	// The same outbox id from another schema is another event.
	if n, err := f.sink.Enqueue(ctx, "interventions", accepted); err != nil || n != 2 {
		t.Fatalf("Enqueue from another source = %d, %v; want 2", n, err)
	}
	// Booking the intake appointment is a referral change and an
	// appointment change, but each subscription hears it once.
	sched := referralEvent(t, "r1", "scheduled")
	if n, err := f.sink.Enqueue(ctx, "referrals", sched); err != nil || n != 3 {
		t.Fatalf("Enqueue scheduled = %d, %v; want 3", n, err)
	}
	// Events of other kinds reach no one.
	fam := event(t, "handoff.families.v1.family.updated", &familiesv1.Family{Name: "clinics/north/families/f1"}, "clinics/north/families/f1")
	if n, err := f.sink.Enqueue(ctx, "families", fam); err != nil || n != 0 {
		t.Fatalf("Enqueue family event = %d, %v; want 0", n, err)
	}

	var topic int16
	var family string
	var payloadLen int
	if err := f.pool.QueryRow(ctx, `SELECT topic, family, coalesce(length(payload), 0) FROM deliveries
		WHERE subscription_id = $1 AND outbox_id = $2`, idOf(bothSub), sched.ID).Scan(&topic, &family, &payloadLen); err != nil {
		t.Fatal(err)
	}
	if webhooksv1.Topic(topic) != webhooksv1.Topic_TOPIC_REFERRAL_CHANGED || family != "clinics/north/families/f1" || payloadLen != 0 {
		t.Fatalf("delivery to both-topic subscription: topic %d family %q payload %d bytes", topic, family, payloadLen)
	}
	if err := f.pool.QueryRow(ctx, `SELECT topic, coalesce(length(payload), 0) FROM deliveries
		WHERE subscription_id = $1 AND outbox_id = $2`, idOf(apptSub), sched.ID).Scan(&topic, &payloadLen); err != nil {
		t.Fatal(err)
	}
	if webhooksv1.Topic(topic) != webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED || payloadLen != 0 {
		t.Fatalf("delivery to appointment subscription: topic %d payload %d bytes", topic, payloadLen)
	}
	// Only a FULL subscription's delivery keeps the payload.
	if err := f.pool.QueryRow(ctx, `SELECT coalesce(length(payload), 0) FROM deliveries
		WHERE subscription_id = $1 AND outbox_id = $2`, idOf(refSub), sched.ID).Scan(&payloadLen); err != nil || payloadLen == 0 {
		t.Fatalf("FULL subscription payload: %d bytes, %v", payloadLen, err)
	}
}

func idOf(sub *webhooksv1.Subscription) string {
	name := sub.GetName()
	return name[len("clinics/north/subscriptions/"):]
}

// receiver is a webhook endpoint that checks signatures and records what it
// accepted, in arrival order; fail decides whether to fail a request.
type receiver struct {
	t      *testing.T
	secret atomic.Value // string
	mu     sync.Mutex
	got    []map[string]any
	seen   map[string]bool
	acked  map[string]int // 2xx answers per delivery id
	fail   func(id string, body map[string]any) bool
	// failWith is the status of a failed answer (503 when 0).
	failWith int
	srv      *httptest.Server
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{t: t, seen: map[string]bool{}, acked: map[string]int{}}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	secret, _ := r.secret.Load().(string)
	if err := webhooks.Verify(secret, req.Header.Get(webhooks.SignatureHeader), body, time.Now()); err != nil {
		r.t.Errorf("receiver: %v", err)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var n map[string]any
	if err := json.Unmarshal(body, &n); err != nil {
		r.t.Errorf("receiver: %v", err)
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	id := req.Header.Get(webhooks.IDHeader)
	if id == "" || n["id"] != id {
		r.t.Errorf("receiver: header id %q, body id %v", id, n["id"])
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil && r.fail(id, n) {
		w.WriteHeader(cmp.Or(r.failWith, http.StatusServiceUnavailable))
		return
	}
	r.acked[id]++
	if !r.seen[id] {
		r.seen[id] = true
		r.got = append(r.got, n)
	}
	w.WriteHeader(http.StatusNoContent)
}

func (r *receiver) setFail(fail func(id string, body map[string]any) bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail = fail
}

func (r *receiver) received() []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]map[string]any(nil), r.got...)
}

func fastSender(db *pgdb.DB, fam familiesv1.FamiliesServiceClient, maxAttempts int) *webhooks.Sender {
	return webhooks.NewSender(webhooks.SenderConfig{
		DB: db, Families: fam, Log: slog.New(slog.DiscardHandler), MaxAttempts: maxAttempts,
		BaseBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, Timeout: 2 * time.Second,
		Interval: 20 * time.Millisecond, AllowPrivate: true, RefusedFor: time.Nanosecond,
	})
}

// pausingSender is fastSender for the tests of a receiver's Retry-After: a
// backoff of an hour leaves the pause it asks for the only wait that ends.
func pausingSender(db *pgdb.DB, maxAttempts int) *webhooks.Sender {
	return webhooks.NewSender(webhooks.SenderConfig{
		DB: db, Log: slog.New(slog.DiscardHandler), MaxAttempts: maxAttempts,
		BaseBackoff: 20 * time.Millisecond, MaxBackoff: time.Hour, Timeout: 2 * time.Second,
		Interval: 20 * time.Millisecond, AllowPrivate: true,
	})
}

func runSender(t *testing.T, s *webhooks.Sender) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDeadLetterHoldsOrderThenReplay(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	rcv := newReceiver(t)
	sub := f.subscribe(t, f.ehr, rcv.srv.URL+"/hooks", 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	rcv.secret.Store(sub.GetSecret())

	// r1 fails until told otherwise; r2 goes through meanwhile.
	var r1Down atomic.Bool
	r1Down.Store(true)
	rcv.setFail(func(_ string, n map[string]any) bool {
		return r1Down.Load() && n["resource"] == "clinics/north/referrals/r1"
	})
	for _, e := range []outbox.Stored{referralEvent(t, "r1", "accepted"), referralEvent(t, "r2", "accepted"),
		referralEvent(t, "r1", "scheduled"), referralEvent(t, "r2", "scheduled")} {
		if _, err := f.sink.Enqueue(ctx, "referrals", e); err != nil {
			t.Fatal(err)
		}
	}
	runSender(t, fastSender(f.db, nil, 3))

	list := func(filter string) []*webhooksv1.Delivery {
		resp, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: "clinics/north/subscriptions/-", Filter: filter})
		if err != nil {
			t.Fatalf("ListDeliveries: %v", err)
		}
		return resp.GetDeliveries()
	}
	// r1's first event dies after three attempts; only then may r1's
	// second one go (and fail the same way). r2 was never held up.
	eventually(t, 10*time.Second, "both r1 events dead", func() bool { return len(list("state = DEAD")) == 2 })
	dead := list("state = DEAD")
	if dead[0].GetAttemptCount() != 3 || dead[0].GetLastError() != "HTTP 503" || dead[0].GetEventType() != "handoff.referrals.v1.referral.accepted" {
		t.Fatalf("dead letter %v", dead[0])
	}
	got := rcv.received()
	if types := typesOf(t, f.client, f.admin, sub.GetName(), got); len(got) != 2 || got[0]["resource"] != "clinics/north/referrals/r2" ||
		fmt.Sprint(types) != "[handoff.referrals.v1.referral.accepted handoff.referrals.v1.referral.scheduled]" {
		t.Fatalf("received %v (%v); want r2's two events in order", got, types)
	}

	// An administrator replays the dead letters once the receiver is fixed.
	r1Down.Store(false)
	for _, d := range dead {
		out, err := f.client.ReplayDelivery(f.admin, &webhooksv1.ReplayDeliveryRequest{Name: d.GetName()})
		// No attempt yet, so no error of one (before, the dead letter's
		// stayed, and the retrying gauge counted it).
		if err != nil || out.GetState() != webhooksv1.DeliveryState_DELIVERY_STATE_PENDING || out.GetAttemptCount() != 0 || out.GetLastError() != "" {
			t.Fatalf("ReplayDelivery = %v, %v", out, err)
		}
	}
	if _, err := f.client.ReplayDelivery(f.admin, &webhooksv1.ReplayDeliveryRequest{Name: dead[0].GetName()}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("replaying a pending delivery = %v, want FAILED_PRECONDITION", err)
	}
	eventually(t, 10*time.Second, "replayed deliveries", func() bool { return len(rcv.received()) == 4 })
	got = rcv.received()
	if got[2]["id"] != aipID(dead[0].GetName()) || got[3]["id"] != aipID(dead[1].GetName()) {
		t.Fatalf("replayed out of order: %v", got[2:])
	}
	// The receiver counts a POST before the sender records it as delivered.
	eventually(t, 10*time.Second, "four deliveries recorded as delivered", func() bool { return len(list("state = DELIVERED")) == 4 })
}

func aipID(name string) string {
	for i := len(name) - 1; i >= 0; i-- {
		if name[i] == '/' {
			return name[i+1:]
		}
	}
	return name
}

// eventTypes maps each delivery of sub to its event's type, as its
// administrator lists them: an identifiers-only notification no longer
// says which transition it announces.
func eventTypes(t *testing.T, c webhooksv1.WebhooksServiceClient, admin context.Context, sub string) map[string]string {
	t.Helper()
	out := map[string]string{}
	token := ""
	for {
		resp, err := c.ListDeliveries(admin, &webhooksv1.ListDeliveriesRequest{Parent: sub, PageSize: 1000, PageToken: token})
		if err != nil {
			t.Fatalf("ListDeliveries: %v", err)
		}
		for _, d := range resp.GetDeliveries() {
			out[aipID(d.GetName())] = d.GetEventType()
		}
		if token = resp.GetNextPageToken(); token == "" {
			return out
		}
	}
}

// typesOf is the event type of each notification, in the order received.
func typesOf(t *testing.T, c webhooksv1.WebhooksServiceClient, admin context.Context, sub string, ns []map[string]any) []string {
	t.Helper()
	types := eventTypes(t, c, admin, sub)
	var out []string
	for _, n := range ns {
		out = append(out, types[n["id"].(string)])
	}
	return out
}

func TestRetriesUntilTheReceiverRecovers(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	rcv, sub := f.receiving(t, f.ehr, 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	var calls atomic.Int32
	rcv.setFail(func(string, map[string]any) bool { return calls.Add(1) <= 4 })
	states := []string{"accepted", "scheduled", "completed"}
	for _, st := range states {
		if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r1", st)); err != nil {
			t.Fatal(err)
		}
	}
	runSender(t, fastSender(f.db, nil, 10))
	eventually(t, 10*time.Second, "three notifications", func() bool { return len(rcv.received()) == 3 })
	types := typesOf(t, f.client, f.admin, sub.GetName(), rcv.received())
	for i, n := range rcv.received() {
		// Identifiers only: the type says a referral changed, not how.
		if types[i] != "handoff.referrals.v1.referral."+states[i] || n["type"] != "handoff.referrals.v1.referral.changed" ||
			n["topic"] != "REFERRAL_CHANGED" || n["data"] != nil {
			t.Fatalf("notification %d (%s): %v", i, types[i], n)
		}
	}
	resp, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: sub.GetName()})
	if err != nil || len(resp.GetDeliveries()) != 3 || resp.GetDeliveries()[0].GetAttemptCount() != 5 {
		t.Fatalf("deliveries %v, %v; want the first after 5 attempts", resp, err)
	}
}

// fakeFamilies answers CreateDisclosure as the families service would,
// with or without a consent.
type fakeFamilies struct {
	familiesv1.FamiliesServiceClient
	consent atomic.Bool
	// covers, when set, is the only kind of information the consent covers.
	covers familiesv1.InformationKind
	mu     sync.Mutex
	asked  []*familiesv1.CreateDisclosureRequest
	// asking, if set, runs as each disclosure is asked for.
	asking func()
	// unavailable is how many of the next asks fail as an outage does.
	unavailable atomic.Int32
}

// records are the requests that would record a disclosure, not only check
// one (validate_only); call with mu held.
func (f *fakeFamilies) records() []*familiesv1.CreateDisclosureRequest {
	var out []*familiesv1.CreateDisclosureRequest
	for _, r := range f.asked {
		if !r.GetValidateOnly() {
			out = append(out, r)
		}
	}
	return out
}

func (f *fakeFamilies) CreateDisclosure(_ context.Context, req *familiesv1.CreateDisclosureRequest, _ ...grpc.CallOption) (*familiesv1.Disclosure, error) {
	f.mu.Lock()
	f.asked = append(f.asked, req)
	asking := f.asking
	f.mu.Unlock()
	if asking != nil {
		asking()
	}
	if f.unavailable.Add(-1) >= 0 {
		return nil, status.Error(codes.Unavailable, "families: down")
	}
	if !f.consent.Load() || (f.covers != 0 && req.GetDisclosure().GetInformation() != f.covers) {
		return nil, status.Error(codes.FailedPrecondition, "no consent covers this disclosure")
	}
	return &familiesv1.Disclosure{Name: req.GetParent() + "/disclosures/x"}, nil
}

func TestFullPayloadOnlyWithConsent(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	rcv, sub := f.receiving(t, f.ehr, webhooksv1.PayloadKind_PAYLOAD_KIND_FULL, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	fam := &fakeFamilies{}
	runSender(t, fastSender(f.db, fam, 10))

	if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r1", "accepted")); err != nil {
		t.Fatal(err)
	}
	// Without consent the EHR hears nothing of the referral, not even that
	// it changed: the notification is withheld, as the API hides the
	// referral from it.
	eventually(t, 5*time.Second, "the first notification withheld", func() bool {
		resp, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: sub.GetName(), Filter: "state = WITHDRAWN"})
		return err == nil && len(resp.GetDeliveries()) == 1
	})
	if got := rcv.received(); len(got) != 0 {
		t.Fatalf("without consent: %v", got)
	}
	fam.consent.Store(true)
	if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r1", "scheduled")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "second notification", func() bool { return len(rcv.received()) == 1 })
	n := rcv.received()[0]
	data, _ := n["data"].(map[string]any)
	if data["name"] != "clinics/north/referrals/r1" || n["notice"] != webhooks.Notice || n["type"] != "handoff.referrals.v1.referral.scheduled" {
		t.Fatalf("with consent: %v", n)
	}
	fam.mu.Lock()
	defer fam.mu.Unlock()
	d := fam.asked[len(fam.asked)-1]
	if d.GetParent() != "clinics/north/families/f1" || d.GetDisclosure().GetRecipient() != "ehr-1" ||
		d.GetDisclosure().GetInformation() != familiesv1.InformationKind_INFORMATION_KIND_REFERRALS ||
		d.GetDisclosure().GetChannel() != familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_WEBHOOK ||
		d.GetDisclosure().GetResource() != "clinics/north/referrals/r1" || !strings.HasPrefix(d.GetRequestId(), "webhook-") {
		t.Fatalf("disclosure asked: %v", d)
	}
	// Each notification's attempt checks the consent; the first, refused,
	// goes no further, and the second's disclosure is recorded once, as
	// its connection to the receiver stood.
	if n := len(fam.records()); len(fam.asked) != 3 || n != 1 {
		t.Fatalf("%d calls of which %d records, want 3 and 1", len(fam.asked), n)
	}
}

// slowRecords is fakeFamilies whose records of disclosures (not its
// checks) take delay.
type slowRecords struct {
	*fakeFamilies
	delay time.Duration
}

func (f *slowRecords) CreateDisclosure(ctx context.Context, req *familiesv1.CreateDisclosureRequest, opts ...grpc.CallOption) (*familiesv1.Disclosure, error) {
	if !req.GetValidateOnly() {
		time.Sleep(f.delay)
	}
	return f.fakeFamilies.CreateDisclosure(ctx, req, opts...)
}

// The disclosure's record, made as the connection to the receiver comes,
// is not the receiver's time: a families service slow to record it leaves
// the receiver the whole of the attempt's Timeout, and the notification
// is delivered, not timed out (and blamed on the receiver) after its
// disclosure was recorded.
func TestSlowDisclosureRecordLeavesTheReceiverItsTime(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	rcv, sub := f.receiving(t, f.ehr, webhooksv1.PayloadKind_PAYLOAD_KIND_FULL, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	// Each alone fits the attempt's Timeout with room for a busy machine;
	// together they do not.
	rcv.setFail(func(string, map[string]any) bool { time.Sleep(1500 * time.Millisecond); return false })
	fam := &slowRecords{fakeFamilies: &fakeFamilies{}, delay: 2500 * time.Millisecond}
	fam.consent.Store(true)
	runSender(t, webhooks.NewSender(webhooks.SenderConfig{DB: f.db, Families: fam, Log: slog.New(slog.DiscardHandler), MaxAttempts: 1,
		BaseBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, Timeout: 3 * time.Second, Interval: 20 * time.Millisecond, AllowPrivate: true}))
	if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r1", "accepted")); err != nil {
		t.Fatal(err)
	}
	var last *webhooksv1.Delivery
	eventually(t, 20*time.Second, "the delivery to end", func() bool {
		resp, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: sub.GetName()})
		if err != nil || len(resp.GetDeliveries()) != 1 {
			return false
		}
		last = resp.GetDeliveries()[0]
		return last.GetState() != webhooksv1.DeliveryState_DELIVERY_STATE_PENDING
	})
	if last.GetState() != webhooksv1.DeliveryState_DELIVERY_STATE_DELIVERED || len(rcv.received()) != 1 {
		t.Fatalf("a record taking 2.5 s and a receiver 1.5 s, in a 3 s attempt: %v (%q), %d received; want it delivered",
			last.GetState(), last.GetLastError(), len(rcv.received()))
	}
}

// A receiver that cannot be reached (nothing listens at its address) was
// disclosed nothing: every attempt checks the consent, none records a
// disclosure, and the accounting of disclosures lists none.
func TestUnreachableReceiverRecordsNoDisclosure(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := "http://" + ln.Addr().String() + "/hooks"
	ln.Close()
	sub := f.subscribe(t, f.ehr, gone, webhooksv1.PayloadKind_PAYLOAD_KIND_FULL, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	fam := &fakeFamilies{}
	fam.consent.Store(true)
	runSender(t, fastSender(f.db, fam, 2))
	if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r1", "accepted")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "a dead letter", func() bool {
		resp, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: sub.GetName(), Filter: "state = DEAD"})
		return err == nil && len(resp.GetDeliveries()) == 1
	})
	fam.mu.Lock()
	defer fam.mu.Unlock()
	if n := len(fam.records()); n != 0 || len(fam.asked) < 2 {
		t.Fatalf("two attempts at an unreachable receiver: %d calls, %d of them records; want a check each and no record", len(fam.asked), n)
	}
}

func TestReminderDueAtItsTimeOrWithdrawn(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	rcv, sub := f.receiving(t, f.env.As("north", "reminders-1", auth.RoleReminders), 0, webhooksv1.Topic_TOPIC_REMINDER_DUE)
	runSender(t, fastSender(f.db, nil, 10))

	// Far enough ahead that the three writes below come before it.
	due := time.Now().Add(4 * time.Second)
	soon := &interventionsv1.Reminder{Name: "clinics/north/reminders/m1", DueTime: timestamppb.New(due)}
	later := &interventionsv1.Reminder{Name: "clinics/north/reminders/m2", DueTime: timestamppb.New(due)}
	for _, m := range []*interventionsv1.Reminder{soon, later} {
		if _, err := f.sink.Enqueue(ctx, "interventions", event(t, "handoff.interventions.v1.reminder.created", m, m.GetName())); err != nil {
			t.Fatal(err)
		}
	}
	// m2 is cancelled before it is due: its notification is withdrawn.
	if _, err := f.sink.Enqueue(ctx, "interventions", event(t, "handoff.interventions.v1.reminder.cancelled", later, later.GetName())); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if got := rcv.received(); len(got) != 0 {
		t.Fatalf("sent before due: %v", got)
	}
	eventually(t, 10*time.Second, "the due reminder", func() bool { return len(rcv.received()) == 1 })
	if time.Now().Before(due) {
		t.Fatal("sent before its due time")
	}
	if n := rcv.received()[0]; n["resource"] != soon.GetName() || n["topic"] != "REMINDER_DUE" {
		t.Fatalf("got %v", n)
	}
	time.Sleep(300 * time.Millisecond)
	resp, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: sub.GetName(), Filter: "state = WITHDRAWN"})
	if err != nil || len(resp.GetDeliveries()) != 1 || resp.GetDeliveries()[0].GetResource() != later.GetName() || len(rcv.received()) != 1 {
		t.Fatalf("withdrawn %v, %v; received %d", resp, err, len(rcv.received()))
	}
}

// A reminder's notification that died while the automation was down is
// withdrawn once the reminder is handled another way: a replay after the
// outage must not send a reminder already delivered or cancelled.
func TestDeadReminderLetterIsWithdrawnOnceHandled(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	rcv, sub := f.receiving(t, f.env.As("north", "reminders-1", auth.RoleReminders), 0, webhooksv1.Topic_TOPIC_REMINDER_DUE)
	rcv.setFail(func(string, map[string]any) bool { return true })
	runSender(t, fastSender(f.db, nil, 2))
	m := &interventionsv1.Reminder{Name: "clinics/north/reminders/m1", DueTime: timestamppb.New(time.Now())}
	if _, err := f.sink.Enqueue(ctx, "interventions", event(t, "handoff.interventions.v1.reminder.created", m, m.GetName())); err != nil {
		t.Fatal(err)
	}
	list := func(filter string) []*webhooksv1.Delivery {
		resp, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: sub.GetName(), Filter: filter})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetDeliveries()
	}
	eventually(t, 5*time.Second, "a dead letter", func() bool { return len(list("state = DEAD")) == 1 })
	dead := list("state = DEAD")[0]
	// Polled and delivered meanwhile: the dead letter goes.
	if _, err := f.sink.Enqueue(ctx, "interventions", event(t, "handoff.interventions.v1.reminder.delivered", m, m.GetName())); err != nil {
		t.Fatal(err)
	}
	if w := list("state = WITHDRAWN"); len(w) != 1 || w[0].GetName() != dead.GetName() {
		t.Fatalf("withdrawn %v; want the dead letter %s", w, dead.GetName())
	}
	_, err := f.client.ReplayDelivery(f.admin, &webhooksv1.ReplayDeliveryRequest{Name: dead.GetName()})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("replaying a withdrawn letter = %v, want FAILED_PRECONDITION", err)
	}
}

func TestSenderRefusesPrivateAddresses(t *testing.T) {
	f := setup(t)
	rcv, sub := f.receiving(t, f.ehr, 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	if _, err := f.sink.Enqueue(context.Background(), "referrals", referralEvent(t, "r1", "accepted")); err != nil {
		t.Fatal(err)
	}
	s := webhooks.NewSender(webhooks.SenderConfig{DB: f.db, Log: slog.New(slog.DiscardHandler), MaxAttempts: 1})
	if _, err := s.Once(context.Background()); err != nil {
		t.Fatal(err)
	}
	resp, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: sub.GetName()})
	if err != nil || len(resp.GetDeliveries()) != 1 {
		t.Fatalf("ListDeliveries = %v, %v", resp, err)
	}
	d := resp.GetDeliveries()[0]
	if d.GetState() != webhooksv1.DeliveryState_DELIVERY_STATE_DEAD || d.GetLastError() != "callback address is not a public unicast address" {
		t.Fatalf("delivery to 127.0.0.1 without AllowPrivate: %v", d)
	}
	if got := rcv.received(); len(got) != 0 {
		t.Fatalf("received %v", got)
	}
}

func TestSecretsAreSealedAtRest(t *testing.T) {
	pool, schema := pgtest.Schema(t, webhooks.Migrations()...)
	db := pgtest.App(t, schema)
	key := make([]byte, 32)
	key[0] = 7
	box, err := webhooks.NewSecretBox(key)
	if err != nil {
		t.Fatal(err)
	}
	srv := webhooks.New(db, webhooks.Config{AllowInsecure: true, AllowPrivate: true, Secrets: box})
	env := servicetest.Start(t, webhooks.Policy(), func(s *grpc.Server) { webhooksv1.RegisterWebhooksServiceServer(s, srv) })
	c := webhooksv1.NewWebhooksServiceClient(env.Conn)
	ctx := env.As("north", "ehr-1", auth.RoleEHR)
	rcv := newReceiver(t)
	req := &webhooksv1.CreateSubscriptionRequest{Parent: "clinics/north", RequestId: "create-1",
		Subscription: &webhooksv1.Subscription{Url: rcv.srv.URL, Topics: []webhooksv1.Topic{webhooksv1.Topic_TOPIC_REFERRAL_CHANGED}}}
	sub, err := c.CreateSubscription(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.CreateSubscription(ctx, req)
	if err != nil || again.GetName() != sub.GetName() || again.GetSecret() != sub.GetSecret() {
		t.Fatalf("retried Create = %v, %v; want the first answer, secret included", again, err)
	}
	var stored string
	var leaks int
	if err := pool.QueryRow(context.Background(), `SELECT secret, (SELECT count(*) FROM idempotency_keys
		WHERE position($1::bytea IN response) > 0) FROM subscriptions`, []byte(sub.GetSecret())).Scan(&stored, &leaks); err != nil {
		t.Fatal(err)
	}
	if stored == sub.GetSecret() || leaks != 0 || len(stored) < 40 {
		t.Fatalf("secret at rest %q, %d stored responses hold it in clear", stored, leaks)
	}
	rcv.secret.Store(sub.GetSecret())
	if _, err := (&webhooks.Sink{DB: db}).Enqueue(context.Background(), "referrals", referralEvent(t, "r1", "accepted")); err != nil {
		t.Fatal(err)
	}
	s := webhooks.NewSender(webhooks.SenderConfig{DB: db, Log: slog.New(slog.DiscardHandler), AllowPrivate: true, Secrets: box})
	if _, err := s.Once(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := rcv.received(); len(got) != 1 {
		t.Fatalf("received %v; the sender must sign with the opened secret", got)
	}
}

// Two senders share the work without reordering a resource's events or
// sending one twice.
func TestConcurrentSendersKeepOrder(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	rcv, sub := f.receiving(t, f.ehr, 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	var calls atomic.Int32
	// Every third request fails, so retries interleave with first attempts.
	rcv.setFail(func(string, map[string]any) bool { return calls.Add(1)%3 == 0 })
	states := []string{"accepted", "scheduled", "completed", "updated"}
	for _, st := range states {
		for _, r := range []string{"r1", "r2", "r3", "r4", "r5"} {
			if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, r, st)); err != nil {
				t.Fatal(err)
			}
		}
	}
	runSender(t, fastSender(f.db, nil, 20))
	runSender(t, fastSender(f.db, nil, 20))
	eventually(t, 15*time.Second, "twenty notifications", func() bool { return len(rcv.received()) == 20 })
	byRef := map[string][]string{}
	types := eventTypes(t, f.client, f.admin, sub.GetName())
	for _, n := range rcv.received() {
		byRef[n["resource"].(string)] = append(byRef[n["resource"].(string)], types[n["id"].(string)])
	}
	for ref, got := range byRef {
		for i, st := range states {
			if got[i] != "handoff.referrals.v1.referral."+st {
				t.Fatalf("%s received %v", ref, got)
			}
		}
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	for id, n := range rcv.acked {
		if n != 1 {
			t.Fatalf("delivery %s acknowledged %d times", id, n)
		}
	}
}

// A full notification is one disclosure however many attempts it takes,
// and one more when an administrator replays it as a dead letter: the
// sender records it under a request id of the delivery and its replays
// (the families service records a retried id once), and checks the
// consent before every attempt.
func TestDisclosureOncePerDeliveryAndReplay(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	rcv, _ := f.receiving(t, f.ehr, webhooksv1.PayloadKind_PAYLOAD_KIND_FULL, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	var down atomic.Bool
	down.Store(true)
	rcv.setFail(func(string, map[string]any) bool { return down.Load() })
	fam := &fakeFamilies{}
	fam.consent.Store(true)
	runSender(t, fastSender(f.db, fam, 3))
	if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r1", "accepted")); err != nil {
		t.Fatal(err)
	}
	var dead []*webhooksv1.Delivery
	eventually(t, 10*time.Second, "a dead letter", func() bool {
		resp, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: "clinics/north/subscriptions/-", Filter: "state = DEAD"})
		dead = resp.GetDeliveries()
		return err == nil && len(dead) == 1
	})
	ids := func() (records int, distinct []string) {
		fam.mu.Lock()
		defer fam.mu.Unlock()
		for _, r := range fam.records() {
			if !slices.Contains(distinct, r.GetRequestId()) {
				distinct = append(distinct, r.GetRequestId())
			}
		}
		return len(fam.records()), distinct
	}
	if n, d := ids(); n != 3 || len(d) != 1 || len(d[0]) > 64 || d[0] == "" {
		t.Fatalf("three attempts asked to record %d times under request ids %q; want 3 under one id", n, d)
	}
	down.Store(false)
	if _, err := f.client.ReplayDelivery(f.admin, &webhooksv1.ReplayDeliveryRequest{Name: dead[0].GetName()}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the replayed notification", func() bool { return len(rcv.received()) == 1 })
	if n, d := ids(); n != 4 || len(d) != 2 {
		t.Fatalf("after a replay: %d records under request ids %q; want 4 under two ids", n, d)
	}
	if n := rcv.received()[0]; n["data"] == nil || n["notice"] != webhooks.Notice {
		t.Fatalf("replayed notification without its data: %v", n)
	}
	fam.mu.Lock()
	defer fam.mu.Unlock()
	// The consent was checked before every attempt (three of the
	// delivery's, one of the replay's), each retry's record answered from
	// the first.
	if checks := len(fam.asked) - len(fam.records()); checks != 4 {
		t.Fatalf("%d consent checks, want one before each of the 4 attempts", checks)
	}
}

// downFamilies is fakeFamilies that cannot be reached while down is set.
type downFamilies struct {
	*fakeFamilies
	down  atomic.Bool
	tries atomic.Int32 // calls while down
}

func (f *downFamilies) CreateDisclosure(ctx context.Context, req *familiesv1.CreateDisclosureRequest, opts ...grpc.CallOption) (*familiesv1.Disclosure, error) {
	if f.down.Load() {
		f.tries.Add(1)
		return nil, status.Error(codes.Unavailable, "families is down")
	}
	return f.fakeFamilies.CreateDisclosure(ctx, req, opts...)
}

// A delivery whose consent cannot be checked (the families service is
// down) is not the receiver's failure: it never becomes a dead letter,
// however many tries, uses none of the receiver's attempts, and goes out
// once the check answers.
func TestOwnOutageMakesNoDeadLetter(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	rcv, _ := f.receiving(t, f.ehr, webhooksv1.PayloadKind_PAYLOAD_KIND_FULL, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	fam := &downFamilies{fakeFamilies: &fakeFamilies{}}
	fam.consent.Store(true)
	fam.down.Store(true)
	runSender(t, fastSender(f.db, fam, 2))
	if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r1", "accepted")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "tries past the attempt limit", func() bool { return fam.tries.Load() >= 4 })
	var state int16
	if err := f.pool.QueryRow(ctx, `SELECT state FROM deliveries`).Scan(&state); err != nil ||
		webhooksv1.DeliveryState(state) != webhooksv1.DeliveryState_DELIVERY_STATE_PENDING {
		t.Fatalf("delivery state %v (%v) while families is down; want PENDING", webhooksv1.DeliveryState(state), err)
	}
	// Those tries were not the receiver's: its own first failure after
	// the outage leaves it the rest of its attempts.
	var failed atomic.Bool
	rcv.setFail(func(string, map[string]any) bool { return !failed.Swap(true) })
	fam.down.Store(false)
	eventually(t, 5*time.Second, "the notification", func() bool { return len(rcv.received()) == 1 })
	if n := rcv.received()[0]; n["data"] == nil {
		t.Fatalf("delivered without its payload: %v", n)
	}
}

// refusingFamilies refuses the sender itself, as the families service does
// when the sender's token lacks its role.
type refusingFamilies struct {
	*fakeFamilies
	tries atomic.Int32
	// invalid answers INVALID_ARGUMENT, a refusal of one request, instead
	// of refusing the sender.
	invalid bool
}

func (f *refusingFamilies) CreateDisclosure(context.Context, *familiesv1.CreateDisclosureRequest, ...grpc.CallOption) (*familiesv1.Disclosure, error) {
	f.tries.Add(1)
	if f.invalid {
		return nil, status.Error(codes.InvalidArgument, "disclosure.recipient: must be at most 200 characters")
	}
	return nil, status.Error(codes.PermissionDenied, "role webhook_sender may not call CreateDisclosure")
}

// A consent check refused as an invalid request is this delivery's
// failure, not the sender's: its attempts count and it ends as a dead
// letter, instead of holding back its resource's notifications for good.
func TestDeliveryTheFamiliesServiceFindsInvalidDies(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	rcv, _ := f.receiving(t, f.ehr, webhooksv1.PayloadKind_PAYLOAD_KIND_FULL, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	fam := &refusingFamilies{fakeFamilies: &fakeFamilies{}, invalid: true}
	runSender(t, fastSender(f.db, fam, 2))
	if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r1", "accepted")); err != nil {
		t.Fatal(err)
	}
	var state, attempts int16
	var lastError string
	eventually(t, 5*time.Second, "a dead letter", func() bool {
		err := f.pool.QueryRow(ctx, `SELECT state, attempts, last_error FROM deliveries`).Scan(&state, &attempts, &lastError)
		return err == nil && webhooksv1.DeliveryState(state) == webhooksv1.DeliveryState_DELIVERY_STATE_DEAD
	})
	if attempts != 2 || !strings.Contains(lastError, "at most 200 characters") {
		t.Fatalf("dead letter after %d attempts, last error %q; want 2, the families service's reason", attempts, lastError)
	}
	if len(rcv.received()) != 0 {
		t.Fatal("sent without its consent check")
	}
}

// A sender the families service refuses cannot be cured by waiting: the
// delivery is held (not the receiver's failure, so never dead), but as an
// error for an operator, with the reason on the delivery.
func TestSenderRefusedByFamiliesIsAnError(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	rcv, _ := f.receiving(t, f.ehr, webhooksv1.PayloadKind_PAYLOAD_KIND_FULL, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	fam := &refusingFamilies{fakeFamilies: &fakeFamilies{}}
	logs := &servicetest.LogBuffer{}
	s := webhooks.NewSender(webhooks.SenderConfig{
		DB: f.db, Families: fam, Log: slog.New(slog.NewJSONHandler(logs, nil)), MaxAttempts: 2,
		BaseBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Timeout: 2 * time.Second,
		Interval: 20 * time.Millisecond, AllowPrivate: true,
	})
	runSender(t, s)
	if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r1", "accepted")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "tries past the attempt limit", func() bool { return fam.tries.Load() >= 3 })
	// Read between tries: a try in flight has claimed an attempt it gives
	// back when refused, so a read during one sees it counted.
	var state, attempts int16
	var lastError string
	var err error
	eventually(t, 5*time.Second, "the delivery between tries", func() bool {
		err = f.pool.QueryRow(ctx, `SELECT state, attempts, last_error FROM deliveries`).Scan(&state, &attempts, &lastError)
		return err != nil || attempts == 0
	})
	if err != nil || webhooksv1.DeliveryState(state) != webhooksv1.DeliveryState_DELIVERY_STATE_PENDING || attempts != 0 ||
		!strings.Contains(lastError, "PermissionDenied") {
		t.Fatalf("delivery: state %v, attempts %d, last error %q (%v); want PENDING, 0, the refusal", webhooksv1.DeliveryState(state), attempts, lastError, err)
	}
	if len(rcv.received()) != 0 {
		t.Fatal("sent without its consent check")
	}
	var errors int
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["level"] == "ERROR" && strings.Contains(fmt.Sprint(rec["reason"]), "PermissionDenied") {
			errors++
		}
	}
	if errors == 0 {
		t.Fatalf("no error logged for a sender the families service refuses:\n%s", logs)
	}
}

// A subscription's deliveries: none yet is an empty page, a subscription
// that does not exist is NOT_FOUND rather than "nothing was sent".
func TestDeliveriesOfAMissingSubscription(t *testing.T) {
	f := setup(t)
	sub := f.subscribe(t, f.ehr, "https://ehr.example.org/hooks", 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	resp, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: sub.GetName()})
	if err != nil || len(resp.GetDeliveries()) != 0 {
		t.Fatalf("a new subscription's deliveries: %v, %v", resp, err)
	}
	_, err = f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: "clinics/north/subscriptions/no-such-one"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("deliveries of a missing subscription: %v, want NOT_FOUND", err)
	}
	if _, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: "clinics/north/subscriptions/-"}); err != nil {
		t.Fatalf("every subscription's deliveries: %v", err)
	}
}

// A notification's time is when the change happened, not when a relay
// held up for hours got to it.
func TestNotificationTimeIsTheChanges(t *testing.T) {
	f := setup(t)
	rcv, sub := f.receiving(t, f.ehr, 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	e := referralEvent(t, "r1", "accepted")
	e.Created = time.Now().Add(-2 * time.Hour).Truncate(time.Microsecond)
	if _, err := f.sink.Enqueue(context.Background(), "referrals", e); err != nil {
		t.Fatal(err)
	}
	runSender(t, fastSender(f.db, nil, 3))
	eventually(t, 5*time.Second, "the notification", func() bool { return len(rcv.received()) == 1 })
	at, err := time.Parse(time.RFC3339Nano, fmt.Sprint(rcv.received()[0]["time"]))
	if err != nil || !at.Equal(e.Created) {
		t.Fatalf("notification time %v (%v), want the change's %v", at, err, e.Created)
	}
	resp, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: sub.GetName()})
	if err != nil || len(resp.GetDeliveries()) != 1 || !resp.GetDeliveries()[0].GetCreateTime().AsTime().Equal(e.Created) {
		t.Fatalf("delivery %v, %v; want create_time %v", resp, err, e.Created)
	}
}

// receiving subscribes a new receiver for the caller of ctx, and gives the
// receiver the subscription's secret to check signatures with.
func (f *fixture) receiving(t *testing.T, ctx context.Context, payload webhooksv1.PayloadKind, topics ...webhooksv1.Topic) (*receiver, *webhooksv1.Subscription) {
	t.Helper()
	rcv := newReceiver(t)
	sub := f.subscribe(t, ctx, rcv.srv.URL, payload, topics...)
	rcv.secret.Store(sub.GetSecret())
	return rcv, sub
}

// ehrAndStaff subscribes the EHR and the clinic's staff, each with a
// receiver of its own, to referral changes by identifiers only.
func (f *fixture) ehrAndStaff(t *testing.T) (ehrRcv, staffRcv *receiver, ehrSub *webhooksv1.Subscription) {
	t.Helper()
	ehrRcv, ehrSub = f.receiving(t, f.ehr, webhooksv1.PayloadKind_PAYLOAD_KIND_ID_ONLY, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	staffRcv, _ = f.receiving(t, f.admin, webhooksv1.PayloadKind_PAYLOAD_KIND_ID_ONLY, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	return ehrRcv, staffRcv, ehrSub
}

// withheldFromEHR waits for the staff's notification and the EHR's
// delivery withheld.
func (f *fixture) withheldFromEHR(t *testing.T, ehrSub *webhooksv1.Subscription, staffRcv *receiver) {
	t.Helper()
	eventually(t, 5*time.Second, "the staff's notification and the EHR's withheld", func() bool {
		resp, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: ehrSub.GetName(), Filter: "state = WITHDRAWN"})
		return err == nil && len(resp.GetDeliveries()) == 1 && len(staffRcv.received()) == 1
	})
}

// An id-only notification to the EHR still tells it that a family's
// record changed: it goes only while a consent covers the record for the
// EHR (checked, not recorded: nothing of the record goes), and is withheld
// otherwise. The clinic's own staff hear of every change.
func TestIDOnlyNotificationToTheEHRNeedsConsent(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	ehrRcv, staffRcv, ehrSub := f.ehrAndStaff(t)
	fam := &fakeFamilies{}
	runSender(t, fastSender(f.db, fam, 10))
	if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r1", "accepted")); err != nil {
		t.Fatal(err)
	}
	f.withheldFromEHR(t, ehrSub, staffRcv)
	if got := ehrRcv.received(); len(got) != 0 {
		t.Fatalf("the EHR heard without consent: %v", got)
	}
	fam.consent.Store(true)
	if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r1", "scheduled")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the EHR's notification", func() bool { return len(ehrRcv.received()) == 1 })
	if n := ehrRcv.received()[0]; n["data"] != nil || n["type"] != "handoff.referrals.v1.referral.changed" {
		t.Fatalf("id-only notification: %v", n)
	}
	fam.mu.Lock()
	defer fam.mu.Unlock()
	if len(fam.asked) != 2 || len(fam.records()) != 0 || fam.asked[0].GetDisclosure().GetRecipient() != "ehr-1" ||
		fam.asked[0].GetDisclosure().GetInformation() != familiesv1.InformationKind_INFORMATION_KIND_REFERRALS {
		t.Fatalf("asked %v (%d records); want two checks for the EHR's referrals, no record", fam.asked, len(fam.records()))
	}
}

// A rotation's grace is the database's, whatever the service's clock
// says: it lasts RotationGrace from the rotation by the database's clock
// (by which the sender signs with the secret before), a second rotation
// within it is refused, and one after it goes through, not refused for
// a grace no read shows.
func TestRotationJudgesTheGraceByOneClock(t *testing.T) {
	for _, skew := range []time.Duration{-48 * time.Hour, 48 * time.Hour} {
		f := setupWith(t, webhooks.Config{Now: func() time.Time { return time.Now().Add(skew) }})
		sub := f.subscribe(t, f.admin, "https://ehr.example.org/hooks", 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
		before := time.Now()
		first, err := f.client.RotateSubscriptionSecret(f.admin, &webhooksv1.RotateSubscriptionSecretRequest{Name: sub.GetName()})
		if err != nil {
			t.Fatal(err)
		}
		if end := first.GetPreviousSecretExpireTime().AsTime(); end.Before(before.Add(webhooks.RotationGrace-time.Minute)) ||
			end.After(time.Now().Add(webhooks.RotationGrace+time.Minute)) {
			t.Fatalf("service clock %v off: the grace ends at %v; want a day from now by the database's clock", skew, end)
		}
		_, err = f.client.RotateSubscriptionSecret(f.admin, &webhooksv1.RotateSubscriptionSecretRequest{Name: sub.GetName()})
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("service clock %v off: a second rotation within the grace: %v; want FAILED_PRECONDITION", skew, err)
		}
		// The grace over by the database's clock: the next rotation goes.
		if _, err := f.pool.Exec(context.Background(), `UPDATE subscriptions SET previous_secret_expire_time = now() - interval '1 second'`); err != nil {
			t.Fatal(err)
		}
		second, err := f.client.RotateSubscriptionSecret(f.admin, &webhooksv1.RotateSubscriptionSecretRequest{Name: sub.GetName()})
		if err != nil || second.GetSecret() == "" || second.GetSecret() == first.GetSecret() {
			t.Fatalf("service clock %v off: a rotation after the grace: %v; want a new secret", skew, err)
		}
	}
}

// A rotated secret is shown once, in the rotation's answer (a retry gets
// the same one); for RotationGrace after, notifications carry a signature
// by each secret, so a receiver on either accepts them. Another's
// subscription cannot be rotated.
func TestRotateSecretSignsWithBothDuringTheGrace(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	type post struct {
		header string
		body   []byte
	}
	posts := make(chan post, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		posts <- post{r.Header.Get(webhooks.SignatureHeader), body}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	sub := f.subscribe(t, f.admin, srv.URL, 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	if sub.GetPreviousSecretExpireTime() != nil {
		t.Fatalf("a new subscription has a previous secret: %v", sub)
	}
	req := &webhooksv1.RotateSubscriptionSecretRequest{Name: sub.GetName(), RequestId: "rotate-1"}
	rotated, err := f.client.RotateSubscriptionSecret(f.admin, req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := f.client.RotateSubscriptionSecret(f.admin, req)
	if err != nil || again.GetSecret() != rotated.GetSecret() {
		t.Fatalf("retried rotation: %v, %v; want the first answer's secret", again.GetSecret(), err)
	}
	grace := time.Until(rotated.GetPreviousSecretExpireTime().AsTime())
	if rotated.GetSecret() == "" || rotated.GetSecret() == sub.GetSecret() || grace < webhooks.RotationGrace-time.Minute || grace > webhooks.RotationGrace {
		t.Fatalf("rotated: secret changed %v, old one kept for %v", rotated.GetSecret() != sub.GetSecret(), grace)
	}
	if got, err := f.client.GetSubscription(f.admin, &webhooksv1.GetSubscriptionRequest{Name: sub.GetName()}); err != nil ||
		got.GetSecret() != "" || got.GetPreviousSecretExpireTime() == nil {
		t.Fatalf("read after rotation: %v, %v; want no secret, the grace's end", got, err)
	}
	// A second rotation within the grace (a retry without its request id)
	// would drop the secret the receiver may still use: refused, nothing
	// changed.
	before, _ := f.client.GetSubscription(f.admin, &webhooksv1.GetSubscriptionRequest{Name: sub.GetName()})
	if _, err := f.client.RotateSubscriptionSecret(f.admin, &webhooksv1.RotateSubscriptionSecretRequest{Name: sub.GetName()}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("a second rotation within the grace: %v; want FAILED_PRECONDITION", err)
	}
	if after, err := f.client.GetSubscription(f.admin, &webhooksv1.GetSubscriptionRequest{Name: sub.GetName()}); err != nil || !after.GetPreviousSecretExpireTime().AsTime().Equal(before.GetPreviousSecretExpireTime().AsTime()) {
		t.Fatalf("the refused rotation changed the subscription: %v, %v", after, err)
	}
	if _, err := f.client.RotateSubscriptionSecret(f.ehr, &webhooksv1.RotateSubscriptionSecretRequest{Name: sub.GetName()}); status.Code(err) != codes.NotFound {
		t.Fatalf("rotating another's subscription: %v; want NOT_FOUND", err)
	}
	// An administrator sees the EHR's subscription but may not take its
	// secret: the rotation is refused and changes nothing.
	ehrSub := f.subscribe(t, f.ehr, "https://ehr.example.org/hooks", 0, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED)
	if _, err := f.client.RotateSubscriptionSecret(f.admin, &webhooksv1.RotateSubscriptionSecretRequest{Name: ehrSub.GetName()}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("an administrator rotating the EHR's secret: %v; want PERMISSION_DENIED", err)
	}
	if got, err := f.client.GetSubscription(f.ehr, &webhooksv1.GetSubscriptionRequest{Name: ehrSub.GetName()}); err != nil || got.GetPreviousSecretExpireTime() != nil {
		t.Fatalf("the EHR's subscription after a refused rotation: %v, %v; want no previous secret", got, err)
	}

	runSender(t, fastSender(f.db, nil, 3))
	if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r1", "accepted")); err != nil {
		t.Fatal(err)
	}
	var p post
	select {
	case p = <-posts:
	case <-time.After(5 * time.Second):
		t.Fatal("no notification")
	}
	for name, secret := range map[string]string{"new": rotated.GetSecret(), "old": sub.GetSecret()} {
		if err := webhooks.Verify(secret, p.header, p.body, time.Now()); err != nil {
			t.Errorf("the %s secret does not verify the notification: %v (%s)", name, err, p.header)
		}
	}
	// Past the grace, the new secret signs alone.
	if _, err := f.pool.Exec(ctx, `UPDATE subscriptions SET previous_secret_expire_time = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r1", "scheduled")); err != nil {
		t.Fatal(err)
	}
	select {
	case p = <-posts:
	case <-time.After(5 * time.Second):
		t.Fatal("no second notification")
	}
	if err := webhooks.Verify(sub.GetSecret(), p.header, p.body, time.Now()); err == nil || strings.Count(p.header, "v1=") != 1 {
		t.Fatalf("after the grace the old secret still signs: %s", p.header)
	}
}

// Two rotations at once (a client's retry without its request id racing
// the first) leave one secret in its grace, not the original dropped: the
// second finds the first's grace begun and is refused. The test holds the
// subscription's row until both have read it, so that both reach their
// update with the grace still unbegun in what they read.
func TestConcurrentRotationsKeepTheOriginalSecret(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	sub := f.subscribe(t, f.admin, "https://ehr.example.org/hooks", 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	tx, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SELECT 1 FROM subscriptions WHERE id = $1 FOR UPDATE`, aipID(sub.GetName())); err != nil {
		t.Fatal(err)
	}
	type answer struct {
		sub *webhooksv1.Subscription
		err error
	}
	answers := make(chan answer, 2)
	for range 2 {
		go func() {
			out, err := f.client.RotateSubscriptionSecret(f.admin, &webhooksv1.RotateSubscriptionSecretRequest{Name: sub.GetName()})
			answers <- answer{out, err}
		}()
	}
	// Both past their read, waiting on the row.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var waiting int
		if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE subscriptions SET previous_secret%'`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d rotations wait on the row; want 2", waiting)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	var rotated []*webhooksv1.Subscription
	var refused int
	for range 2 {
		a := <-answers
		switch {
		case a.err == nil:
			rotated = append(rotated, a.sub)
		case status.Code(a.err) == codes.FailedPrecondition && strings.Contains(a.err.Error(), "rotated less than a day ago"):
			refused++
		default:
			t.Fatalf("a rotation: %v", a.err)
		}
	}
	if len(rotated) != 1 || refused != 1 {
		t.Fatalf("%d rotations went through, %d refused; want one of each", len(rotated), refused)
	}
	// The receiver still on the original secret verifies what is sent.
	posts := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := webhooks.Verify(sub.GetSecret(), r.Header.Get(webhooks.SignatureHeader), body, time.Now()); err != nil {
			posts <- err.Error()
		} else {
			posts <- ""
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	if _, err := f.pool.Exec(ctx, `UPDATE subscriptions SET url = $2 WHERE id = $1`, aipID(sub.GetName()), srv.URL); err != nil {
		t.Fatal(err)
	}
	runSender(t, fastSender(f.db, nil, 3))
	if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r1", "accepted")); err != nil {
		t.Fatal(err)
	}
	select {
	case msg := <-posts:
		if msg != "" {
			t.Fatalf("the original secret does not verify after the rotations: %s", msg)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no notification")
	}
}

// storingFamilies answers a record's request id a second time from what it
// stored, without a look at the consent, as the families service does.
// With loseNext, the next record is stored and then its answer is lost (a
// timeout), and the family revokes its consent at that moment.
type storingFamilies struct {
	*fakeFamilies
	loseNext atomic.Bool
	stored   sync.Map
}

func (f *storingFamilies) CreateDisclosure(ctx context.Context, req *familiesv1.CreateDisclosureRequest, opts ...grpc.CallOption) (*familiesv1.Disclosure, error) {
	record := !req.GetValidateOnly() && req.GetRequestId() != ""
	if d, ok := f.stored.Load(req.GetRequestId()); record && ok {
		f.mu.Lock()
		f.asked = append(f.asked, req)
		f.mu.Unlock()
		return d.(*familiesv1.Disclosure), nil
	}
	d, err := f.fakeFamilies.CreateDisclosure(ctx, req, opts...)
	if err == nil && record {
		f.stored.Store(req.GetRequestId(), d)
		if f.loseNext.CompareAndSwap(true, false) {
			f.consent.Store(false)
			return nil, status.Error(codes.DeadlineExceeded, "the answer was lost")
		}
	}
	return d, err
}

// A first attempt whose record landed but whose answer was lost must not
// let the next attempt through on the stored answer: the family revoked
// its consent in between, so the full notification is withheld.
func TestLostRecordAnswerDoesNotOutliveARevocation(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	rcv, sub := f.receiving(t, f.ehr, webhooksv1.PayloadKind_PAYLOAD_KIND_FULL, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	fam := &storingFamilies{fakeFamilies: &fakeFamilies{}}
	fam.consent.Store(true)
	fam.loseNext.Store(true)
	runSender(t, fastSender(f.db, fam, 10))
	if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r1", "accepted")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the notification withheld", func() bool {
		resp, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: sub.GetName(), Filter: "state = WITHDRAWN"})
		return err == nil && len(resp.GetDeliveries()) == 1
	})
	if got := rcv.received(); len(got) != 0 {
		t.Fatalf("sent after the consent was revoked: %v", got)
	}
	fam.mu.Lock()
	defer fam.mu.Unlock()
	if len(fam.asked) != 3 || !fam.asked[0].GetValidateOnly() || fam.asked[1].GetValidateOnly() || !fam.asked[2].GetValidateOnly() {
		t.Fatalf("asked %v; want a check, the record, then a check that the revocation refuses", fam.asked)
	}
}

// An event whose payload the sink cannot read names no family, so no
// consent can be asked for it: the EHR's notification is withheld, not
// sent without one. The clinic's own staff still hear of it.
func TestEHRHearsNothingOfARecordOfNoKnownFamily(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	ehrRcv, staffRcv, ehrSub := f.ehrAndStaff(t)
	fam := &fakeFamilies{}
	fam.consent.Store(true)
	runSender(t, fastSender(f.db, fam, 10))
	e := outbox.Stored{ID: outboxID.Add(1), Clinic: "north", Type: "handoff.referrals.v1.referral.accepted",
		Resource: "clinics/north/referrals/r9", Payload: &anypb.Any{TypeUrl: "type.googleapis.com/handoff.referrals.v9.Referral"}}
	if _, err := f.sink.Enqueue(ctx, "referrals", e); err != nil {
		t.Fatal(err)
	}
	f.withheldFromEHR(t, ehrSub, staffRcv)
	if got := ehrRcv.received(); len(got) != 0 {
		t.Fatalf("the EHR heard of a record of no known family: %v", got)
	}
}

// A receiver that says the endpoint is gone (410) gets a dead letter at
// once; one that refuses (404: a wrong route) after three refusals in a
// row, not after MaxAttempts over hours, however many tries an outage
// before took; one that is unavailable (503) is tried on.
func TestRefusingReceiversAreNotTriedForHours(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	fam := &fakeFamilies{}
	runSender(t, fastSender(f.db, fam, 10))
	for i, c := range []struct {
		statuses []int // the answers in turn, the last one repeated
		attempts int
	}{
		{[]int{http.StatusGone}, 1},
		{[]int{http.StatusNotFound}, 3},
		{[]int{http.StatusServiceUnavailable, http.StatusServiceUnavailable, http.StatusNotFound}, 5},
		{[]int{http.StatusNotFound, http.StatusServiceUnavailable, http.StatusNotFound}, 5},
		{[]int{http.StatusServiceUnavailable}, 10},
	} {
		rcv := newReceiver(t)
		answered := 0
		rcv.setFail(func(string, map[string]any) bool {
			// Called with the receiver's lock held, before it answers
			// with failWith.
			rcv.failWith = c.statuses[min(answered, len(c.statuses)-1)]
			answered++
			return true
		})
		sub := f.subscribe(t, f.admin, rcv.srv.URL, webhooksv1.PayloadKind_PAYLOAD_KIND_ID_ONLY, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
		rcv.secret.Store(sub.GetSecret())
		if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, fmt.Sprintf("r%d", i), "accepted")); err != nil {
			t.Fatal(err)
		}
		var got *webhooksv1.Delivery
		eventually(t, 10*time.Second, fmt.Sprintf("the delivery answered %v dead", c.statuses), func() bool {
			resp, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: sub.GetName()})
			if err != nil || len(resp.GetDeliveries()) != 1 {
				return false
			}
			got = resp.GetDeliveries()[0]
			return got.GetState() == webhooksv1.DeliveryState_DELIVERY_STATE_DEAD
		})
		if int(got.GetAttemptCount()) != c.attempts {
			t.Errorf("answered %v: dead after %d attempts, want %d", c.statuses, got.GetAttemptCount(), c.attempts)
		}
	}
}

// A callback whose name resolves to an address that is not public (DNS
// changed since the subscription) is refused at every connection: that
// is a lasting refusal, a dead letter after three, not a failure tried
// for hours.
func TestCallbacksResolvingToPrivateAddressesAreRefusals(t *testing.T) {
	f := setup(t)
	runSender(t, webhooks.NewSender(webhooks.SenderConfig{
		DB: f.db, Families: &fakeFamilies{}, Log: slog.New(slog.DiscardHandler), MaxAttempts: 10,
		BaseBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, Timeout: 2 * time.Second,
		Interval: 20 * time.Millisecond, RefusedFor: time.Nanosecond,
	}))
	rcv := newReceiver(t) // on loopback, which this sender refuses
	sub := f.subscribe(t, f.admin, rcv.srv.URL, webhooksv1.PayloadKind_PAYLOAD_KIND_ID_ONLY, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	if _, err := f.sink.Enqueue(context.Background(), "referrals", referralEvent(t, "r-private", "accepted")); err != nil {
		t.Fatal(err)
	}
	var got *webhooksv1.Delivery
	eventually(t, 10*time.Second, "the delivery dead", func() bool {
		resp, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: sub.GetName()})
		if err != nil || len(resp.GetDeliveries()) != 1 {
			return false
		}
		got = resp.GetDeliveries()[0]
		return got.GetState() == webhooksv1.DeliveryState_DELIVERY_STATE_DEAD
	})
	if got.GetAttemptCount() != 3 || !strings.Contains(got.GetLastError(), "not a public unicast address") || len(rcv.received()) != 0 {
		t.Fatalf("dead after %d attempts (%q), %d received; want 3 refused", got.GetAttemptCount(), got.GetLastError(), len(rcv.received()))
	}
}

// A receiver that refuses for a while (404 while it is being deployed) is
// tried on until its refusals have gone on for RefusedFor, and gets the
// notification once it answers again: three refusals in a row are not
// enough on their own.
func TestABriefRefusalIsTriedOn(t *testing.T) {
	f := setup(t)
	s := webhooks.NewSender(webhooks.SenderConfig{
		DB: f.db, Families: &fakeFamilies{}, Log: slog.New(slog.DiscardHandler), MaxAttempts: 100,
		BaseBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, Timeout: 2 * time.Second,
		Interval: 20 * time.Millisecond, AllowPrivate: true, RefusedFor: time.Minute,
	})
	runSender(t, s)
	rcv := newReceiver(t)
	refused := refuseUntil(rcv, time.Now().Add(time.Second))
	sub := f.subscribe(t, f.admin, rcv.srv.URL, webhooksv1.PayloadKind_PAYLOAD_KIND_ID_ONLY, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	rcv.secret.Store(sub.GetSecret())
	f.deliveredAfterRefusals(t, sub.GetName(), "r-deploy", refused, 10*time.Second)
}

// refuseUntil has rcv answer 404 until deployed, as a receiver being
// deployed may, and counts its refusals.
func refuseUntil(rcv *receiver, deployed time.Time) *atomic.Int32 {
	var refused atomic.Int32
	rcv.setFail(func(string, map[string]any) bool {
		if time.Now().Before(deployed) {
			rcv.failWith = http.StatusNotFound
			refused.Add(1)
			return true
		}
		return false
	})
	return &refused
}

// deliveredAfterRefusals enqueues a referral's event and fails unless
// sub's delivery of it, finished within wait, was delivered after three
// refusals or more.
func (f *fixture) deliveredAfterRefusals(t *testing.T, sub, referral string, refused *atomic.Int32, wait time.Duration) {
	t.Helper()
	if _, err := f.sink.Enqueue(context.Background(), "referrals", referralEvent(t, referral, "accepted")); err != nil {
		t.Fatal(err)
	}
	var got *webhooksv1.Delivery
	eventually(t, wait, "the delivery finished", func() bool {
		resp, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: sub})
		if err != nil || len(resp.GetDeliveries()) != 1 {
			return false
		}
		got = resp.GetDeliveries()[0]
		return got.GetState() != webhooksv1.DeliveryState_DELIVERY_STATE_PENDING
	})
	if got.GetState() != webhooksv1.DeliveryState_DELIVERY_STATE_DELIVERED || refused.Load() < 3 {
		t.Fatalf("after %d refusals: %v (%q); want it delivered once the receiver answered", refused.Load(), got.GetState(), got.GetLastError())
	}
}

// A subscription deleted while its notification's consent was being
// checked (its endpoint or secret leaked) sends nothing more: the claim is
// checked again before the POST.
func TestDeletedSubscriptionSendsNothingInFlight(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	rcv, sub := f.receiving(t, f.ehr, webhooksv1.PayloadKind_PAYLOAD_KIND_FULL, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	fam := &fakeFamilies{}
	fam.consent.Store(true)
	var deleted atomic.Bool
	fam.asking = func() {
		if deleted.CompareAndSwap(false, true) {
			if _, err := f.client.DeleteSubscription(f.ehr, &webhooksv1.DeleteSubscriptionRequest{Name: sub.GetName()}); err != nil {
				t.Errorf("delete the subscription: %v", err)
			}
		}
	}
	runSender(t, fastSender(f.db, fam, 10))
	if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r1", "accepted")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the subscription deleted mid-send", deleted.Load)
	time.Sleep(500 * time.Millisecond) // many sender intervals
	if got := rcv.received(); len(got) != 0 {
		t.Fatalf("a deleted subscription's receiver got %v", got)
	}
}

// A try Handoff could not make (the consent check went unanswered) says
// nothing of the receiver: its refusals before and after count as in a
// row.
func TestOwnOutageDoesNotResetRefusals(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	fam := &fakeFamilies{}
	fam.consent.Store(true)
	runSender(t, fastSender(f.db, fam, 10))
	rcv, sub := f.receiving(t, f.ehr, webhooksv1.PayloadKind_PAYLOAD_KIND_FULL, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	rcv.failWith = http.StatusForbidden
	first := true
	rcv.setFail(func(string, map[string]any) bool {
		if first { // the families service goes down after the first refusal
			first = false
			fam.unavailable.Store(1)
		}
		return true
	})
	if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r1", "accepted")); err != nil {
		t.Fatal(err)
	}
	var got *webhooksv1.Delivery
	eventually(t, 10*time.Second, "the refused delivery dead", func() bool {
		resp, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: sub.GetName()})
		if err != nil || len(resp.GetDeliveries()) != 1 {
			return false
		}
		got = resp.GetDeliveries()[0]
		return got.GetState() == webhooksv1.DeliveryState_DELIVERY_STATE_DEAD
	})
	if got.GetAttemptCount() != 3 {
		t.Fatalf("dead after %d attempts (the outage's try given back); want 3 refusals", got.GetAttemptCount())
	}
}

// A receiver that answers 429 or 503 with Retry-After is not tried again
// before then, nor later than the longest backoff.
func TestRetryAfterIsHonoured(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	var calls atomic.Int32
	var header atomic.Value
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		calls.Add(1)
		w.Header().Set("Retry-After", header.Load().(string))
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	t.Cleanup(rcv.Close)
	s := pausingSender(f.db, 10)
	for i, c := range []struct {
		header string
		want   time.Duration
	}{
		{"120", 120 * time.Second},
		// An HTTP date three hours on is cut to the longest backoff.
		{time.Now().Add(3 * time.Hour).UTC().Format(http.TimeFormat), time.Hour},
	} {
		header.Store(c.header)
		calls.Store(0)
		// A subscription each: the one before is paused (see
		// TestRetryAfterPausesTheSubscription).
		sub := f.subscribe(t, f.ehr, fmt.Sprintf("%s/case%d", rcv.URL, i), 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
		ref := fmt.Sprintf("r%d", i)
		if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, ref, "accepted")); err != nil {
			t.Fatal(err)
		}
		sctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { s.Run(sctx); close(done) }()
		var d *webhooksv1.Delivery
		eventually(t, 5*time.Second, "the throttled attempt recorded", func() bool {
			resp, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: sub.GetName()})
			if err != nil {
				return false
			}
			for _, x := range resp.GetDeliveries() {
				if strings.HasSuffix(x.GetResource(), "/"+ref) && x.GetAttemptCount() == 1 && x.GetLastError() != "" {
					d = x
				}
			}
			return d != nil
		})
		// The backoff alone would have tried again within 20 ms.
		time.Sleep(300 * time.Millisecond)
		cancel()
		<-done
		if n := calls.Load(); n != 1 {
			t.Fatalf("Retry-After %q: the receiver was called %d times; want once", c.header, n)
		}
		wait := time.Until(d.GetNextAttemptTime().AsTime())
		if wait < c.want-10*time.Second || wait > c.want+time.Second {
			t.Fatalf("Retry-After %q: next attempt in %v; want about %v", c.header, wait, c.want)
		}
		if !strings.HasPrefix(d.GetLastError(), "HTTP 429, retry after ") {
			t.Fatalf("last error %q", d.GetLastError())
		}
	}
}

// A receiver's Retry-After holds back every notification of its
// subscription, not only the one it answered: each would be refused the
// same way, and use up an attempt. Other subscriptions go on.
func TestRetryAfterPausesTheSubscription(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	var mu sync.Mutex
	var paused, other []time.Time
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		paused = append(paused, time.Now())
		if len(paused) == 1 {
			w.Header().Set("Retry-After", "2")
			w.WriteHeader(http.StatusTooManyRequests)
		}
	}))
	t.Cleanup(rcv.Close)
	unpaused := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		other = append(other, time.Now())
	}))
	t.Cleanup(unpaused.Close)
	sub := f.subscribe(t, f.ehr, rcv.URL, 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	runSender(t, pausingSender(f.db, 10))
	calls := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return len(paused), len(other)
	}
	if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r-first", "accepted")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the first notification throttled", func() bool { n, _ := calls(); return n == 1 })
	f.subscribe(t, f.ehr, unpaused.URL, 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r-second", "accepted")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the other subscription's notification", func() bool { _, n := calls(); return n == 1 })
	time.Sleep(500 * time.Millisecond)
	if n, _ := calls(); n != 1 {
		t.Fatalf("the throttled receiver was called %d times within its Retry-After; want once", n)
	}
	eventually(t, 10*time.Second, "both delivered once the pause ended", func() bool {
		resp, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: sub.GetName()})
		if err != nil || len(resp.GetDeliveries()) != 2 {
			return false
		}
		for _, d := range resp.GetDeliveries() {
			if d.GetState() != webhooksv1.DeliveryState_DELIVERY_STATE_DELIVERED {
				return false
			}
		}
		return true
	})
	mu.Lock()
	defer mu.Unlock()
	if len(paused) != 3 || paused[1].Sub(paused[0]) < 1900*time.Millisecond {
		t.Fatalf("the throttled receiver was called at %v; want three calls, none within 2 s of the first", paused)
	}
}

// A subscription deleted (its secret leaked, say) takes the stored answers
// of its create and rotations with it: a retry of the create under its
// request id is NOT_FOUND, not the deleted subscription and its secret.
func TestDeletedSubscriptionsAnswersAreForgotten(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	req := &webhooksv1.CreateSubscriptionRequest{Parent: "clinics/north", RequestId: "create-1",
		Subscription: &webhooksv1.Subscription{Url: "https://ehr.example.org/hooks", Topics: []webhooksv1.Topic{webhooksv1.Topic_TOPIC_REFERRAL_CHANGED}}}
	sub, err := f.client.CreateSubscription(f.ehr, req)
	if err != nil {
		t.Fatal(err)
	}
	rot := &webhooksv1.RotateSubscriptionSecretRequest{Name: sub.GetName(), RequestId: "rotate-1"}
	if _, err := f.client.RotateSubscriptionSecret(f.ehr, rot); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.DeleteSubscription(f.admin, &webhooksv1.DeleteSubscriptionRequest{Name: sub.GetName()}); err != nil {
		t.Fatal(err)
	}
	again, err := f.client.CreateSubscription(f.ehr, req)
	if status.Code(err) != codes.NotFound || again.GetSecret() != "" {
		t.Fatalf("the create retried after the delete: %v, %v; want NOT_FOUND and no secret", again, err)
	}
	if _, err := f.client.RotateSubscriptionSecret(f.ehr, rot); status.Code(err) != codes.NotFound {
		t.Fatalf("the rotation retried after the delete: %v; want NOT_FOUND", err)
	}
	var kept int
	if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM idempotency_keys WHERE response IS NOT NULL`).Scan(&kept); err != nil || kept != 0 {
		t.Fatalf("%d stored answers left after the delete (%v); want none holding its secret", kept, err)
	}
	resp, err := f.client.ListSubscriptions(f.admin, &webhooksv1.ListSubscriptionsRequest{Parent: "clinics/north"})
	if err != nil || len(resp.GetSubscriptions()) != 0 {
		t.Fatalf("subscriptions after the retries: %v, %v; want none", resp.GetSubscriptions(), err)
	}
}

// A family member's own referral is told to the EHR under the member's
// consent: every check and record the sender asks for names the member,
// whether the notification carries the referral or identifiers only (whose
// delivery keeps no payload to read the member from).
func TestMembersReferralIsAskedOfTheirConsent(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	full, _ := f.receiving(t, f.ehr, webhooksv1.PayloadKind_PAYLOAD_KIND_FULL, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	ids, _ := f.receiving(t, f.ehr, webhooksv1.PayloadKind_PAYLOAD_KIND_ID_ONLY, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	fam := &fakeFamilies{}
	fam.consent.Store(true)
	runSender(t, fastSender(f.db, fam, 10))
	name := "clinics/north/referrals/r-mom"
	if _, err := f.sink.Enqueue(ctx, "referrals", event(t, "handoff.referrals.v1.referral.accepted", &referralsv1.Referral{
		Name: name, Family: "clinics/north/families/f1", Reason: "private",
		Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_FAMILY_MEMBER, MemberId: "mom"}}, name)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "both notifications", func() bool { return len(full.received()) == 1 && len(ids.received()) == 1 })
	fam.mu.Lock()
	defer fam.mu.Unlock()
	if len(fam.asked) < 2 || len(fam.records()) != 1 {
		t.Fatalf("asked %v; want a check and a record", fam.asked)
	}
	for _, r := range fam.asked {
		if r.GetDisclosure().GetMemberId() != "mom" || r.GetParent() != "clinics/north/families/f1" {
			t.Fatalf("asked %v; want every ask for mom of f1", r)
		}
	}
}

// A draft meeting never scheduled is no appointment: its creation, changes
// and cancellation are told to no one subscribed to appointments (a meeting
// proposed after one that ended without a yes would tell the EHR how the
// loved one answered). Once scheduled it is, and its cancellation too.
func TestDraftMeetingsAreNoAppointments(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	f.subscribe(t, f.ehr, "https://ehr.example.org/hooks", webhooksv1.PayloadKind_PAYLOAD_KIND_FULL, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED)
	name := "clinics/north/interventions/i9"
	meeting := func(state interventionsv1.InterventionState, published bool) *interventionsv1.Intervention {
		return &interventionsv1.Intervention{Name: name, Family: "clinics/north/families/f1", State: state, Published: published}
	}
	draft, cancelled, scheduled := interventionsv1.InterventionState_INTERVENTION_STATE_DRAFT,
		interventionsv1.InterventionState_INTERVENTION_STATE_CANCELLED, interventionsv1.InterventionState_INTERVENTION_STATE_SCHEDULED
	for _, c := range []struct {
		event string
		iv    *interventionsv1.Intervention
		want  int64
	}{
		{"created", meeting(draft, false), 0},
		{"updated", meeting(draft, false), 0},
		{"cancelled", meeting(cancelled, false), 0},
		{"scheduled", meeting(scheduled, true), 1},
		{"cancelled", meeting(cancelled, true), 1},
	} {
		n, err := f.sink.Enqueue(ctx, "interventions", event(t, "handoff.interventions.v1.intervention."+c.event, c.iv, name))
		if err != nil || n != c.want {
			t.Errorf("%s of a meeting %v (published %v): %d deliveries, %v; want %d", c.event, c.iv.GetState(), c.iv.GetPublished(), n, err, c.want)
		}
	}
}

// A referral's event whose payload this binary cannot read may be a
// member's own: its deliveries keep the member unknown (NULL), which the
// sender does not take for the loved one's; one it can read keeps whose
// it is, the loved one's as ”.
func TestUnreadableReferralsMemberIsUnknown(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	f.subscribe(t, f.ehr, "https://ehr.example.org/hooks", webhooksv1.PayloadKind_PAYLOAD_KIND_ID_ONLY, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	odd := outbox.Stored{ID: outboxID.Add(1), Clinic: "north", Type: "handoff.referrals.v1.referral.accepted",
		Resource: "clinics/north/referrals/r-odd", Generation: outbox.Generation,
		Payload: &anypb.Any{TypeUrl: "type.googleapis.com/handoff.referrals.v9.Referral", Value: []byte{1}}}
	for _, e := range []outbox.Stored{odd, referralEvent(t, "r-own", "accepted")} {
		if n, err := f.sink.Enqueue(ctx, "referrals", e); err != nil || n != 1 {
			t.Fatalf("enqueue %s: %d, %v", e.Resource, n, err)
		}
	}
	members := map[string]*string{}
	rows, err := f.pool.Query(ctx, `SELECT resource, member_id FROM deliveries`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var res string
		var m *string
		if err := rows.Scan(&res, &m); err != nil {
			t.Fatal(err)
		}
		members[res] = m
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if m, ok := members["clinics/north/referrals/r-odd"]; !ok || m != nil {
		t.Fatalf("the unreadable referral's member: %v (listed %v); want NULL", m, ok)
	}
	if m := members["clinics/north/referrals/r-own"]; m == nil || *m != "" {
		t.Fatalf("the loved one's referral's member: %v; want ''", m)
	}
}

// A second subscription of one owner to one URL with a topic in common is
// refused, naming the first: a create retried without its request id
// would otherwise double every notification, under ids the receiver could
// not match. Another URL, or topics apart, are another subscription.
func TestLikeSubscriptionIsRefused(t *testing.T) {
	f := setup(t)
	first := f.subscribe(t, f.ehr, "https://ehr.example.org/hooks", webhooksv1.PayloadKind_PAYLOAD_KIND_ID_ONLY,
		webhooksv1.Topic_TOPIC_REFERRAL_CHANGED, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED)
	_, err := f.client.CreateSubscription(f.ehr, &webhooksv1.CreateSubscriptionRequest{Parent: "clinics/north",
		Subscription: &webhooksv1.Subscription{Url: "https://ehr.example.org/hooks", Topics: []webhooksv1.Topic{webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED}}})
	st := status.Convert(err)
	if st.Code() != codes.AlreadyExists || !strings.Contains(fmt.Sprint(st.Details()), first.GetName()) {
		t.Fatalf("a like subscription: %v (%v); want ALREADY_EXISTS naming %s", err, st.Details(), first.GetName())
	}
	f.subscribe(t, f.ehr, "https://ehr.example.org/other-hooks", webhooksv1.PayloadKind_PAYLOAD_KIND_ID_ONLY, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED)
	// The other payload kind beside it: how a receiver moves to it
	// without losing what comes meanwhile.
	f.subscribe(t, f.ehr, "https://ehr.example.org/hooks", webhooksv1.PayloadKind_PAYLOAD_KIND_FULL, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED)
	list, err := f.client.ListSubscriptions(f.admin, &webhooksv1.ListSubscriptionsRequest{Parent: "clinics/north"})
	if err != nil || len(list.GetSubscriptions()) != 3 {
		t.Fatalf("subscriptions: %d, %v; want the three that differ", len(list.GetSubscriptions()), err)
	}
}

// Two subscriptions at one receiver that share no topic are still alike
// when one event goes out under both topics: a referral's intake booking
// is REFERRAL_CHANGED and APPOINTMENT_CHANGED at once, and would reach the
// receiver twice under ids it could not match. One receiver spelt another
// way (host case, the default port, the root's trailing dot, a path's
// letter escaped) is the same receiver.
func TestSubscriptionsSplitByTopicAreAlike(t *testing.T) {
	f := setup(t)
	first := f.subscribe(t, f.ehr, "https://ehr.example.org/hooks", webhooksv1.PayloadKind_PAYLOAD_KIND_ID_ONLY, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	for _, u := range []string{"https://ehr.example.org/hooks", "https://EHR.Example.org:443/hooks", "HTTPS://ehr.example.org/hooks",
		"https://ehr.example.org./hooks", "https://ehr.example.org/%68ooks"} {
		_, err := f.client.CreateSubscription(f.ehr, &webhooksv1.CreateSubscriptionRequest{Parent: "clinics/north",
			Subscription: &webhooksv1.Subscription{Url: u, Topics: []webhooksv1.Topic{webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED}}})
		st := status.Convert(err)
		if st.Code() != codes.AlreadyExists || !strings.Contains(fmt.Sprint(st.Details()), first.GetName()) {
			t.Fatalf("APPOINTMENT_CHANGED to %s beside REFERRAL_CHANGED there: %v (%v); want ALREADY_EXISTS naming %s", u, err, st.Details(), first.GetName())
		}
	}
	// Another path is another receiver; so is one whose slash is escaped
	// (%2F is not a separator).
	f.subscribe(t, f.ehr, "https://ehr.example.org/appointments", webhooksv1.PayloadKind_PAYLOAD_KIND_ID_ONLY, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED)
	f.subscribe(t, f.ehr, "https://ehr.example.org/t/a/b", webhooksv1.PayloadKind_PAYLOAD_KIND_ID_ONLY, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED)
	f.subscribe(t, f.ehr, "https://ehr.example.org/t/a%2fb", webhooksv1.PayloadKind_PAYLOAD_KIND_ID_ONLY, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED)
	var n int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM subscriptions`).Scan(&n); err != nil || n != 4 {
		t.Fatalf("%d subscriptions (%v); want the first and the three at other paths", n, err)
	}
}

// One owner holds at most MaxPerOwner subscriptions in a clinic: past it a
// create is refused RESOURCE_EXHAUSTED with a QuotaFailure, makes nothing,
// and leaves other owners alone; deleting one makes room again.
func TestSubscriptionsPerOwnerAreCapped(t *testing.T) {
	f := setupWith(t, webhooks.Config{MaxPerOwner: 2})
	first := f.subscribe(t, f.ehr, "https://ehr.example.org/a", webhooksv1.PayloadKind_PAYLOAD_KIND_ID_ONLY, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	f.subscribe(t, f.ehr, "https://ehr.example.org/b", webhooksv1.PayloadKind_PAYLOAD_KIND_ID_ONLY, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	third := &webhooksv1.CreateSubscriptionRequest{Parent: "clinics/north", RequestId: "3c0bd4a4-6a43-4b8e-9a43-3a1b0f4e2b71",
		Subscription: &webhooksv1.Subscription{Url: "https://ehr.example.org/c", Topics: []webhooksv1.Topic{webhooksv1.Topic_TOPIC_REFERRAL_CHANGED}}}
	_, err := f.client.CreateSubscription(f.ehr, third)
	st := status.Convert(err)
	var quota *errdetails.QuotaFailure
	for _, d := range st.Details() {
		if q, ok := d.(*errdetails.QuotaFailure); ok {
			quota = q
		}
	}
	if st.Code() != codes.ResourceExhausted || quota == nil || !strings.Contains(quota.GetViolations()[0].GetSubject(), "ehr-1") {
		t.Fatalf("a third subscription past a cap of 2: %v (%v); want RESOURCE_EXHAUSTED with a QuotaFailure naming ehr-1", err, st.Details())
	}
	count := func() int {
		t.Helper()
		var n int
		if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM subscriptions`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != 2 {
		t.Fatalf("%d subscriptions after the refusal; want 2", n)
	}
	// Another owner's count is its own.
	other := f.env.As("north", "ehr-2", auth.RoleEHR)
	f.subscribe(t, other, "https://ehr2.example.org/a", webhooksv1.PayloadKind_PAYLOAD_KIND_ID_ONLY, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	if _, err := f.client.DeleteSubscription(f.ehr, &webhooksv1.DeleteSubscriptionRequest{Name: first.GetName()}); err != nil {
		t.Fatal(err)
	}
	// The refused request id was not kept: the same request goes through.
	if _, err := f.client.CreateSubscription(f.ehr, third); err != nil {
		t.Fatalf("the third subscription once the first is deleted: %v", err)
	}
	if n := count(); n != 3 {
		t.Fatalf("%d subscriptions; want 3 (two of ehr-1's, one of ehr-2's)", n)
	}
}

// A replayed dead letter is due at once by the database's clock, which
// the sender's claim reads, whatever the service's clock says: by a
// clock two days ahead, it waited two days, and its resource's later
// events behind it.
func TestReplayIsDueByTheDatabasesClock(t *testing.T) {
	f := setupWith(t, webhooks.Config{Now: func() time.Time { return time.Now().Add(48 * time.Hour) }})
	f.subscribe(t, f.admin, "https://ehr.example.org/hooks", 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	ctx := context.Background()
	if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r1", "accepted")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.pool.Exec(ctx, `UPDATE deliveries SET state = 3, attempts = 3, next_attempt_time = now() - interval '1 hour'`); err != nil {
		t.Fatal(err)
	}
	resp, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: "clinics/north/subscriptions/-", Filter: "state = DEAD"})
	if err != nil || len(resp.GetDeliveries()) != 1 {
		t.Fatalf("dead letters %v, %v; want one", resp.GetDeliveries(), err)
	}
	if _, err := f.client.ReplayDelivery(f.admin, &webhooksv1.ReplayDeliveryRequest{Name: resp.GetDeliveries()[0].GetName()}); err != nil {
		t.Fatal(err)
	}
	var wait time.Duration
	if err := f.pool.QueryRow(ctx, `SELECT greatest(next_attempt_time - now(), interval '0') FROM deliveries`).Scan(&wait); err != nil {
		t.Fatal(err)
	}
	if wait > 0 {
		t.Fatalf("the replayed delivery is due in %v by the database's clock; want now", wait)
	}
}

// A create or rotation retried under its request id after a later
// rotation is refused, not answered with the secret rotated away (one
// that stops signing when its grace ends, or that leaked); the latest
// rotation's retry still gets its secret.
func TestRetryAfterARotationDoesNotReturnTheOldSecret(t *testing.T) {
	f := setup(t)
	create := &webhooksv1.CreateSubscriptionRequest{Parent: "clinics/north", RequestId: "create-1",
		Subscription: &webhooksv1.Subscription{Url: "https://ehr.example.org/hooks", Topics: []webhooksv1.Topic{webhooksv1.Topic_TOPIC_REFERRAL_CHANGED}}}
	sub, err := f.client.CreateSubscription(f.ehr, create)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := f.client.CreateSubscription(f.ehr, create); err != nil || again.GetSecret() != sub.GetSecret() {
		t.Fatalf("create retried before any rotation: %v; want the same secret", err)
	}
	rotate := &webhooksv1.RotateSubscriptionSecretRequest{Name: sub.GetName(), RequestId: "rotate-1"}
	rotated, err := f.client.RotateSubscriptionSecret(f.ehr, rotate)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.client.CreateSubscription(f.ehr, create)
	if status.Code(err) != codes.FailedPrecondition || apperr.Reason(err) != "SECRET_ROTATED" {
		t.Fatalf("create retried after a rotation: %v; want FAILED_PRECONDITION SECRET_ROTATED", err)
	}
	if strings.Contains(err.Error(), sub.GetSecret()) {
		t.Fatal("the refusal holds the old secret")
	}
	if again, err := f.client.RotateSubscriptionSecret(f.ehr, rotate); err != nil || again.GetSecret() != rotated.GetSecret() {
		t.Fatalf("the latest rotation retried: %v; want its secret again", err)
	}
}

// Refusals after an outage on Handoff's side (the families service down
// longer than RefusedFor) still get their grace: it is counted from the
// first refusal with no outage since, not from the first try (before,
// three quick refusals after the outage ended the delivery), nor from a
// refusal before the outage.
func TestRefusalGraceCountsFromTheFirstRefusal(t *testing.T) {
	for _, refusedFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("refused before the outage %v", refusedFirst), func(t *testing.T) {
			f := setup(t)
			fam := &fakeFamilies{}
			fam.consent.Store(true)
			runSender(t, webhooks.NewSender(webhooks.SenderConfig{
				DB: f.db, Families: fam, Log: slog.New(slog.DiscardHandler), MaxAttempts: 1000,
				BaseBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Timeout: 2 * time.Second,
				Interval: 20 * time.Millisecond, AllowPrivate: true, RefusedFor: 3 * time.Second,
			}))
			rcv, sub := f.receiving(t, f.ehr, webhooksv1.PayloadKind_PAYLOAD_KIND_FULL, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
			// The receiver refuses until it is deployed; meanwhile the
			// families service is down for longer than RefusedFor.
			t0 := time.Now()
			down, up, deployed := t0, t0.Add(4500*time.Millisecond), t0.Add(5500*time.Millisecond)
			if refusedFirst {
				down = t0.Add(time.Second)
			}
			fam.asking = func() {
				if now := time.Now(); !now.Before(down) && now.Before(up) {
					fam.unavailable.Store(1)
				}
			}
			f.deliveredAfterRefusals(t, sub.GetName(), "r-outage", refuseUntil(rcv, deployed), 20*time.Second)
		})
	}
}

// secretReadFails makes the read of a subscription's secret fail while on:
// a database that fails the first read after a commit.
type secretReadFails struct{ on atomic.Bool }

func (f *secretReadFails) fail(ctx context.Context, sql string) context.Context {
	if f.on.Load() && strings.HasPrefix(strings.TrimSpace(sql), "SELECT secret FROM subscriptions") {
		ctx, cancel := context.WithCancel(ctx)
		cancel()
		return ctx
	}
	return ctx
}

func (f *secretReadFails) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	return f.fail(ctx, d.SQL)
}
func (f *secretReadFails) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (f *secretReadFails) TraceBatchStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	for _, q := range d.Batch.QueuedQueries {
		ctx = f.fail(ctx, q.SQL)
	}
	return ctx
}
func (f *secretReadFails) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (f *secretReadFails) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// A create or rotation that committed answers with its new secret, though
// a read after the commit would fail: reported failed, the caller would
// hold no secret that signs, and a retry without a request id would be
// refused (ALREADY_EXISTS, ROTATION_IN_PROGRESS).
func TestCommittedSecretIsAnsweredWithoutAnotherRead(t *testing.T) {
	_, schema := pgtest.Schema(t, webhooks.Migrations()...)
	cfg := pgtest.App(t, schema).Pool.Config()
	fails := &secretReadFails{}
	cfg.ConnConfig.Tracer = fails
	app, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(app.Close)
	srv := webhooks.New(&pgdb.DB{Pool: app}, webhooks.Config{AllowInsecure: true, AllowPrivate: true})
	env := servicetest.Start(t, webhooks.Policy(), func(s *grpc.Server) { webhooksv1.RegisterWebhooksServiceServer(s, srv) })
	env.Server.SetAuditor(srv.Auditor())
	client, admin := webhooksv1.NewWebhooksServiceClient(env.Conn), env.As("north", "admin-1", auth.RoleClinicAdmin)
	fails.on.Store(true)
	sub, err := client.CreateSubscription(admin, &webhooksv1.CreateSubscriptionRequest{Parent: "clinics/north",
		Subscription: &webhooksv1.Subscription{Url: "https://ehr.example.org/hook", Topics: []webhooksv1.Topic{webhooksv1.Topic_TOPIC_REFERRAL_CHANGED}}})
	if err != nil || !strings.HasPrefix(sub.GetSecret(), "whsec_") {
		t.Fatalf("CreateSubscription = %q, %v; want the new secret", sub.GetSecret(), err)
	}
	rotated, err := client.RotateSubscriptionSecret(admin, &webhooksv1.RotateSubscriptionSecretRequest{Name: sub.GetName()})
	if err != nil || !strings.HasPrefix(rotated.GetSecret(), "whsec_") || rotated.GetSecret() == sub.GetSecret() {
		t.Fatalf("RotateSubscriptionSecret = %q, %v; want a new secret", rotated.GetSecret(), err)
	}
	// The read does fail: a retry, answered from the stored answer, must
	// read the secret to judge that answer, and fails with it until the
	// database answers again.
	req := &webhooksv1.CreateSubscriptionRequest{Parent: "clinics/north", RequestId: "create-1",
		Subscription: &webhooksv1.Subscription{Url: "https://ehr-2.example.org/hook", Topics: []webhooksv1.Topic{webhooksv1.Topic_TOPIC_REFERRAL_CHANGED}}}
	first, err := client.CreateSubscription(admin, req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.CreateSubscription(admin, req); err == nil {
		t.Fatal("a retry was answered without reading the secret")
	}
	fails.on.Store(false)
	if again, err := client.CreateSubscription(admin, req); err != nil || again.GetSecret() != first.GetSecret() {
		t.Fatalf("the retry once the database answers: %v; want the first answer's secret", err)
	}
}

// A receiver's Retry-After pauses its subscription on a delivery's last
// attempt too: the delivery becomes a dead letter, and the subscription's
// other notifications wait as the receiver asked, rather than each be
// refused the same way.
func TestRetryAfterOnTheLastAttemptPausesTheSubscription(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(rcv.Close)
	sub := f.subscribe(t, f.ehr, rcv.URL, 0, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	runSender(t, pausingSender(f.db, 1))
	if _, err := f.sink.Enqueue(ctx, "referrals", referralEvent(t, "r-last", "accepted")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the delivery a dead letter", func() bool {
		resp, err := f.client.ListDeliveries(f.admin, &webhooksv1.ListDeliveriesRequest{Parent: sub.GetName()})
		return err == nil && len(resp.GetDeliveries()) == 1 && resp.GetDeliveries()[0].GetState() == webhooksv1.DeliveryState_DELIVERY_STATE_DEAD
	})
	var pause time.Duration
	if err := f.pool.QueryRow(ctx, `SELECT coalesce(paused_until - now(), '0') FROM subscriptions WHERE id = $1`, idOf(sub)).Scan(&pause); err != nil {
		t.Fatal(err)
	}
	if pause < 25*time.Second || pause > 30*time.Second {
		t.Fatalf("the subscription is paused for %v; want the 30 s its receiver asked for", pause)
	}
}
