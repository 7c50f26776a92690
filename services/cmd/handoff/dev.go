package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	uiserver "github.com/temporalio/ui-server/v2/server"
	uiconfig "github.com/temporalio/ui-server/v2/server/config"
	"github.com/temporalio/ui-server/v2/server/server_options"

	"github.com/jackc/pgx/v5"
	"go.temporal.io/sdk/client"

	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/devtemporal"
	"github.com/handoff-health/handoff/services/gateway"
	"github.com/handoff-health/handoff/services/stack"
	"github.com/handoff-health/handoff/services/telemetry"
	"github.com/handoff-health/handoff/services/webhooks"
	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/codec"
)

func init() {
	commands["dev"] = command{summary: "run the whole system on this machine: embedded Temporal, local PostgreSQL, services, worker, gateway", run: runDev,
		secrets: []string{"HANDOFF_DATABASE_URL"}}
}

func runDev(ctx context.Context, log *slog.Logger, args []string) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	dbURL := new(string)
	secretVar(fs, dbURL, "database-url", env("HANDOFF_DATABASE_URL", defaultDatabaseURL), "PostgreSQL URL; the database is created if missing (HANDOFF_DATABASE_URL)")
	dataDir := fs.String("data-dir", env("HANDOFF_DATA_DIR", ".data"), "folder for Temporal's SQLite file and the development signing key (HANDOFF_DATA_DIR)")
	listen := fs.String("listen", env("HANDOFF_GATEWAY_LISTEN", gatewayAddr), "gateway HTTP address (HANDOFF_GATEWAY_LISTEN)")
	temporalPort := fs.Int("temporal-port", 7233, "embedded Temporal frontend port")
	uiPort := fs.Int("temporal-ui-port", 8233, "embedded Temporal Web UI port (0 turns it off)")
	demo := fs.Bool("demo", false, "load a small demonstration clinic \"demo\" (HANDOFF_DEMO=1)")
	fast := fs.Bool("fast", false, "shrink workflow timings to seconds, to watch the whole story in a minute (HANDOFF_FAST=1)")
	settingsFile := fs.String("settings-file", env("HANDOFF_WORKFLOW_SETTINGS_FILE", ""), "JSON file with workflow timings per clinic (HANDOFF_WORKFLOW_SETTINGS_FILE)")
	trusted := fs.Bool("insecure-plaintext", false, "allow PostgreSQL off this machine without verified TLS, and the gateway off loopback, on a network you trust (HANDOFF_INSECURE_PLAINTEXT)")
	if err := fromEnv(fs, "demo", "HANDOFF_DEMO", "fast", "HANDOFF_FAST", "insecure-plaintext", "HANDOFF_INSECURE_PLAINTEXT"); err != nil {
		return err
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	// The development gateway serves plain HTTP, with CORS open to any
	// origin and webhooks allowed to private addresses: on loopback only,
	// unless said otherwise. HANDOFF_GATEWAY_LISTEN, which it reads, is
	// the deployed gateway's too, there on every interface.
	if !isLoopback(*listen) && !*trusted {
		return fmt.Errorf("--listen %s: the development system serves plain HTTP with open CORS, on loopback only (127.0.0.1:8080); "+
			"give --insecure-plaintext (HANDOFF_INSECURE_PLAINTEXT=true) to serve it elsewhere on a network you trust", *listen)
	}
	// The same rule as the services': a database off this machine only
	// over verified TLS, or on a network said to be trusted.
	if err := databaseTransport(*dbURL, *trusted, "--insecure-plaintext (HANDOFF_INSECURE_PLAINTEXT=true)"); err != nil {
		return err
	}
	if *trusted {
		for _, w := range devWaivers(*listen, *dbURL) {
			log.Warn("insecure plaintext: " + w)
		}
	}
	if err := ensureDatabase(ctx, *dbURL); err != nil {
		return err
	}
	if err := os.MkdirAll(*dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	base := "http://" + *listen
	iss, err := auth.LoadOrCreateIssuer(base+"/dev-issuer", "handoff", filepath.Join(*dataDir, "dev-issuer.pem"))
	if err != nil {
		return err
	}
	log.Info("starting embedded Temporal", "data", filepath.Join(*dataDir, "temporal"))
	ts, err := devtemporal.Start(devtemporal.Config{DataDir: filepath.Join(*dataDir, "temporal"), Port: *temporalPort})
	if err != nil {
		return err
	}
	defer ts.Stop()
	uiURL := ""
	if *uiPort != 0 && !portFree(*uiPort) {
		// The UI server ends the process when it cannot bind (echo's
		// Logger.Fatal): a taken port costs the UI only.
		log.Warn("the Temporal Web UI's port is taken; going on without it", "port", *uiPort)
	} else if *uiPort != 0 {
		// The Web UI opens payloads through the codec endpoint, which admits
		// clinic administrators only; without a token it shows them sealed.
		ui := uiserver.NewServer(server_options.WithConfigProvider(&uiconfig.Config{
			TemporalGRPCAddress: ts.HostPort, Host: "127.0.0.1", Port: *uiPort, EnableUI: true,
			DefaultNamespace: "default", HideLogs: true,
			Codec: uiconfig.Codec{Endpoint: base + "/codec", PassAccessToken: true},
		}))
		go func() {
			if err := ui.Start(); err != nil {
				log.Error("the Temporal Web UI did not start", "port", *uiPort, "error", err.Error())
			}
		}()
		defer ui.Stop()
		uiURL = fmt.Sprintf("http://127.0.0.1:%d", *uiPort)
	}
	pc, err := codec.LoadOrCreateKeyFile(filepath.Join(*dataDir, "payload-key"))
	if err != nil {
		return err
	}
	// One process, every part of one release: failures' types are sealed.
	pc.SealFailureTypes(true)
	tel, err := telemetry.Setup(telemetry.Config{Service: "handoff-dev"})
	if err != nil {
		return err
	}
	defer tel.Shutdown(context.WithoutCancel(ctx)) //nolint:errcheck
	opts, err := telemetry.TemporalClientOptions(client.Options{HostPort: ts.HostPort, Namespace: "default",
		Logger: newTemporalLogger(log), DataConverter: pc.DataConverter(), FailureConverter: pc.FailureConverter()})
	if err != nil {
		return err
	}
	tc, err := client.Dial(opts)
	if err != nil {
		return fmt.Errorf("temporal: %w", err)
	}
	defer tc.Close()
	workerToken := iss.MustMint(auth.TokenOptions{Subject: "handoff-worker", Clinic: auth.AnyClinic, Roles: []auth.Role{auth.RoleWorker}, TTL: 365 * 24 * time.Hour})
	settings := func(string) activities.Settings { return activities.DefaultSettings() }
	if *fast {
		settings = func(string) activities.Settings { return fastSettings() }
	}
	if *settingsFile != "" {
		if settings, err = activities.LoadSettingsFile(*settingsFile); err != nil {
			return err
		}
	}
	// The other service identities that act for every clinic, each as
	// narrow as its job.
	webhookToken := iss.MustMint(auth.TokenOptions{Subject: "handoff-webhook-sender", Clinic: auth.AnyClinic, Roles: []auth.Role{auth.RoleWebhookSender}, TTL: 365 * 24 * time.Hour})
	calendarToken := iss.MustMint(auth.TokenOptions{Subject: "handoff-calendar-reader", Clinic: auth.AnyClinic, Roles: []auth.Role{auth.RoleCalendarReader}, TTL: 365 * 24 * time.Hour})
	secrets, err := loadOrCreateSecretBox(filepath.Join(*dataDir, "webhook-key"))
	if err != nil {
		return err
	}
	st, err := stack.Start(ctx, stack.Config{
		Log: log, DatabaseURL: *dbURL, Verifier: iss.Verifier(),
		WorkerToken:   func(context.Context) (string, error) { return workerToken, nil },
		CalendarToken: func(context.Context) (string, error) { return calendarToken, nil },
		WebhookToken:  func(context.Context) (string, error) { return webhookToken, nil },
		Temporal:      tc, FamiliesAddr: familiesAddr, InterventionsAddr: interventionsAddr, ReferralsAddr: referralsAddr,
		WebhooksAddr: webhooksAddr,
		// The development stack listens on loopback: grpcurl may list it.
		Reflection: true,
		// Receivers on this machine over plain HTTP are fine for development.
		Webhooks:      webhooks.Config{AllowInsecure: true, AllowPrivate: true, Secrets: secrets},
		WebhookSender: webhooks.SenderConfig{AllowPrivate: true},
		Settings:      settings,
	})
	if err != nil {
		return err
	}
	defer st.Stop()
	// The remote codec for the Temporal Web UI or CLI: clinic administrators
	// only, since it opens workflow payloads.
	gw, err := gateway.New(ctx, gateway.Config{Log: log, FamiliesAddr: st.FamiliesAddr, InterventionsAddr: st.InterventionsAddr,
		ReferralsAddr: st.ReferralsAddr, WebhooksAddr: st.WebhooksAddr, Verifier: iss.Verifier(), CORSOrigins: []string{"*"},
		Codec: pc.Handler(codecAccess(log, iss.Verifier()), codecOpened(log))})
	if err != nil {
		return err
	}
	defer gw.Close()
	mux := devRoutes(*listen, iss.JWKSHandler(), tel.Handler(), gw)

	tokens := map[string]string{}
	for _, r := range []struct {
		name, subject string
		role          auth.Role
	}{
		{"COUNSELOR_TOKEN", "counselor-1", auth.RoleCounselor}, {"ADMIN_TOKEN", "admin-1", auth.RoleClinicAdmin},
		{"EHR_TOKEN", "ehr-integration", auth.RoleEHR}, {"REMINDERS_TOKEN", "reminder-automation", auth.RoleReminders},
	} {
		tokens[r.name] = iss.MustMint(auth.TokenOptions{Subject: r.subject, Clinic: "demo", Roles: []auth.Role{r.role}, TTL: 12 * time.Hour})
	}
	var demoFamily string
	if *demo {
		if demoFamily, err = loadDemo(ctx, st, iss); err != nil {
			return fmt.Errorf("demo data: %w", err)
		}
	}
	// Bound before the banner says the system is up.
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *listen, err)
	}
	printBanner(base, ts.HostPort, uiURL, tokens, demoFamily, *dataDir, metricsOnPublicPort(*listen, ""))
	return serveOn(ctx, log, lis, mux, drainFor)
}

// portFree reports whether 127.0.0.1:port can be bound now.
func portFree(port int) bool {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func fastSettings() activities.Settings {
	s := activities.DefaultSettings()
	s.HoldLead, s.HoldRetry = 30*time.Second, 10*time.Second
	s.ReminderOffsets = []time.Duration{60 * time.Second, 20 * time.Second}
	s.OutcomeGrace, s.OutcomeEscalation = 2*time.Minute, 5*time.Minute
	s.IntakeReminderOffsets = []time.Duration{30 * time.Second}
	s.IntakeAlert = 10 * time.Minute
	s.CheckIns = []time.Duration{30 * time.Second, time.Minute, 2 * time.Minute}
	s.TightenedCheckIn, s.CoolDown = 30*time.Second, 90*time.Second
	s.OverdoseGrace = 10 * time.Second
	return s
}

// loadOrCreateSecretBox keeps the development key that seals webhook signing
// secrets in path, so subscriptions survive a restart.
func loadOrCreateSecretBox(path string) (*webhooks.SecretBox, error) {
	key, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key = make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, fmt.Errorf("webhook key: %w", err)
		}
		if err := os.WriteFile(path, key, 0o600); err != nil {
			return nil, fmt.Errorf("webhook key: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("webhook key: %w", err)
	}
	return webhooks.NewSecretBox(key)
}

// ensureDatabase creates the database if missing, and says in one line what
// to do when PostgreSQL is not there.
func ensureDatabase(ctx context.Context, dsn string) error {
	u, err := url.Parse(dsn)
	if err != nil {
		// Not err itself: url.Error quotes the whole URL, password and all.
		return errors.New("the database URL does not parse as a URL; percent-encode special characters in its password")
	}
	db := strings.TrimPrefix(u.Path, "/")
	admin := *u
	admin.Path = "/postgres"
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, admin.String())
	if err != nil {
		return errors.New("PostgreSQL is not reachable at " + u.Host + ": start it (Debian: sudo pg_ctlcluster $(ls /etc/postgresql) main start) or point HANDOFF_DATABASE_URL at one")
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, db).Scan(&exists); err != nil {
		return fmt.Errorf("check database: %w", err)
	}
	if !exists {
		if _, err := conn.Exec(ctx, `CREATE DATABASE `+pgx.Identifier{db}.Sanitize()); err != nil {
			return fmt.Errorf("create database %s: %w", db, err)
		}
	}
	return nil
}

func printBanner(base, temporal, ui string, tokens map[string]string, demoFamily, dataDir string, metrics bool) {
	var b strings.Builder
	fmt.Fprintf(&b, "\nHandoff is running. Ctrl-C stops everything.\n\n")
	fmt.Fprintf(&b, "  REST API        %s/v1/\n", base)
	fmt.Fprintf(&b, "  API reference   %s/docs\n", base)
	fmt.Fprintf(&b, "  OpenAPI         %s/openapi.json\n", base)
	if metrics {
		fmt.Fprintf(&b, "  Health          %s/healthz   %s/readyz   metrics %s/metrics\n", base, base, base)
	} else {
		fmt.Fprintf(&b, "  Health          %s/healthz   %s/readyz\n", base, base)
	}
	fmt.Fprintf(&b, "  gRPC            families %s, interventions %s, referrals %s, webhooks %s\n", familiesAddr, interventionsAddr, referralsAddr, webhooksAddr)
	fmt.Fprintf(&b, "  FHIR R4         %s/fhir/R4/metadata (the EHR's token)\n", base)
	fmt.Fprintf(&b, "  Temporal        %s (namespace default; data in %s)\n", temporal, filepath.Join(dataDir, "temporal"))
	if ui != "" {
		fmt.Fprintf(&b, "  Temporal UI     %s\n", ui)
	}
	fmt.Fprintf(&b, "  Payload codec   %s/codec (clinic administrators; payloads are sealed with the key in %s)\n", base, filepath.Join(dataDir, "payload-key"))
	if demoFamily != "" {
		fmt.Fprintf(&b, "  Demo family     %s\n", demoFamily)
	}
	fmt.Fprintf(&b, "\nDevelopment tokens for clinic \"demo\" (valid 12 hours); paste into your shell:\n\n")
	for _, k := range []string{"COUNSELOR_TOKEN", "ADMIN_TOKEN", "EHR_TOKEN", "REMINDERS_TOKEN"} {
		fmt.Fprintf(&b, "export %s=%s\n", k, tokens[k])
	}
	if demoFamily != "" {
		fmt.Fprintf(&b, "export FAMILY=%s\n", demoFamily)
	}
	fmt.Fprintln(&b)
	_, _ = os.Stdout.WriteString(b.String())
}

// codecOpened logs what each decode opened, after codecAccess logged who
// asked: with it, the access record says what was seen, not only that
// someone asked (the gateway keeps no audit table).
func codecOpened(log *slog.Logger) func(*http.Request, string, int, int) {
	return func(r *http.Request, clinic string, opened, left int) {
		log.InfoContext(r.Context(), "payload codec decoded", "clinic", clinic, "opened", opened, "left_unopened", left)
	}
}

// codecAccess admits clinic administrators to the remote codec, for their
// own clinic only, and logs each access: the gateway keeps no audit table,
// so the log line (subject and clinic, no payload) is the access record.
func codecAccess(log *slog.Logger, v *auth.Verifier) func(*http.Request) (string, error) {
	return func(r *http.Request) (string, error) {
		token, ok := auth.Bearer(r.Header.Get("Authorization"))
		if !ok {
			log.WarnContext(r.Context(), "authentication failed", append([]any{"path", r.URL.Path, "error", "no bearer token"}, auth.Origin(r)...)...)
			return "", errors.New("missing bearer token")
		}
		p, err := v.Verify(r.Context(), token)
		if cause := auth.KeysUnavailableCause(err); cause != nil {
			// The identity provider is out of reach, not the token at
			// fault, as at the gateway's other doors.
			log.ErrorContext(r.Context(), "signing keys unavailable", "path", r.URL.Path, "error", cause.Error())
			return "", &codec.Refusal{Status: http.StatusServiceUnavailable,
				Reason: "the token cannot be checked now: the signing keys could not be fetched; retry"}
		}
		if err != nil {
			// The caller hears what is wrong with its token, the operator why.
			log.WarnContext(r.Context(), "authentication failed", append([]any{"path", r.URL.Path, "error", err.Error()}, auth.Origin(r)...)...)
			return "", errors.New(auth.PublicReason(err))
		}
		// An EHR role makes a token the outside system's, whatever else
		// it holds, as at the services: it does not open workflow payloads.
		if !p.Has(auth.RoleClinicAdmin) || p.Has(auth.RoleEHR) || p.Clinic == "" || p.Clinic == auth.AnyClinic {
			log.WarnContext(r.Context(), "payload codec access refused", append([]any{"subject", p.Subject, "clinic", p.Clinic}, auth.Origin(r)...)...)
			return "", &codec.Refusal{Status: http.StatusForbidden, Reason: fmt.Sprintf("role %s of one clinic required", auth.RoleClinicAdmin)}
		}
		log.InfoContext(r.Context(), "payload codec access", "subject", p.Subject, "clinic", p.Clinic, "path", r.URL.Path)
		return p.Clinic, nil
	}
}

// devRoutes are the development gateway's routes: the API, the dev
// issuer's keys and, on loopback only (the gateway's rule), the metrics,
// which off it would tell the network how the system runs.
func devRoutes(listen string, jwks, metrics, api http.Handler) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /dev-issuer/jwks.json", jwks)
	if metricsOnPublicPort(listen, "") {
		mux.Handle("GET /metrics", metrics)
	}
	mux.Handle("/", api)
	return mux
}

// devWaivers says what --insecure-plaintext let the development system do
// that it would otherwise refuse, for the log at start, as the services
// log each connection they leave in clear.
func devWaivers(listen, dbURL string) []string {
	var out []string
	if !isLoopback(listen) {
		out = append(out, "the gateway serves plain HTTP with open CORS on "+listen)
	}
	if err := databaseTransport(dbURL, false, "--insecure-plaintext"); err != nil {
		out = append(out, err.Error())
	}
	return out
}
