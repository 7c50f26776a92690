package webhooks_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"google.golang.org/grpc"

	webhooksv1 "github.com/handoff-health/handoff/gen/go/handoff/webhooks/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
	"github.com/handoff-health/handoff/services/servicetest"
	"github.com/handoff-health/handoff/services/webhooks"
)

func keyOf(b byte) []byte {
	k := make([]byte, 32)
	k[0] = b
	return k
}

func box(t *testing.T, key []byte, previous ...[]byte) *webhooks.SecretBox {
	t.Helper()
	b, err := webhooks.NewSecretBox(key, previous...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Retiring the key that seals signing secrets: run with a new key and the
// old one as previous, let the sender seal every secret again, then run
// with the new key alone; notifications stay signed with the secrets the
// receivers hold, the rotated one included.
func TestSecretKeyRotation(t *testing.T) {
	pool, schema := pgtest.Schema(t, webhooks.Migrations()...)
	db := pgtest.App(t, schema)
	ctx := context.Background()
	oldKey, newKey := keyOf(1), keyOf(2)
	srv := webhooks.New(db, webhooks.Config{AllowInsecure: true, AllowPrivate: true, Secrets: box(t, oldKey)})
	env := servicetest.Start(t, webhooks.Policy(), func(s *grpc.Server) { webhooksv1.RegisterWebhooksServiceServer(s, srv) })
	c := webhooksv1.NewWebhooksServiceClient(env.Conn)
	ehr := env.As("north", "ehr-1", auth.RoleEHR)
	type post struct {
		header string
		body   []byte
	}
	posts := make(chan post, 4)
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		posts <- post{r.Header.Get(webhooks.SignatureHeader), body}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(rcv.Close)
	create := &webhooksv1.CreateSubscriptionRequest{Parent: "clinics/north", RequestId: "create-1",
		Subscription: &webhooksv1.Subscription{Url: rcv.URL, Topics: []webhooksv1.Topic{webhooksv1.Topic_TOPIC_REFERRAL_CHANGED}}}
	first, err := c.CreateSubscription(ehr, create)
	if err != nil {
		t.Fatal(err)
	}
	rotate := &webhooksv1.RotateSubscriptionSecretRequest{Name: first.GetName(), RequestId: "rotate-1"}
	rotated, err := c.RotateSubscriptionSecret(ehr, rotate)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateSubscription(ehr, &webhooksv1.CreateSubscriptionRequest{Parent: "clinics/north",
		Subscription: &webhooksv1.Subscription{Url: rcv.URL + "/appointments", Topics: []webhooksv1.Topic{webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED}}}); err != nil {
		t.Fatal(err)
	}
	// Each subscription's stored secrets, current first.
	stored := func() (secrets [][]string) {
		rows, err := pool.Query(ctx, `SELECT array_remove(ARRAY[secret, previous_secret], NULL) FROM subscriptions ORDER BY id`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var s []string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			secrets = append(secrets, s)
		}
		return secrets
	}
	before := stored()
	sender := func(b *webhooks.SecretBox) *webhooks.Sender {
		return webhooks.NewSender(webhooks.SenderConfig{DB: db, Log: slog.New(slog.DiscardHandler), AllowPrivate: true, Secrets: b})
	}

	// A key that opens nothing reseals nothing and changes nothing.
	if n, skipped, err := sender(box(t, keyOf(3))).Reseal(ctx); err != nil || n != 0 || skipped != 2 {
		t.Fatalf("reseal with an unrelated key: %d resealed, %d skipped, %v; want 0, 2", n, skipped, err)
	}
	if got := stored(); fmt.Sprint(got) != fmt.Sprint(before) {
		t.Fatalf("an unrelated key changed the stored secrets")
	}

	both := box(t, newKey, oldKey)
	if n, skipped, err := sender(both).Reseal(ctx); err != nil || n != 2 || skipped != 0 {
		t.Fatalf("reseal: %d resealed, %d skipped, %v; want 2, 0", n, skipped, err)
	}
	// Every stored secret changed, the rotated one included; the new key
	// alone opens them (below, by sending under it).
	after, changed := stored(), 0
	for i := range after {
		for j := range after[i] {
			if j < len(before[i]) && after[i][j] != before[i][j] {
				changed++
			}
		}
	}
	if changed != 3 {
		t.Fatalf("%d stored secrets resealed; want 3 (two subscriptions, one of them rotated)", changed)
	}
	if n, _, err := sender(both).Reseal(ctx); err != nil || n != 0 {
		t.Fatalf("a second reseal: %d, %v; want nothing left to do", n, err)
	}
	// A retried rotation whose kept answer was sealed under the old key
	// still answers while the old key is configured. (The create's retry
	// is refused: its secret was rotated away.)
	srv2 := webhooks.New(db, webhooks.Config{AllowInsecure: true, AllowPrivate: true, Secrets: both})
	env2 := servicetest.Start(t, webhooks.Policy(), func(s *grpc.Server) { webhooksv1.RegisterWebhooksServiceServer(s, srv2) })
	if again, err := webhooksv1.NewWebhooksServiceClient(env2.Conn).RotateSubscriptionSecret(env2.As("north", "ehr-1", auth.RoleEHR), rotate); err != nil ||
		again.GetSecret() != rotated.GetSecret() {
		t.Fatalf("retried rotation under the new key: %v, %v", again.GetSecret() != "", err)
	}

	// The new key alone signs with the current secret and, within the
	// rotation's grace, the previous one.
	if _, err := (&webhooks.Sink{DB: db}).Enqueue(ctx, "referrals", referralEvent(t, "r1", "accepted")); err != nil {
		t.Fatal(err)
	}
	if n, err := sender(box(t, newKey)).Once(ctx); err != nil || n != 1 {
		t.Fatalf("send under the new key: %d, %v", n, err)
	}
	var p post
	select {
	case p = <-posts:
	case <-time.After(5 * time.Second):
		t.Fatal("no notification")
	}
	for name, secret := range map[string]string{"current": rotated.GetSecret(), "rotated": first.GetSecret()} {
		if err := webhooks.Verify(secret, p.header, p.body, time.Now()); err != nil {
			t.Errorf("the %s secret does not sign the notification after the key changed: %v", name, err)
		}
	}

	// Past the grace, a reseal drops the rotated secret.
	if _, err := pool.Exec(ctx, `UPDATE subscriptions SET previous_secret_expire_time = now() - interval '1 second' WHERE previous_secret IS NOT NULL`); err != nil {
		t.Fatal(err)
	}
	if n, _, err := sender(box(t, newKey)).Reseal(ctx); err != nil || n != 1 {
		t.Fatalf("reseal after the grace: %d, %v; want the expired secret dropped", n, err)
	}
	var left int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM subscriptions WHERE previous_secret IS NOT NULL OR previous_secret_expire_time IS NOT NULL`).Scan(&left); err != nil || left != 0 {
		t.Fatalf("%d rotated secrets kept past their grace (%v)", left, err)
	}
}

// A rotated secret past its grace is dropped even from a subscription
// whose current secret opens with none of the keys: only the grace is
// judged, by the clock. One still in its grace is left as it is.
func TestResealDropsAnExpiredSecretBesideOneItCannotOpen(t *testing.T) {
	pool, schema := pgtest.Schema(t, webhooks.Migrations()...)
	db := pgtest.App(t, schema)
	ctx := context.Background()
	srv := webhooks.New(db, webhooks.Config{AllowInsecure: true, AllowPrivate: true, Secrets: box(t, keyOf(1))})
	env := servicetest.Start(t, webhooks.Policy(), func(s *grpc.Server) { webhooksv1.RegisterWebhooksServiceServer(s, srv) })
	c := webhooksv1.NewWebhooksServiceClient(env.Conn)
	ehr := env.As("north", "ehr-1", auth.RoleEHR)
	for _, topic := range []webhooksv1.Topic{webhooksv1.Topic_TOPIC_REFERRAL_CHANGED, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED} {
		sub, err := c.CreateSubscription(ehr, &webhooksv1.CreateSubscriptionRequest{Parent: "clinics/north",
			Subscription: &webhooksv1.Subscription{Url: "https://ehr.example.org/hooks/" + topic.String(), Topics: []webhooksv1.Topic{topic}}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.RotateSubscriptionSecret(ehr, &webhooksv1.RotateSubscriptionSecretRequest{Name: sub.GetName()}); err != nil {
			t.Fatal(err)
		}
		if topic == webhooksv1.Topic_TOPIC_REFERRAL_CHANGED {
			if _, err := pool.Exec(ctx, `UPDATE subscriptions SET previous_secret_expire_time = now() - interval '1 second' WHERE $1 = ANY(topics)`,
				int16(topic)); err != nil {
				t.Fatal(err)
			}
		}
	}
	var secrets []string
	if err := pool.QueryRow(ctx, `SELECT array_agg(secret ORDER BY id) FROM subscriptions`).Scan(&secrets); err != nil {
		t.Fatal(err)
	}
	s := webhooks.NewSender(webhooks.SenderConfig{DB: db, Log: slog.New(slog.DiscardHandler), AllowPrivate: true, Secrets: box(t, keyOf(3))})
	if n, skipped, err := s.Reseal(ctx); err != nil || n != 1 || skipped != 2 {
		t.Fatalf("reseal with a key that opens nothing: %d changed, %d skipped, %v; want 1 (the expired secret dropped), 2", n, skipped, err)
	}
	var after []string
	var kept int
	if err := pool.QueryRow(ctx, `SELECT array_agg(secret ORDER BY id), count(previous_secret) FROM subscriptions`).Scan(&after, &kept); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(after) != fmt.Sprint(secrets) || kept != 1 {
		t.Fatalf("current secrets changed %v, %d rotated secrets kept; want them as they were, and the one in its grace", after != nil, kept)
	}
}
