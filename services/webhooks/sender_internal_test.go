package webhooks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
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
	"github.com/handoff-health/handoff/services/outbox"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

// The SQL repeats the PENDING state as the literal 1 (partial indexes only
// match literals); the enum must stay 1.
func TestPendingLiteral(t *testing.T) {
	if statePending != 1 {
		t.Fatalf("PENDING is %d; the SQL literals and partial indexes say 1", statePending)
	}
}

// subscribe adds subscription s1 of north, identifiers only, for owner to
// topic.
func subscribe(t *testing.T, pool *pgxpool.Pool, owner string, topic webhooksv1.Topic) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), `INSERT INTO subscriptions (clinic, id, url, topics, payload, owner, secret)
		VALUES ('north', 's1', 'https://receiver.example.org/hooks', $1, 1, $2, 'whsec_test')`, []int16{int16(topic)}, owner); err != nil {
		t.Fatal(err)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// oneDelivery gives a webhooks schema with one pending delivery to the
// EHR's subscription: a referral accepted.
func oneDelivery(t *testing.T) (*pgxpool.Pool, *pgdb.DB) {
	t.Helper()
	pool, schema := pgtest.Schema(t, Migrations()...)
	db := pgtest.App(t, schema)
	subscribe(t, pool, "ehr-1", webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	a, err := anypb.New(&referralsv1.Referral{Name: "clinics/north/referrals/r1"})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := (&Sink{DB: db}).Enqueue(context.Background(), "referrals", outbox.Stored{ID: 1, Clinic: "north",
		Type: "handoff.referrals.v1.referral.accepted", Resource: "clinics/north/referrals/r1", Payload: a}); err != nil || n != 1 {
		t.Fatalf("Enqueue = %d, %v", n, err)
	}
	return pool, db
}

// A POST that succeeded is recorded even when the sender is shutting down
// meanwhile: left to the lease, it would be sent a second time.
func TestSuccessRecordedDuringShutdown(t *testing.T) {
	pool, db := oneDelivery(t)
	ctx := context.Background()
	s := NewSender(SenderConfig{DB: db, Log: slog.New(slog.DiscardHandler), AllowPrivate: true})
	run, stop := context.WithCancel(ctx)
	defer stop()
	posts := 0
	// The receiver acknowledges; the shutdown begins while the answer is
	// on its way back.
	s.client.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		posts++
		stop()
		return &http.Response{StatusCode: http.StatusNoContent, Body: io.NopCloser(strings.NewReader("")),
			Header: http.Header{}, Request: r}, nil
	})
	if _, err := s.Once(run); err != nil {
		t.Fatal(err)
	}
	var state int16
	if err := pool.QueryRow(ctx, `SELECT state FROM deliveries`).Scan(&state); err != nil {
		t.Fatal(err)
	}
	if posts != 1 || state != stateDelivered {
		t.Fatalf("%d POSTs, state %d; want the acknowledged delivery recorded as DELIVERED", posts, state)
	}
}

// A sender shutting down does not wait on a database that holds its
// outcome's row: the write gives up after pgdb.SettleTimeout, and the delivery
// is sent again after its lease (the receiver drops the repeat by id).
func TestOutcomeWriteIsBoundedAtShutdown(t *testing.T) {
	pool, db := oneDelivery(t)
	ctx := context.Background()
	defer func(d time.Duration) { pgdb.SettleTimeout = d }(pgdb.SettleTimeout)
	pgdb.SettleTimeout = 300 * time.Millisecond
	s := NewSender(SenderConfig{DB: db, Log: slog.New(slog.DiscardHandler), AllowPrivate: true})
	run, stop := context.WithCancel(ctx)
	defer stop()
	// Another transaction holds the row (for 5 s) while the receiver
	// answers and the shutdown begins.
	var holder pgx.Tx
	s.client.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		tx, err := pool.Begin(ctx)
		if err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, `SELECT 1 FROM deliveries FOR UPDATE`); err != nil {
			return nil, err
		}
		holder = tx
		time.AfterFunc(5*time.Second, func() { _ = tx.Rollback(ctx) })
		stop()
		return &http.Response{StatusCode: http.StatusNoContent, Body: io.NopCloser(strings.NewReader("")), Header: http.Header{}, Request: r}, nil
	})
	began := time.Now()
	_, _ = s.Once(run)
	if took := time.Since(began); took > 3*time.Second {
		t.Fatalf("the send returned after %v with its row held; want it to give up after %v", took.Round(time.Millisecond), pgdb.SettleTimeout)
	}
	if holder == nil {
		t.Fatal("nothing was sent")
	}
	_ = holder.Rollback(ctx)
}

// A sender whose lease ran out records nothing over a later claim, even
// one after a replay, which starts the attempt count again: the outcome
// is fenced on the claim count, which nothing resets.
func TestStaleOutcomeAfterAReplayChangesNothing(t *testing.T) {
	pool, db := oneDelivery(t)
	ctx := context.Background()
	s := NewSender(SenderConfig{DB: db, Log: slog.New(slog.DiscardHandler), AllowPrivate: true})
	s.client.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: http.StatusNoContent, Body: io.NopCloser(strings.NewReader("")), Header: http.Header{}, Request: r}, nil
	})
	stale, err := s.claimFree(ctx)
	if err != nil || len(stale) != 1 {
		t.Fatalf("first claim: %v, %v", stale, err)
	}
	// Its lease runs out; another sender makes it a dead letter; an
	// administrator replays it (as ReplayDelivery does); a third claims it.
	if _, err := pool.Exec(ctx, `UPDATE deliveries SET state = $1, finish_time = now()`, stateDead); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE deliveries SET state = $1, attempts = 0, replays = replays + 1, next_attempt_time = now(),
		finish_time = NULL, first_try_time = NULL, refusals = 0`, statePending); err != nil {
		t.Fatal(err)
	}
	current, err := s.claimFree(ctx)
	if err != nil || len(current) != 1 || current[0].attempts != stale[0].attempts {
		t.Fatalf("claim after the replay: %v, %v; want one at the same attempt number as the stale one", current, err)
	}
	if err := s.send(ctx, stale[0]); err != nil {
		t.Fatal(err)
	}
	var state int16
	if err := pool.QueryRow(ctx, `SELECT state FROM deliveries`).Scan(&state); err != nil || state != statePending {
		t.Fatalf("after the stale sender's outcome: state %d, %v; want the current claim's PENDING, untouched", state, err)
	}
	// A sender of the release before, during a rolling update, claims by
	// the attempt count alone: the current claim's lease runs out, it
	// claims, and the current claim's late outcome changes nothing.
	if _, err := pool.Exec(ctx, `UPDATE deliveries SET attempts = attempts + 1`); err != nil {
		t.Fatal(err)
	}
	if err := s.send(ctx, current[0]); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT state FROM deliveries`).Scan(&state); err != nil || state != statePending {
		t.Fatalf("after an outcome over an older sender's claim: state %d, %v; want PENDING, untouched", state, err)
	}
}

// A FULL payload this sender cannot read (most likely enqueued by a newer
// one, during a rolling deploy) is Handoff's failure, not the receiver's:
// nothing is sent, the try is given back and no dead letter is made, so a
// sender that reads it sends it later.
func TestUnreadablePayloadIsNotTheReceivers(t *testing.T) {
	pool, schema := pgtest.Schema(t, Migrations()...)
	db := pgtest.App(t, schema)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `INSERT INTO subscriptions (clinic, id, url, topics, payload, owner, secret, audience)
		VALUES ('north', 's1', 'https://ehr.example.org/hooks', $1, 2, 'ehr-1', 'whsec_test', 'ehr')`,
		[]int16{int16(webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)}); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO deliveries (clinic, subscription_id, id, source, outbox_id, event_type, topic, resource, family, payload)
		VALUES ('north', 's1', 'd1', 'referrals', 1, 'handoff.referrals.v1.referral.accepted', $1,
			'clinics/north/referrals/r1', 'clinics/north/families/f1', '\xffff')`, int16(webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)); err != nil {
		t.Fatal(err)
	}
	s := NewSender(SenderConfig{DB: db, Log: slog.New(slog.DiscardHandler), AllowPrivate: true, MaxAttempts: 1})
	posts := 0
	s.client.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		posts++
		return &http.Response{StatusCode: http.StatusNoContent, Body: io.NopCloser(strings.NewReader("")), Header: http.Header{}, Request: r}, nil
	})
	// Its event is two days old (a reminder's, due only now): the day of
	// grace counts from the first try.
	if _, err := pool.Exec(ctx, `UPDATE deliveries SET create_time = now() - interval '48 hours'`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Once(ctx); err != nil {
		t.Fatal(err)
	}
	var state int16
	var attempts int
	if err := pool.QueryRow(ctx, `SELECT state, attempts FROM deliveries`).Scan(&state, &attempts); err != nil {
		t.Fatal(err)
	}
	if posts != 0 || state != statePending || attempts != 0 {
		t.Fatalf("%d POSTs, state %d, %d attempts; want none sent, still PENDING, the try given back", posts, state, attempts)
	}
	// Each such try in a row waits longer: after the fourth, 4 to 8 minutes.
	for range 3 {
		if _, err := pool.Exec(ctx, `UPDATE deliveries SET next_attempt_time = now()`); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Once(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var wait float64
	var own int
	if err := pool.QueryRow(ctx, `SELECT extract(epoch FROM next_attempt_time - now()), own_failures FROM deliveries`).Scan(&wait, &own); err != nil {
		t.Fatal(err)
	}
	if own != 4 || wait < 239 || wait > 481 {
		t.Fatalf("after %d tries failed on Handoff's side, the next in %.0f s; want 4, and 4 to 8 min", own, wait)
	}
	// A day on, no sender has read it: it is dead, so that it no longer
	// holds back the resource's later notifications, with a reason that
	// names Handoff.
	if _, err := pool.Exec(ctx, `UPDATE deliveries SET first_try_time = now() - interval '25 hours', next_attempt_time = now()`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Once(ctx); err != nil {
		t.Fatal(err)
	}
	var reason string
	if err := pool.QueryRow(ctx, `SELECT state, last_error FROM deliveries`).Scan(&state, &reason); err != nil {
		t.Fatal(err)
	}
	if posts != 0 || state != stateDead || !strings.Contains(reason, "Handoff could not read the event") {
		t.Fatalf("a day on: %d POSTs, state %d, %q; want a dead letter naming Handoff", posts, state, reason)
	}
}

// A failure's text is cut to fit last_error on a character boundary: a
// receiver's answer quoted in the error may hold any UTF-8, and PostgreSQL
// refuses a cut character, which would leave the outcome unrecorded and
// the delivery sent again and again.
func TestDescribeCutsOnACharacter(t *testing.T) {
	msg := describe(errors.New("x" + strings.Repeat("é", 200)))
	if !utf8.ValidString(msg) || len(msg) > 300 || len(msg) < 290 {
		t.Fatalf("describe gave %d bytes, valid UTF-8 %v; want up to 300 bytes of valid UTF-8", len(msg), utf8.ValidString(msg))
	}
}

// A reminder handled while its notification is on the way withdraws the
// delivery; the notification went out all the same, and is recorded as
// delivered, not as never sent.
func TestWithdrawnWhileSendingIsDelivered(t *testing.T) {
	pool, schema := pgtest.Schema(t, Migrations()...)
	db := pgtest.App(t, schema)
	ctx := context.Background()
	subscribe(t, pool, "automation-1", webhooksv1.Topic_TOPIC_REMINDER_DUE)
	sink := &Sink{DB: db}
	reminder := func(typ string) outbox.Stored {
		a, err := anypb.New(&interventionsv1.Reminder{Name: "clinics/north/reminders/m1", DueTime: timestamppb.New(time.Now().Add(-time.Minute))})
		if err != nil {
			t.Fatal(err)
		}
		return outbox.Stored{ID: int64(len(typ)), Clinic: "north", Type: reminderEvents + typ, Resource: "clinics/north/reminders/m1", Payload: a}
	}
	if n, err := sink.Enqueue(ctx, "interventions", reminder("created")); err != nil || n != 1 {
		t.Fatalf("Enqueue = %d, %v", n, err)
	}
	s := NewSender(SenderConfig{DB: db, Log: slog.New(slog.DiscardHandler), AllowPrivate: true})
	posts := 0
	s.client.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		posts++
		// The automation completes the reminder meanwhile.
		if _, err := sink.Enqueue(ctx, "interventions", reminder("delivered")); err != nil {
			t.Error(err)
		}
		return &http.Response{StatusCode: http.StatusNoContent, Body: io.NopCloser(strings.NewReader("")), Header: http.Header{}, Request: r}, nil
	})
	if _, err := s.Once(ctx); err != nil {
		t.Fatal(err)
	}
	var state int16
	var delivered *time.Time
	if err := pool.QueryRow(ctx, `SELECT state, deliver_time FROM deliveries`).Scan(&state, &delivered); err != nil {
		t.Fatal(err)
	}
	if posts != 1 || state != stateDelivered || delivered == nil {
		t.Fatalf("%d POSTs, state %d, delivered at %v; want the notification that went out recorded as DELIVERED", posts, state, delivered)
	}
}

// A dead letter replayed while the pruning waits for its row is pending
// when the pruning gets it, and stays: the administrator was told it
// would be sent.
func TestPruneSparesADeadLetterReplayedMeanwhile(t *testing.T) {
	pool, schema := pgtest.Schema(t, Migrations()...)
	db := pgtest.App(t, schema)
	ctx := context.Background()
	subscribe(t, pool, "ehr-1", webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
	if _, err := pool.Exec(ctx, `INSERT INTO deliveries (clinic, subscription_id, id, source, outbox_id, event_type, topic, resource, family, state, finish_time)
		VALUES ('north', 's1', 'd1', 'referrals', 1, 'handoff.referrals.v1.referral.accepted', $1,
			'clinics/north/referrals/r1', 'clinics/north/families/f1', $2, now() - interval '31 days')`,
		int16(webhooksv1.Topic_TOPIC_REFERRAL_CHANGED), stateDead); err != nil {
		t.Fatal(err)
	}
	// The replay holds the row while the pruning looks.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `UPDATE deliveries SET state = $1, next_attempt_time = now() WHERE id = 'd1'`, statePending); err != nil {
		t.Fatal(err)
	}
	s := NewSender(SenderConfig{DB: db, Log: slog.New(slog.DiscardHandler), AllowPrivate: true})
	pruned := make(chan error, 1)
	go func() { pruned <- s.prune(ctx, time.Now()) }()
	select {
	case err := <-pruned:
		t.Fatalf("the pruning did not wait for the replay's row: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-pruned; err != nil {
		t.Fatal(err)
	}
	var state int16
	if err := pool.QueryRow(ctx, `SELECT state FROM deliveries WHERE id = 'd1'`).Scan(&state); err != nil || state != statePending {
		t.Fatalf("the replayed delivery after the pruning: state %d, %v; want it kept, PENDING", state, err)
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		status int
		header string
		want   time.Duration
		ok     bool
	}{
		{http.StatusServiceUnavailable, "120", 120 * time.Second, true},
		{http.StatusTooManyRequests, " 7 ", 7 * time.Second, true},
		{http.StatusServiceUnavailable, now.Add(90 * time.Minute).Format(http.TimeFormat), 90 * time.Minute, true},
		{http.StatusServiceUnavailable, now.Add(-time.Minute).Format(http.TimeFormat), 0, true}, // already past
		{http.StatusServiceUnavailable, "", 0, false},
		{http.StatusServiceUnavailable, "-5", 0, false},
		{http.StatusServiceUnavailable, "soon", 0, false},
		{http.StatusServiceUnavailable, "99999999999999", 0, false},
		{http.StatusInternalServerError, "120", 0, false}, // only 429 and 503 say when
	} {
		resp := &http.Response{StatusCode: c.status, Header: http.Header{}}
		if c.header != "" {
			resp.Header.Set("Retry-After", c.header)
		}
		got, ok := retryAfter(resp, now)
		if got != c.want || ok != c.ok {
			t.Errorf("status %d, Retry-After %q: %v, %v; want %v, %v", c.status, c.header, got, ok, c.want, c.ok)
		}
	}
	// The status still decides what the status decides.
	err := error(throttledError{status: http.StatusServiceUnavailable, after: time.Minute})
	if st := httpStatusError(0); !errors.As(err, &st) || st != http.StatusServiceUnavailable || refusal(err) {
		t.Fatalf("throttled 503 reads as %v (refusal %v)", st, refusal(err))
	}
	if got := describe(err); got != "HTTP 503, retry after 1m0s" {
		t.Fatalf("described as %q", got)
	}
}

// A subscription is slow after a POST that took half the timeout, answered
// or not, and gets its share back after one answered sooner; the slow ones
// get a quarter of the slots between them, one each.
func TestStallBreakerShares(t *testing.T) {
	s := NewSender(SenderConfig{Parallel: 8, Timeout: 10 * time.Second, Log: slog.New(slog.DiscardHandler)})
	a, b, c := &pending{subscription: "a"}, &pending{subscription: "b"}, &pending{subscription: "c"}
	now := time.Now()
	s.posted(a, now.Add(-6*time.Second), false) // timed out, say
	s.posted(b, now.Add(-5*time.Second), true)  // a slow answer
	s.posted(c, now.Add(-time.Second), false)   // refused at once: not slow
	shares := func(at time.Time) share {
		s.fmu.Lock()
		defer s.fmu.Unlock()
		return s.shares(at)
	}
	// Two probes (8/4) between the slow ones, none under way: each may
	// take one (share 4, counted busy 3); c keeps its whole share.
	got := shares(now)
	if got.busy["a"] != 3 || got.busy["b"] != 3 || got.busy["c"] != 0 || !slices.Equal(got.slow, []string{"a", "b"}) || got.probes != 2 {
		t.Fatalf("share %+v; want a and b slow at 3, two probes, c absent", got)
	}
	// One under way since long ago: slow from its POST alone, it holds one
	// of the probes; a, with one under way, may take no other.
	s.inFlight = map[string]int{"a": 1, "d": 1}
	d := &pending{subscription: "d"}
	s.posting = map[*pending]time.Time{d: now.Add(-5 * time.Second)}
	got = shares(now)
	if got.busy["a"] != 4 || got.busy["d"] != 4 || got.busy["b"] != 3 || got.probes != 0 {
		t.Fatalf("share %+v; want a and d full, b at 3 and no probe left: two slow sends under way", got)
	}
	// b answers quickly: its share is its own again.
	delete(s.posting, d)
	s.posted(b, time.Now(), true)
	s.inFlight = nil
	if got = shares(now); !slices.Equal(got.slow, []string{"a"}) || got.busy["a"] != 3 || got.probes != 2 {
		t.Fatalf("share %+v; want only a slow", got)
	}
	// Forgotten after forgetSlow without a send.
	if got = shares(now.Add(s.forgetSlow() + time.Minute)); len(got.busy) != 0 || len(got.slow) != 0 {
		t.Fatalf("share %+v long after; want none", got)
	}
}

// askingFamilies grants every disclosure and keeps what it was asked.
type askingFamilies struct {
	familiesv1.FamiliesServiceClient
	asked []*familiesv1.CreateDisclosureRequest
}

func (f *askingFamilies) CreateDisclosure(_ context.Context, in *familiesv1.CreateDisclosureRequest, _ ...grpc.CallOption) (*familiesv1.Disclosure, error) {
	f.asked = append(f.asked, in)
	return &familiesv1.Disclosure{Name: in.GetParent() + "/disclosures/x"}, nil
}

// A delivery enqueued before the member was kept (migration 0015) is not
// taken for the loved one's: a full one is asked of the member its payload
// names, and an identifiers-only referral notification to the EHR, which
// keeps no payload to tell, is withheld, not asked of the loved one's
// consent.
func TestDeliveriesOfUnknownMemberAreNotTheLovedOnes(t *testing.T) {
	pool, schema := pgtest.Schema(t, Migrations()...)
	db := pgtest.App(t, schema)
	ctx := context.Background()
	topics := []int16{int16(webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)}
	if _, err := pool.Exec(ctx, `INSERT INTO subscriptions (clinic, id, url, topics, payload, owner, secret, audience, outsider)
		VALUES ('north', 'ids', 'https://ehr.example.org/ids', $1, $2, 'ehr-1', 'whsec_test', 'ehr', true),
			('north', 'full', 'https://ehr.example.org/full', $1, $3, 'ehr-1', 'whsec_test', 'ehr', true)`,
		topics, int16(webhooksv1.PayloadKind_PAYLOAD_KIND_ID_ONLY), int16(webhooksv1.PayloadKind_PAYLOAD_KIND_FULL)); err != nil {
		t.Fatal(err)
	}
	a, err := anypb.New(&referralsv1.Referral{Name: "clinics/north/referrals/r-mom", Family: "clinics/north/families/f1",
		Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_FAMILY_MEMBER, MemberId: "mom"}})
	if err != nil {
		t.Fatal(err)
	}
	payload, err := proto.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	// As a sender before migration 0015 enqueued them: no member_id.
	if _, err := pool.Exec(ctx, `INSERT INTO deliveries (clinic, subscription_id, id, source, outbox_id, event_type, topic, resource, family, payload)
		VALUES ('north', 'ids', 'd1', 'referrals', 1, 'handoff.referrals.v1.referral.accepted', $1, 'clinics/north/referrals/r-mom',
			'clinics/north/families/f1', NULL),
		('north', 'full', 'd2', 'referrals', 1, 'handoff.referrals.v1.referral.accepted', $1, 'clinics/north/referrals/r-mom',
			'clinics/north/families/f1', $2)`, topics[0], payload); err != nil {
		t.Fatal(err)
	}
	fam := &askingFamilies{}
	s := NewSender(SenderConfig{DB: db, Log: slog.New(slog.DiscardHandler), AllowPrivate: true, Families: fam})
	var posted []string
	s.client.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		posted = append(posted, r.URL.Path)
		return &http.Response{StatusCode: http.StatusNoContent, Body: io.NopCloser(strings.NewReader("")), Header: http.Header{}, Request: r}, nil
	})
	if _, err := s.Once(ctx); err != nil {
		t.Fatal(err)
	}
	states := map[string]int16{}
	rows, err := pool.Query(ctx, `SELECT id, state FROM deliveries`)
	if err != nil {
		t.Fatal(err)
	}
	var id string
	var state int16
	if _, err := pgx.ForEachRow(rows, []any{&id, &state}, func() error { states[id] = state; return nil }); err != nil {
		t.Fatal(err)
	}
	if states["d1"] != stateWithdrawn || states["d2"] != stateDelivered || !slices.Equal(posted, []string{"/full"}) {
		t.Fatalf("states %v, posted %v; want the identifiers-only one withheld and the full one sent", states, posted)
	}
	if len(fam.asked) == 0 {
		t.Fatal("the full notification went out unasked")
	}
	for _, r := range fam.asked {
		if r.GetDisclosure().GetMemberId() != "mom" || r.GetDisclosure().GetResource() != "clinics/north/referrals/r-mom" {
			t.Fatalf("asked %v; want only mom's consent, for the full notification", r)
		}
	}
}

// A delivery failing on Handoff's side waits longer with each such try in
// a row, from ownRetry and at most the longest backoff, and spread at
// random, at the limit too: not every 30 s in step with every other
// pending delivery.
func TestOwnSideWaitGrowsAndSpreads(t *testing.T) {
	low, high := func() float64 { return 0 }, func() float64 { return 1 }
	for _, c := range []struct {
		before      int
		least, most time.Duration // at the lowest draw, and at the highest
	}{
		{0, ownRetry, 2 * ownRetry},
		{3, 4 * time.Minute, 8 * time.Minute},
		{50, 30 * time.Minute, time.Hour},
	} {
		if got := ownWait(c.before, time.Hour, low); got != c.least {
			t.Errorf("%d before, lowest draw: %v; want %v", c.before, got, c.least)
		}
		if got := ownWait(c.before, time.Hour, high); got != c.most {
			t.Errorf("%d before, highest draw: %v; want %v", c.before, got, c.most)
		}
	}
}

// The secrets sign as they are when the POST goes, not as the claim read
// them: a rotation in between signs with the new secret (a receiver that
// switched at once verifies it), and a delete in between sends nothing,
// for identifiers-only deliveries too, which ask the families service
// nothing.
func TestSecretsAreReadAgainBeforeThePost(t *testing.T) {
	pool, db := oneDelivery(t)
	ctx := context.Background()
	s := NewSender(SenderConfig{DB: db, Log: slog.New(slog.DiscardHandler), AllowPrivate: true})
	var signatures []string
	var body []byte
	s.client.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		signatures = append(signatures, r.Header.Get(SignatureHeader))
		body, _ = io.ReadAll(r.Body)
		return &http.Response{StatusCode: http.StatusNoContent, Body: io.NopCloser(strings.NewReader("")), Header: http.Header{}, Request: r}, nil
	})
	claimed, err := s.claim(ctx, 10, share{})
	if err != nil || len(claimed) != 1 {
		t.Fatalf("claim = %d, %v", len(claimed), err)
	}
	if _, err := pool.Exec(ctx, `UPDATE subscriptions SET previous_secret = secret, secret = 'whsec_new',
		previous_secret_expire_time = now() + interval '1 hour'`); err != nil {
		t.Fatal(err)
	}
	if err := s.send(ctx, claimed[0]); err != nil {
		t.Fatal(err)
	}
	if len(signatures) != 1 {
		t.Fatalf("%d POSTs; want 1", len(signatures))
	}
	for _, secret := range []string{"whsec_new", "whsec_test"} {
		if err := Verify(secret, signatures[0], body, time.Now()); err != nil {
			t.Errorf("rotated after the claim: %s does not verify the POST: %v", secret, err)
		}
	}

	// Deleted after the claim: nothing goes.
	a, err := anypb.New(&referralsv1.Referral{Name: "clinics/north/referrals/r2"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (&Sink{DB: db}).Enqueue(ctx, "referrals", outbox.Stored{ID: 2, Clinic: "north",
		Type: "handoff.referrals.v1.referral.accepted", Resource: "clinics/north/referrals/r2", Payload: a}); err != nil {
		t.Fatal(err)
	}
	if claimed, err = s.claim(ctx, 10, share{}); err != nil || len(claimed) != 1 {
		t.Fatalf("claim = %d, %v", len(claimed), err)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM subscriptions`); err != nil {
		t.Fatal(err)
	}
	if err := s.send(ctx, claimed[0]); err != nil {
		t.Fatal(err)
	}
	if len(signatures) != 1 {
		t.Fatalf("%d POSTs; want none after the subscription was deleted", len(signatures)-1)
	}
}

// A rotation while the connection is made (or the consent checked), after
// the send's first read of the secrets, signs too: the signature is made
// again as the connection comes, when the secrets are read for the last
// time, before the transport writes a header.
func TestRotationAsTheConnectionComesSigns(t *testing.T) {
	pool, db := oneDelivery(t)
	ctx := context.Background()
	s := NewSender(SenderConfig{DB: db, Log: slog.New(slog.DiscardHandler), AllowPrivate: true})
	var signature string
	var body []byte
	s.client.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		// As net/http's transport does: the connection, then the request.
		if _, err := pool.Exec(ctx, `UPDATE subscriptions SET previous_secret = secret, secret = 'whsec_new',
			previous_secret_expire_time = now() + interval '1 hour'`); err != nil {
			return nil, err
		}
		if trace := httptrace.ContextClientTrace(r.Context()); trace != nil && trace.GotConn != nil {
			trace.GotConn(httptrace.GotConnInfo{})
		}
		signature = r.Header.Get(SignatureHeader)
		body, _ = io.ReadAll(r.Body)
		return &http.Response{StatusCode: http.StatusNoContent, Body: io.NopCloser(strings.NewReader("")), Header: http.Header{}, Request: r}, nil
	})
	claimed, err := s.claim(ctx, 10, share{})
	if err != nil || len(claimed) != 1 {
		t.Fatalf("claim = %d, %v", len(claimed), err)
	}
	if err := s.send(ctx, claimed[0]); err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"whsec_new", "whsec_test"} {
		if err := Verify(secret, signature, body, time.Now()); err != nil {
			t.Errorf("rotated as the connection came: %s does not verify the POST: %v", secret, err)
		}
	}
}

// A claim's lease outlasts the longest attempt: the consent check, the
// connection, the disclosure's record (the attempt's clock stopped) and
// the POST (its clock started again) take up to Timeout each.
func TestLeaseCoversTheLongestAttempt(t *testing.T) {
	pool, db := oneDelivery(t)
	ctx := context.Background()
	const timeout = 40 * time.Second
	s := NewSender(SenderConfig{DB: db, Log: slog.New(slog.DiscardHandler), AllowPrivate: true, Timeout: timeout})
	if claimed, err := s.claim(ctx, 10, share{}); err != nil || len(claimed) != 1 {
		t.Fatalf("claim = %d, %v", len(claimed), err)
	}
	var lease time.Duration
	if err := pool.QueryRow(ctx, `SELECT next_attempt_time - now() FROM deliveries`).Scan(&lease); err != nil {
		t.Fatal(err)
	}
	if lease < 4*timeout {
		t.Fatalf("lease %v for an attempt of up to %v", lease, 4*timeout)
	}
}

// A full delivery whose subscription was deleted after the claim asks the
// families service nothing: asking records the disclosure, and one
// recorded for a notification that never went would stand in the
// accounting of disclosures.
func TestDeletedBeforeTheConsentCheckRecordsNoDisclosure(t *testing.T) {
	pool, db := fullDelivery(t, "https://ehr.example.org/full")
	ctx := context.Background()
	fam := &askingFamilies{}
	s := NewSender(SenderConfig{DB: db, Log: slog.New(slog.DiscardHandler), AllowPrivate: true, Families: fam})
	posts := 0
	s.client.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		posts++
		return &http.Response{StatusCode: http.StatusNoContent, Body: io.NopCloser(strings.NewReader("")), Header: http.Header{}, Request: r}, nil
	})
	claimed, err := s.claim(ctx, 10, share{})
	if err != nil || len(claimed) != 1 {
		t.Fatalf("claim = %d, %v", len(claimed), err)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM subscriptions`); err != nil {
		t.Fatal(err)
	}
	if err := s.send(ctx, claimed[0]); err != nil {
		t.Fatal(err)
	}
	if len(fam.asked) != 0 || posts != 0 {
		t.Fatalf("%d disclosures recorded, %d POSTs; want none for a subscription deleted", len(fam.asked), posts)
	}
}

// Subscriptions take turns at the claim: one with a backlog due before
// another's notification does not take every slot, nor does one already
// sending.
func TestClaimTakesSubscriptionsInTurn(t *testing.T) {
	pool, schema := pgtest.Schema(t, Migrations()...)
	db := pgtest.App(t, schema)
	ctx := context.Background()
	for _, id := range []string{"busy", "quiet"} {
		if _, err := pool.Exec(ctx, `INSERT INTO subscriptions (clinic, id, url, topics, payload, owner, secret)
			VALUES ('north', $1, 'https://receiver.example.org/'||$1, $2, 1, 'ehr-1', 'whsec_test')`,
			id, []int16{int16(webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)}); err != nil {
			t.Fatal(err)
		}
	}
	// The busy subscription's backlog, three referrals, is due a minute
	// before the quiet one's single notification.
	for i, sub := range []string{"busy", "busy", "busy", "quiet"} {
		due := "now() - interval '1 minute'"
		if sub == "quiet" {
			due = "now()"
		}
		if _, err := pool.Exec(ctx, `INSERT INTO deliveries (clinic, subscription_id, id, source, outbox_id, event_type, topic, resource, next_attempt_time)
			VALUES ('north', $1, $2, 'referrals', $3, 'handoff.referrals.v1.referral.accepted', $4, $5, `+due+`)`,
			sub, fmt.Sprintf("d%d", i), i+1, int16(webhooksv1.Topic_TOPIC_REFERRAL_CHANGED), fmt.Sprintf("clinics/north/referrals/r%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	s := NewSender(SenderConfig{DB: db, Log: slog.New(slog.DiscardHandler), AllowPrivate: true, Parallel: 8})
	subs := func(ps []*pending) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.subscription)
		}
		slices.Sort(out)
		return out
	}
	got, err := s.claim(ctx, 2, share{})
	if err != nil || !slices.Equal(subs(got), []string{"busy", "quiet"}) {
		t.Fatalf("claimed %v, %v; want one of each subscription's", subs(got), err)
	}
	// With two of its sends under way, the busy one waits its turn
	// behind a subscription with none.
	if _, err := pool.Exec(ctx, `INSERT INTO deliveries (clinic, subscription_id, id, source, outbox_id, event_type, topic, resource, next_attempt_time)
		VALUES ('north', 'quiet', 'd9', 'referrals', 9, 'handoff.referrals.v1.referral.accepted', $1, 'clinics/north/referrals/r9', now())`,
		int16(webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)); err != nil {
		t.Fatal(err)
	}
	got, err = s.claim(ctx, 1, share{busy: map[string]int{"busy": 2}})
	if err != nil || !slices.Equal(subs(got), []string{"quiet"}) {
		t.Fatalf("claimed %v, %v; want the quiet subscription's", subs(got), err)
	}
}

// fullDelivery gives a webhooks schema with one pending full delivery of
// a referral of the loved one's to the EHR's subscription at url.
func fullDelivery(t *testing.T, url string) (*pgxpool.Pool, *pgdb.DB) {
	t.Helper()
	pool, schema := pgtest.Schema(t, Migrations()...)
	db := pgtest.App(t, schema)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `INSERT INTO subscriptions (clinic, id, url, topics, payload, owner, secret, audience, outsider)
		VALUES ('north', 'full', $3, $1, $2, 'ehr-1', 'whsec_test', 'ehr', true)`,
		[]int16{int16(webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)}, int16(webhooksv1.PayloadKind_PAYLOAD_KIND_FULL), url); err != nil {
		t.Fatal(err)
	}
	a, err := anypb.New(&referralsv1.Referral{Name: "clinics/north/referrals/r1", Family: "clinics/north/families/f1",
		Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE}})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := (&Sink{DB: db}).Enqueue(ctx, "referrals", outbox.Stored{ID: 1, Clinic: "north",
		Type: "handoff.referrals.v1.referral.accepted", Resource: "clinics/north/referrals/r1", Payload: a}); err != nil || n != 1 {
		t.Fatalf("Enqueue = %d, %v", n, err)
	}
	return pool, db
}

// A subscription deleted while the sender connects to its receiver (after
// the last check before the POST) sends nothing, and records no
// disclosure: the delivery is checked again as the connection comes.
// Before, the record was made and the notification sent.
func TestDeletedWhileConnectingSendsNothing(t *testing.T) {
	var posts atomic.Int32
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		posts.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer rcv.Close()
	pool, db := fullDelivery(t, rcv.URL)
	ctx := context.Background()
	fam := &askingFamilies{}
	s := NewSender(SenderConfig{DB: db, Log: slog.New(slog.DiscardHandler), AllowPrivate: true, Families: fam})
	transport := s.client.Transport.(*http.Transport).Clone()
	dial := transport.DialContext
	transport.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if _, err := pool.Exec(ctx, `DELETE FROM subscriptions`); err != nil {
			t.Error(err)
		}
		return dial(ctx, network, addr)
	}
	s.client.Transport = transport
	claimed, err := s.claim(ctx, 10, share{})
	if err != nil || len(claimed) != 1 {
		t.Fatalf("claim = %d, %v", len(claimed), err)
	}
	if err := s.send(ctx, claimed[0]); err != nil {
		t.Fatal(err)
	}
	var records int
	for _, a := range fam.asked {
		if !a.GetValidateOnly() {
			records++
		}
	}
	if records != 0 || posts.Load() != 0 {
		t.Fatalf("%d disclosures recorded, %d POSTs; want none for a subscription deleted as the sender connected", records, posts.Load())
	}
}

// slowRecord checks consents at once, and takes its time to fail the
// record of a disclosure.
type slowRecord struct {
	familiesv1.FamiliesServiceClient
	took time.Duration
}

func (f slowRecord) CreateDisclosure(ctx context.Context, in *familiesv1.CreateDisclosureRequest, _ ...grpc.CallOption) (*familiesv1.Disclosure, error) {
	if !in.GetValidateOnly() {
		time.Sleep(f.took)
		return nil, status.Error(codes.Unavailable, "families: slow, then down")
	}
	return &familiesv1.Disclosure{Name: in.GetParent() + "/disclosures/x"}, nil
}

// A record of the disclosure that fails slowly is the families service's
// time, not the receiver's: the subscription is not taken for slow, and
// its sends not throttled. Before, the record's time counted as the POST's.
func TestSlowFailedRecordIsNotTheReceivers(t *testing.T) {
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	defer rcv.Close()
	_, db := fullDelivery(t, rcv.URL)
	ctx := context.Background()
	s := NewSender(SenderConfig{DB: db, Log: slog.New(slog.DiscardHandler), AllowPrivate: true, Timeout: 400 * time.Millisecond,
		Families: slowRecord{took: 300 * time.Millisecond}})
	claimed, err := s.claim(ctx, 10, share{})
	if err != nil || len(claimed) != 1 {
		t.Fatalf("claim = %d, %v", len(claimed), err)
	}
	if err := s.send(ctx, claimed[0]); err != nil {
		t.Fatal(err)
	}
	s.fmu.Lock()
	defer s.fmu.Unlock()
	if _, slow := s.slow["full"]; slow || len(s.posting) != 0 {
		t.Fatalf("slow %v, posting %v; want the receiver not taken for slow by the record's time", s.slow, s.posting)
	}
}

// A clock paused only for the check as the connection came resumes with
// what was left of the attempt's time, not the whole of it again: the
// connection's time is the receiver's. Before, every attempt got a whole
// timeout anew once connected.
func TestAttemptClockResumesWhatWasLeft(t *testing.T) {
	ctx, clock := newAttemptClock(context.Background(), 400*time.Millisecond, nil)
	defer clock.stop()
	time.Sleep(250 * time.Millisecond) // connecting
	began := time.Now()
	if !clock.pause() {
		t.Fatal("the clock ran out before its time")
	}
	time.Sleep(100 * time.Millisecond) // the check, not the receiver's
	clock.resume()
	<-ctx.Done()
	// 150 ms were left; a whole timeout anew would have taken 400.
	if took := time.Since(began) - 100*time.Millisecond; took > 350*time.Millisecond {
		t.Fatalf("the attempt ran %v after the pause; want about the 150 ms left", took)
	}
	if !clock.began.Before(began) {
		t.Fatalf("the receiver's time begins at %v, after the connection (%v); want it moved by the pause only", clock.began, began)
	}
}
