// Package stack runs Handoff's parts together in one process: the three
// services on real gRPC listeners, their outbox relays to Temporal, the
// hold-expiry sweep, and the Temporal worker. The local development stack
// and the integration tests use it; production runs each part as its own
// process (see cmd/handoff).
package stack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	webhooksv1 "github.com/handoff-health/handoff/gen/go/handoff/webhooks/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/consentgate"
	"github.com/handoff-health/handoff/services/families"
	"github.com/handoff-health/handoff/services/grpcclient"
	"github.com/handoff-health/handoff/services/grpcserver"
	"github.com/handoff-health/handoff/services/interventions"
	"github.com/handoff-health/handoff/services/outbox"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/referrals"
	"github.com/handoff-health/handoff/services/telemetry"
	"github.com/handoff-health/handoff/services/webhooks"
	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/dispatch"
	"github.com/handoff-health/handoff/workflows/flow"
	hworker "github.com/handoff-health/handoff/workflows/worker"
)

// Config configures a stack.
type Config struct {
	Log         *slog.Logger
	DatabaseURL string
	// SchemaPrefix is put before each service's schema name; tests use it
	// to keep runs apart. Empty in normal use.
	SchemaPrefix string
	Verifier     *auth.Verifier
	// WorkerToken is the worker's service token for calls to the services.
	WorkerToken grpcclient.TokenSource
	Temporal    client.Client
	// RelayTemporal, if set, is the client the outbox relays use instead of
	// Temporal (tests route it through a proxy they can cut).
	RelayTemporal client.Client
	// Listen addresses of the services; "127.0.0.1:0" picks a free port.
	FamiliesAddr, InterventionsAddr, ReferralsAddr string
	// Settings are the workflow settings per clinic; nil means defaults.
	Settings func(clinic string) activities.Settings
	// RelayInterval is how often the outbox relays poll (default 200 ms).
	RelayInterval time.Duration
	// NoWorker leaves the Temporal worker out (tests that restart it).
	NoWorker bool
	// CalendarToken is the calendar_reader service token with which
	// calendar feeds read intake appointments; nil leaves them out of feeds.
	CalendarToken grpcclient.TokenSource
	// WebhooksAddr, if set, is where the webhooks service listens; then
	// the relays also enqueue webhook deliveries and the sender runs.
	WebhooksAddr string
	// Reflection serves gRPC reflection on each service, for grpcurl on a
	// developer's machine.
	Reflection bool
	// WebhookToken is the webhook sender's service token (role
	// webhook_sender) for its consent checks with the families service.
	WebhookToken grpcclient.TokenSource
	// Webhooks and WebhookSender tune the webhooks service and sender;
	// the stack fills in the sender's DB, Families and Log, and its
	// Secrets from Webhooks.Secrets.
	Webhooks      webhooks.Config
	WebhookSender webhooks.SenderConfig
}

// Stack is a running set of parts.
type Stack struct {
	FamiliesAddr, InterventionsAddr, ReferralsAddr string
	DBs                                            map[string]*pgdb.DB
	Worker                                         worker.Worker
	WebhooksAddr                                   string

	cancel  context.CancelFunc
	wg      sync.WaitGroup
	closers []func()
}

// Start starts every part and returns once all listen.
func Start(ctx context.Context, cfg Config) (*Stack, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.RelayInterval == 0 {
		cfg.RelayInterval = 200 * time.Millisecond
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &Stack{DBs: map[string]*pgdb.DB{}, cancel: cancel}
	fail := func(err error) (*Stack, error) { s.Stop(); return nil, err }

	// Migrate as the URL's user (the owner), then act as the application role.
	open := func(schema string, sources []pgdb.Source) (*pgdb.DB, error) {
		owner, err := pgdb.Open(ctx, cfg.DatabaseURL, cfg.SchemaPrefix+schema)
		if err != nil {
			return nil, err
		}
		err = pgdb.Migrate(ctx, owner, cfg.SchemaPrefix+schema, sources...)
		owner.Close()
		if err != nil {
			return nil, err
		}
		db, err := pgdb.OpenApp(ctx, cfg.DatabaseURL, cfg.SchemaPrefix+schema)
		if err != nil {
			return nil, err
		}
		s.closers = append(s.closers, db.Pool.Close)
		s.DBs[schema] = db
		return db, nil
	}
	famPool, err := open(families.Schema, families.Migrations())
	if err != nil {
		return fail(err)
	}
	refPool, err := open(referrals.Schema, referrals.Migrations())
	if err != nil {
		return fail(err)
	}
	ivPool, err := open(interventions.Schema, interventions.Migrations())
	if err != nil {
		return fail(err)
	}

	listen := func(name, addr string) (net.Listener, error) {
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("%s: listen on %s: %w", name, addr, err)
		}
		s.closers = append(s.closers, func() { lis.Close() })
		return lis, nil
	}
	serveOn := func(name string, lis net.Listener, policy grpcserver.Policy, auditor grpcserver.Auditor, register func(*grpcserver.Server)) (string, error) {
		srv, err := grpcserver.New(grpcserver.Config{Logger: cfg.Log.With("service", name), Verifier: cfg.Verifier, Policy: policy, Audit: auditor,
			Reflection: cfg.Reflection})
		if err != nil {
			return "", err
		}
		register(srv)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := srv.Serve(runCtx, lis, 5*time.Second); err != nil {
				cfg.Log.Error("serve", "service", name, "error", telemetry.LogSafe(err))
			}
		}()
		return lis.Addr().String(), nil
	}
	serve := func(name, addr string, policy grpcserver.Policy, auditor grpcserver.Auditor, register func(*grpcserver.Server)) (string, error) {
		lis, err := listen(name, addr)
		if err != nil {
			return "", err
		}
		return serveOn(name, lis, policy, auditor, register)
	}
	// Services reach each other with the caller's token (forwarded).
	dial := func(addr string, token grpcclient.TokenSource) (*grpc.ClientConn, error) {
		conn, err := grpcclient.Dial(addr, grpcclient.Config{Token: token})
		if err == nil {
			s.closers = append(s.closers, func() { conn.Close() })
		}
		return conn, err
	}

	famSrv := families.New(famPool, families.Config{})
	if s.FamiliesAddr, err = serve("families", cfg.FamiliesAddr, families.Policy(), famSrv.Auditor(), func(g *grpcserver.Server) {
		familiesv1.RegisterFamiliesServiceServer(g, famSrv)
	}); err != nil {
		return fail(err)
	}
	famConn, err := dial(s.FamiliesAddr, nil)
	if err != nil {
		return fail(err)
	}
	famClient := familiesv1.NewFamiliesServiceClient(famConn)
	// Referrals and interventions call each other: the interventions
	// listener comes first, so that referrals can dial its address.
	ivLis, err := listen("interventions", cfg.InterventionsAddr)
	if err != nil {
		return fail(err)
	}
	ivConn, err := dial(ivLis.Addr().String(), nil)
	if err != nil {
		return fail(err)
	}
	refSrv := referrals.New(refPool, referrals.Config{Log: cfg.Log, Consent: &consentgate.Gate{Families: famClient}, Families: famClient,
		Interventions: interventionsv1.NewInterventionsServiceClient(ivConn)})
	if s.ReferralsAddr, err = serve("referrals", cfg.ReferralsAddr, referrals.Policy(), refSrv.Auditor(), func(g *grpcserver.Server) {
		referralsv1.RegisterReferralsServiceServer(g, refSrv)
	}); err != nil {
		return fail(err)
	}
	refConn, err := dial(s.ReferralsAddr, nil)
	if err != nil {
		return fail(err)
	}
	ivCfg := interventions.Config{Families: familiesv1.NewFamiliesServiceClient(famConn), Holds: referralsv1.NewReferralsServiceClient(refConn)}
	if cfg.CalendarToken != nil {
		// Calendar feeds read the counselor's clients' intake appointments
		// as the calendar_reader identity: a feed request carries no token
		// to forward.
		calFam, err := dial(s.FamiliesAddr, cfg.CalendarToken)
		if err != nil {
			return fail(err)
		}
		calRef, err := dial(s.ReferralsAddr, cfg.CalendarToken)
		if err != nil {
			return fail(err)
		}
		ivCfg.CalendarFamilies, ivCfg.CalendarReferrals = familiesv1.NewFamiliesServiceClient(calFam), referralsv1.NewReferralsServiceClient(calRef)
	}
	ivSrv := interventions.New(ivPool, ivCfg)
	if s.InterventionsAddr, err = serveOn("interventions", ivLis, interventions.Policy(), ivSrv.Auditor(), func(g *grpcserver.Server) {
		g.SetCredentials(ivSrv.Credentials())
		interventionsv1.RegisterInterventionsServiceServer(g, ivSrv)
	}); err != nil {
		return fail(err)
	}

	var sink *webhooks.Sink
	if cfg.WebhooksAddr != "" {
		if sink, err = s.startWebhooks(runCtx, cfg, open, serve, dial); err != nil {
			return fail(err)
		}
	}

	s.wg.Add(1)
	go func() { defer s.wg.Done(); refSrv.RunExpiry(runCtx, time.Minute) }()

	relayClient := cfg.Temporal
	if cfg.RelayTemporal != nil {
		relayClient = cfg.RelayTemporal
	}
	d := &dispatch.Dispatcher{Client: relayClient, Log: cfg.Log}
	for _, name := range []string{families.Schema, interventions.Schema, referrals.Schema} {
		relays := []*outbox.Relay{{DB: s.DBs[name], Deliver: d.Deliver, Log: cfg.Log.With("relay", name), Interval: cfg.RelayInterval,
			Lane: outbox.ByFamily, AwaitSink: sink != nil}}
		if sink != nil {
			// The webhook subscriptions' own consumer, as the services run it.
			relays = append(relays, &outbox.Relay{DB: s.DBs[name], Deliver: sink.For(name), Log: cfg.Log.With("relay", name, "consumer", "sink"),
				Interval: cfg.RelayInterval, Lane: outbox.ByFamily, Consumer: outbox.Sink})
		}
		for _, r := range relays {
			s.wg.Add(1)
			go func() { defer s.wg.Done(); r.Run(runCtx) }()
		}
	}

	if !cfg.NoWorker {
		w, closeConns, err := NewWorker(cfg.Temporal, WorkerConfig{Token: cfg.WorkerToken,
			FamiliesAddr: s.FamiliesAddr, InterventionsAddr: s.InterventionsAddr, ReferralsAddr: s.ReferralsAddr, Settings: cfg.Settings})
		if err != nil {
			return fail(err)
		}
		s.closers = append(s.closers, closeConns)
		if err := w.Start(); err != nil {
			return fail(fmt.Errorf("start worker: %w", err))
		}
		s.Worker = w
	}
	return s, nil
}

// startWebhooks opens the webhooks schema, serves the webhooks service and
// runs the sender; it returns the sink the relays feed.
func (s *Stack) startWebhooks(runCtx context.Context, cfg Config,
	open func(string, []pgdb.Source) (*pgdb.DB, error),
	serve func(string, string, grpcserver.Policy, grpcserver.Auditor, func(*grpcserver.Server)) (string, error),
	dial func(string, grpcclient.TokenSource) (*grpc.ClientConn, error)) (*webhooks.Sink, error) {
	if cfg.WebhookToken == nil {
		return nil, errors.New("the webhook sender needs a service token")
	}
	db, err := open(webhooks.Schema, webhooks.Migrations())
	if err != nil {
		return nil, err
	}
	srv := webhooks.New(db, cfg.Webhooks)
	if s.WebhooksAddr, err = serve("webhooks", cfg.WebhooksAddr, webhooks.Policy(), srv.Auditor(), func(g *grpcserver.Server) {
		webhooksv1.RegisterWebhooksServiceServer(g, srv)
	}); err != nil {
		return nil, err
	}
	famConn, err := dial(s.FamiliesAddr, cfg.WebhookToken)
	if err != nil {
		return nil, err
	}
	sc := cfg.WebhookSender
	sc.DB, sc.Families, sc.Log = db, familiesv1.NewFamiliesServiceClient(famConn), cfg.Log.With("part", "webhook-sender")
	if sc.Secrets == nil {
		sc.Secrets = cfg.Webhooks.Secrets
	}
	sender := webhooks.NewSender(sc)
	s.wg.Add(1)
	go func() { defer s.wg.Done(); sender.Run(runCtx) }()
	return &webhooks.Sink{DB: db, Log: cfg.Log.With("part", "webhook-sink")}, nil
}

// WorkerConfig configures the Temporal worker of NewWorker.
type WorkerConfig struct {
	// Token is the worker's own service token; required.
	Token grpcclient.TokenSource
	// TLS secures the calls to the services (mutual TLS); nil is plaintext,
	// for loopback.
	TLS credentials.TransportCredentials
	// The services' addresses.
	FamiliesAddr, InterventionsAddr, ReferralsAddr string
	// Settings gives each clinic's workflow timings; nil is the defaults.
	Settings func(string) activities.Settings
	// StopTimeout is how long Stop lets running activities finish before
	// it cancels them; zero cancels them at once.
	StopTimeout time.Duration
	// OnFatalError, when set, hears of an error that made the worker stop
	// itself (the namespace gone, a server that no longer takes this
	// client): the process must not go on looking healthy.
	OnFatalError func(error)
}

// NewWorker builds the Temporal worker with activities that call the
// services as the worker's own identity. The returned close function
// closes its connections, after the worker has stopped.
func NewWorker(c client.Client, cfg WorkerConfig) (worker.Worker, func(), error) {
	if cfg.Token == nil {
		return nil, nil, errors.New("the worker needs a service token")
	}
	var conns []*grpc.ClientConn
	closeAll := func() {
		for _, c := range conns {
			c.Close()
		}
	}
	for _, addr := range []string{cfg.FamiliesAddr, cfg.InterventionsAddr, cfg.ReferralsAddr} {
		conn, err := grpcclient.Dial(addr, grpcclient.Config{TLS: cfg.TLS, Token: cfg.Token})
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		conns = append(conns, conn)
	}
	opts := hworker.Options()
	opts.WorkerStopTimeout = cfg.StopTimeout
	opts.OnFatalError = cfg.OnFatalError
	w := worker.New(c, flow.TaskQueue, opts)
	hworker.Register(w, &activities.Activities{
		Families:      familiesv1.NewFamiliesServiceClient(conns[0]),
		Interventions: interventionsv1.NewInterventionsServiceClient(conns[1]),
		Referrals:     referralsv1.NewReferralsServiceClient(conns[2]),
		Settings:      cfg.Settings,
	})
	return w, closeAll, nil
}

// Stop stops every part and waits for them.
func (s *Stack) Stop() {
	if s.Worker != nil {
		s.Worker.Stop()
	}
	s.cancel()
	s.wg.Wait()
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
}
