// Package stacktest starts the whole system for integration tests: a real
// Temporal server in-process, the services on real listeners over the test
// PostgreSQL, the worker and the relays, with workflow timings shrunk to
// seconds.
package stacktest

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/server/temporaltest"

	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/gateway"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
	"github.com/handoff-health/handoff/services/stack"
	"github.com/handoff-health/handoff/services/telemetry"
	"github.com/handoff-health/handoff/services/webhooks"
	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/codec"
)

// Fast are settings that make the whole story take seconds.
func Fast() activities.Settings {
	s := activities.DefaultSettings()
	s.HoldLead = 3 * time.Second
	s.HoldRetry = time.Second
	s.ReminderOffsets = []time.Duration{5 * time.Second, 2 * time.Second}
	s.OutcomeGrace, s.OutcomeEscalation = time.Hour, time.Hour
	s.IntakeReminderOffsets = []time.Duration{time.Second}
	s.CheckIns = []time.Duration{time.Second, 2 * time.Second, 3 * time.Second}
	s.CoolDown = 2500 * time.Millisecond
	s.OverdoseGrace = 3 * time.Second
	s.ReminderRetryDelay = time.Second
	return s
}

// Proxy forwards TCP to a target until cut; it stands for a network between
// the relays and Temporal that can fail.
type Proxy struct {
	lis   net.Listener
	up    atomic.Bool
	mu    sync.Mutex
	conns []net.Conn
}

func newProxy(t testing.TB, target string) *Proxy {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{lis: lis}
	p.up.Store(true)
	t.Cleanup(func() { lis.Close(); p.Cut() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			if !p.up.Load() {
				c.Close()
				continue
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); u.Close() }()
			go func() { _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
	return p
}

// Cut drops every connection and refuses new ones.
func (p *Proxy) Cut() {
	p.up.Store(false)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// Restore lets connections through again.
func (p *Proxy) Restore() { p.up.Store(true) }

// Env is a running system.
type Env struct {
	Temporal client.Client
	// Codec seals the payloads; tests that read histories need it.
	Codec *codec.Codec
	// RelayProxy sits between the outbox relays and Temporal.
	RelayProxy *Proxy
	Issuer     *auth.Issuer
	Stack      *stack.Stack
}

// Start starts the system; it stops when the test ends. Adjust changes the
// Fast settings, for a test that needs a step to last.
func Start(t testing.TB, adjust ...func(*activities.Settings)) *Env {
	t.Helper()
	tt, ok := t.(*testing.T)
	if !ok {
		t.Fatal("stacktest needs a *testing.T")
	}
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	pc, err := codec.New("test", map[string][]byte{"test": k})
	if err != nil {
		t.Fatal(err)
	}
	// Payloads are sealed as in production: Temporal sees no workflow data,
	// nor a failure's type (as once every worker reads them sealed).
	pc.SealFailureTypes(true)
	opts, err := telemetry.TemporalClientOptions(client.Options{DataConverter: pc.DataConverter(), FailureConverter: pc.FailureConverter()})
	if err != nil {
		t.Fatal(err)
	}
	ts := temporaltest.NewServer(temporaltest.WithT(tt), temporaltest.WithBaseClientOptions(opts))
	c := ts.GetDefaultClient()
	p := newProxy(t, ts.GetFrontendHostPort())
	relayOpts := opts
	relayOpts.HostPort, relayOpts.Namespace = p.lis.Addr().String(), ts.GetDefaultNamespace()
	relayClient, err := client.Dial(relayOpts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(relayClient.Close)
	iss, err := auth.NewIssuer("https://issuer.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	workerToken := iss.MustMint(auth.TokenOptions{Subject: "worker", Clinic: auth.AnyClinic, Roles: []auth.Role{auth.RoleWorker}, TTL: time.Hour})
	// The webhook sender checks consent with its own service identity.
	webhookToken := iss.MustMint(auth.TokenOptions{Subject: "webhook-sender", Clinic: auth.AnyClinic, Roles: []auth.Role{auth.RoleWebhookSender}, TTL: time.Hour})
	// Calendar feeds read intake appointments as the calendar_reader.
	calendarToken := iss.MustMint(auth.TokenOptions{Subject: "calendar-reader", Clinic: auth.AnyClinic, Roles: []auth.Role{auth.RoleCalendarReader}, TTL: time.Hour})
	prefix := pgtest.Prefix(t, "families", "interventions", "referrals", "webhooks")
	st, err := stack.Start(context.Background(), stack.Config{
		Log:         slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		DatabaseURL: pgtest.URL(), SchemaPrefix: prefix, Verifier: iss.Verifier(),
		WorkerToken: func(context.Context) (string, error) { return workerToken, nil },
		Temporal:    c, RelayTemporal: relayClient,
		FamiliesAddr: "127.0.0.1:0", InterventionsAddr: "127.0.0.1:0", ReferralsAddr: "127.0.0.1:0",
		Settings: func(string) activities.Settings {
			s := Fast()
			for _, f := range adjust {
				f(&s)
			}
			return s
		}, RelayInterval: 100 * time.Millisecond,
		// Test webhook receivers listen on 127.0.0.1 over plain HTTP, and retries
		// come within seconds.
		CalendarToken: func(context.Context) (string, error) { return calendarToken, nil },
		WebhooksAddr:  "127.0.0.1:0",
		WebhookToken:  func(context.Context) (string, error) { return webhookToken, nil },
		Webhooks:      webhooks.Config{AllowInsecure: true, AllowPrivate: true},
		WebhookSender: webhooks.SenderConfig{AllowPrivate: true, BaseBackoff: 100 * time.Millisecond, MaxBackoff: time.Second,
			MaxAttempts: 30, Timeout: 5 * time.Second, Interval: 100 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Stop)
	return &Env{Temporal: c, Codec: pc, RelayProxy: p, Issuer: iss, Stack: st}
}

// Token mints a token for subject in clinic "north" with roles.
func (e *Env) Token(subject string, roles ...auth.Role) string {
	return e.Issuer.MustMint(auth.TokenOptions{Subject: subject, Clinic: "north", Roles: roles})
}

// Eventually polls cond until it holds or within passes.
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Gateway serves the REST gateway built from cfg on a real loopback
// listener and returns its base URL; both stop when the test ends.
func Gateway(t testing.TB, cfg gateway.Config) string {
	t.Helper()
	gw, err := gateway.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: gw, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + lis.Addr().String()
}
