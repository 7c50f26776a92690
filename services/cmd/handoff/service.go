package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/jackc/pgx/v5/pgconn"
	"go.temporal.io/sdk/client"
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
	"github.com/handoff-health/handoff/services/tlsconf"
	"github.com/handoff-health/handoff/services/webhooks"
	"github.com/handoff-health/handoff/workflows/codec"
	"github.com/handoff-health/handoff/workflows/dispatch"
)

const defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/handoff?sslmode=disable"

// Default listen addresses of the local stack.
const (
	familiesAddr      = "127.0.0.1:7101"
	interventionsAddr = "127.0.0.1:7102"
	referralsAddr     = "127.0.0.1:7103"
	webhooksAddr      = "127.0.0.1:7104"
	gatewayAddr       = "127.0.0.1:8080"
	temporalAddr      = "127.0.0.1:7233"
)

// common are the flags every process shares.
type common struct {
	databaseURL, issuer, audience, jwksURL string
	temporalAddr, temporalNamespace        string
	payloadKeys, payloadKeyID              string
	metricsListen, otlpEndpoint, otlpCA    string
	temporalAPIKey                         string
	temporalTLS                            tlsconf.Files
	tls                                    tlsconf.Files
	insecurePlaintext, databasePlaintext   bool
	sealFailureTypes                       bool
	envErr                                 error // a variable that did not parse
	// waived are the hops left in clear off this machine because
	// --insecure-plaintext said the network is trusted, for the warning
	// logged at start (shared by the copies of c).
	waived *[]string
}

func (c *common) register(fs *flag.FlagSet, withDB bool) {
	c.waived = new([]string)
	if withDB {
		secretVar(fs, &c.databaseURL, "database-url", env("HANDOFF_DATABASE_URL", defaultDatabaseURL), "PostgreSQL URL (HANDOFF_DATABASE_URL)")
		fs.BoolVar(&c.databasePlaintext, "database-plaintext", false, databasePlaintextUsage)
	}
	fs.StringVar(&c.issuer, "oidc-issuer", env("HANDOFF_OIDC_ISSUER", ""), "trusted token issuer (HANDOFF_OIDC_ISSUER)")
	fs.StringVar(&c.audience, "oidc-audience", env("HANDOFF_OIDC_AUDIENCE", "handoff"), "required token audience (HANDOFF_OIDC_AUDIENCE)")
	fs.StringVar(&c.jwksURL, "jwks-url", env("HANDOFF_JWKS_URL", ""), "the issuer's JWKS URL (HANDOFF_JWKS_URL)")
	fs.StringVar(&c.temporalAddr, "temporal-address", env("HANDOFF_TEMPORAL_ADDRESS", temporalAddr), "Temporal frontend host:port (HANDOFF_TEMPORAL_ADDRESS)")
	fs.StringVar(&c.temporalNamespace, "temporal-namespace", env("HANDOFF_TEMPORAL_NAMESPACE", "default"), "Temporal namespace (HANDOFF_TEMPORAL_NAMESPACE)")
	secretVar(fs, &c.payloadKeys, "payload-keys", env("HANDOFF_PAYLOAD_KEYS", ""),
		"keys that seal Temporal payloads, id:base64(32 bytes)[,id:key] (HANDOFF_PAYLOAD_KEYS)")
	fs.StringVar(&c.payloadKeyID, "payload-key-id", env("HANDOFF_PAYLOAD_KEY_ID", ""), "id of the key that seals new payloads (HANDOFF_PAYLOAD_KEY_ID)")
	secretVar(fs, &c.temporalAPIKey, "temporal-api-key", env("HANDOFF_TEMPORAL_API_KEY", ""), "Temporal Cloud API key; implies TLS (HANDOFF_TEMPORAL_API_KEY)")
	fs.StringVar(&c.temporalTLS.Cert, "temporal-tls-cert", env("HANDOFF_TEMPORAL_TLS_CERT", ""), "client certificate for Temporal mTLS, e.g. Temporal Cloud (HANDOFF_TEMPORAL_TLS_CERT)")
	fs.StringVar(&c.temporalTLS.Key, "temporal-tls-key", env("HANDOFF_TEMPORAL_TLS_KEY", ""), "its private key (HANDOFF_TEMPORAL_TLS_KEY)")
	fs.StringVar(&c.temporalTLS.CA, "temporal-tls-ca", env("HANDOFF_TEMPORAL_TLS_CA", ""), "CA of the Temporal frontend, if not a public one (HANDOFF_TEMPORAL_TLS_CA)")
	fs.StringVar(&c.metricsListen, "metrics-listen", env("HANDOFF_METRICS_LISTEN", ""), "serve Prometheus metrics at /metrics on this address (HANDOFF_METRICS_LISTEN)")
	fs.StringVar(&c.otlpEndpoint, "otlp-endpoint", env("HANDOFF_OTLP_ENDPOINT", ""), "OTLP/gRPC collector for traces, host:port (HANDOFF_OTLP_ENDPOINT)")
	fs.StringVar(&c.otlpCA, "otlp-ca", env("HANDOFF_OTLP_CA", ""),
		"CA of the trace collector's certificate, not the one of --tls-ca; default the system's roots (HANDOFF_OTLP_CA)")
	fs.StringVar(&c.tls.Cert, "tls-cert", env("HANDOFF_TLS_CERT", ""), "certificate for mutual TLS between Handoff's processes (HANDOFF_TLS_CERT)")
	fs.StringVar(&c.tls.Key, "tls-key", env("HANDOFF_TLS_KEY", ""), "its private key (HANDOFF_TLS_KEY)")
	fs.StringVar(&c.tls.CA, "tls-ca", env("HANDOFF_TLS_CA", ""), "CA that signs the peers' certificates (HANDOFF_TLS_CA)")
	fs.BoolVar(&c.sealFailureTypes, "seal-failure-types", false,
		"write Temporal failures' types sealed too; only once every worker reads them so (HANDOFF_SEAL_FAILURE_TYPES)")
	fs.BoolVar(&c.insecurePlaintext, "insecure-plaintext", false,
		"allow gRPC between Handoff's processes, Temporal, the JWKS and traces without TLS off loopback, on a network you trust; not the database (HANDOFF_INSECURE_PLAINTEXT)")
	vars := []string{"insecure-plaintext", "HANDOFF_INSECURE_PLAINTEXT", "seal-failure-types", "HANDOFF_SEAL_FAILURE_TYPES"}
	if withDB {
		vars = append(vars, "database-plaintext", "HANDOFF_DATABASE_PLAINTEXT")
	}
	c.envErr = fromEnv(fs, vars...)
}

// databaseWaiver is how the services and migrate are told their database
// may go without verified TLS.
const databaseWaiver = "--database-plaintext (HANDOFF_DATABASE_PLAINTEXT=true)"

const databasePlaintextUsage = "allow PostgreSQL off this machine without verified TLS, on a network you trust (HANDOFF_DATABASE_PLAINTEXT)"

// waive notes that hop goes in clear because --insecure-plaintext says the
// network is trusted.
func (c *common) waive(hop string) {
	if c.waived != nil && !slices.Contains(*c.waived, hop) {
		*c.waived = append(*c.waived, hop)
	}
}

// warnWaived logs, once the checks have run, each hop --insecure-plaintext
// left in clear: one switch waives several, and an operator who set it for
// one (a mesh between the pods) must see what else it let through.
func (c *common) warnWaived(log *slog.Logger) {
	if c.waived != nil && len(*c.waived) > 0 {
		log.Warn("HANDOFF_INSECURE_PLAINTEXT: these connections go without TLS, trusting the network to protect them", "hops", *c.waived)
	}
}

// plaintext refuses gRPC without TLS (creds nil) on or to addr unless addr
// is this machine's loopback or --insecure-plaintext says the network is
// trusted: every call carries a bearer token, the worker's acting for
// every clinic, and without TLS it crosses the network in clear.
func (c *common) plaintext(what, addr string, creds credentials.TransportCredentials) error {
	if c.envErr != nil {
		return c.envErr
	}
	if creds != nil || isLoopback(addr) {
		return nil
	}
	if c.insecurePlaintext {
		c.waive(what + " " + addr)
		return nil
	}
	return fmt.Errorf("%s %s without TLS would carry bearer tokens in clear: set --tls-cert, --tls-key and --tls-ca (HANDOFF_TLS_CERT, _KEY, _CA), "+
		"or --insecure-plaintext (HANDOFF_INSECURE_PLAINTEXT=true) on a network you trust", what, addr)
}

// databaseTransport refuses a PostgreSQL URL that would reach a server off
// this machine without TLS that verifies it (sslmode verify-ca or
// verify-full) unless trusted (--database-plaintext, a switch of its own:
// a network trusted between the pods, a mesh, may not reach a managed
// database, and --insecure-plaintext must not waive it unseen): the connection
// carries every family's record, and sslmode prefer, pgx's default, falls
// back to plaintext without a word. A Unix socket or loopback is this
// machine.
//
// waiver names the switch that says the network is trusted, for the
// refusal's message: the services' and migrate's own, or dev's one.
func databaseTransport(dsn string, trusted bool, waiver string) error {
	if trusted {
		return nil
	}
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return fmt.Errorf("--database-url: %w", err)
	}
	hosts := []*pgconn.FallbackConfig{{Host: cfg.Host, TLSConfig: cfg.TLSConfig}}
	hosts = append(hosts, cfg.Fallbacks...)
	for _, h := range hosts {
		if network, _ := pgconn.NetworkAddress(h.Host, 5432); network == "unix" || auth.LoopbackHost(h.Host) {
			continue
		}
		// verify-ca leaves Go's check off and checks the chain itself,
		// against sslrootcert: without one, against the system's roots,
		// which any public certificate for any name passes. require checks
		// nothing.
		if t := h.TLSConfig; t == nil || (t.InsecureSkipVerify && (t.VerifyPeerCertificate == nil || t.RootCAs == nil)) {
			return fmt.Errorf("--database-url: PostgreSQL at %s without verified TLS would carry the records in clear or to anyone answering: "+
				"set sslmode=verify-full (with sslrootcert), or %s on a network you trust", h.Host, waiver)
		}
	}
	return nil
}

// isLoopback reports whether addr (host:port) reaches this machine only.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	return err == nil && auth.LoopbackHost(host)
}

func (c *common) verifier() (*auth.Verifier, error) {
	if c.issuer == "" || c.jwksURL == "" {
		return nil, errors.New("--oidc-issuer and --jwks-url are required: every call must carry a verified token")
	}
	if c.audience == "" {
		// An empty audience would match tokens minted with none.
		return nil, errors.New("--oidc-audience is empty: name the audience tokens must be minted for (default handoff)")
	}
	// The key set is what every token check rests on: whoever can answer
	// for it can sign tokens for any clinic.
	u, err := url.Parse(c.jwksURL)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, fmt.Errorf("--jwks-url %q is not an http(s) URL", c.jwksURL)
	}
	if u.Scheme == "http" && !auth.LoopbackHost(u.Hostname()) && c.insecurePlaintext {
		c.waive("the token signing keys at " + c.jwksURL)
	}
	if u.Scheme == "http" && !auth.LoopbackHost(u.Hostname()) && !c.insecurePlaintext {
		return nil, fmt.Errorf("--jwks-url %q: the signing keys would cross the network in clear, where anyone on the way could swap them; "+
			"use https, or --insecure-plaintext (HANDOFF_INSECURE_PLAINTEXT=true) on a network you trust", c.jwksURL)
	}
	return &auth.Verifier{Issuer: c.issuer, Audience: c.audience, Keys: &auth.JWKS{URL: c.jwksURL, Insecure: c.insecurePlaintext}, Leeway: 30 * time.Second}, nil
}

// temporal connects to Temporal. A lazy client connects on first use: a
// service must start, and take requests whose events wait in its outbox,
// while Temporal is down; the worker has nothing to do without it and
// fails at once.
func (c *common) temporal(log *slog.Logger, lazy bool) (client.Client, error) {
	if c.payloadKeys == "" || c.payloadKeyID == "" {
		return nil, errors.New("--payload-keys and --payload-key-id are required: workflow payloads are never stored in clear")
	}
	pc, err := codec.Parse(c.payloadKeyID, c.payloadKeys)
	if err != nil {
		return nil, err
	}
	pc.SealFailureTypes(c.sealFailureTypes)
	opts, err := telemetry.TemporalClientOptions(client.Options{HostPort: c.temporalAddr, Namespace: c.temporalNamespace,
		Logger: newTemporalLogger(log), DataConverter: pc.DataConverter(), FailureConverter: pc.FailureConverter()})
	if err != nil {
		return nil, err
	}
	if err := c.temporalSecurity(&opts); err != nil {
		return nil, err
	}
	if err := c.temporalPlaintext(opts.ConnectionOptions.TLS); err != nil {
		return nil, err
	}
	dial := client.Dial
	if lazy {
		dial = client.NewLazyClient
	}
	tc, err := dial(opts)
	if err != nil {
		return nil, fmt.Errorf("temporal at %s: %w", c.temporalAddr, err)
	}
	return tc, nil
}

// serviceDef describes one gRPC service process.
type serviceDef struct {
	name       string
	schema     string
	addr       string
	migrations []pgdb.Source
	policy     grpcserver.Policy
	// flags registers the service's own flags, if it has any.
	flags func(fs *flag.FlagSet, f *serviceFlags)
	// env pairs those of them that are no strings with their variables,
	// for fromEnv: the flag parses the value.
	env []string
	// peers are the addresses of the other services it calls, checked
	// with the transport before anything else.
	peers func(f serviceFlags) []string
	// prepare, if set, checks the service's own flags and reads what they
	// name (keys, token files) into f. It runs before the schema is
	// migrated: a process that is going to refuse its settings must not
	// change the database first.
	prepare func(ctx context.Context, f *serviceFlags) error
	// register registers the service and returns what runs beside it.
	register func(s *grpcserver.Server, pool *pgdb.DB, f serviceFlags) (part, error)
}

// part is what a service runs beside its gRPC server.
type part struct {
	// run, if set, runs until ctx ends (a sweep, a sender).
	run func(ctx context.Context)
	// close, if set, runs once the server has stopped and run has
	// returned: calls still in flight during the graceful stop use what
	// it closes (connections to other services).
	close func()
}

// closeAll closes connections, for a part's close.
func closeAll(conns ...io.Closer) func() {
	return func() {
		for _, c := range conns {
			c.Close()
		}
	}
}

type serviceFlags struct {
	common
	listen, familiesAddr string
	// interventions: calendar feeds read intake appointments as the
	// calendar_reader identity.
	referralsAddr, calendarTokenFile string
	// referrals: checks that a hold or referral names an intervention of
	// its own family.
	interventionsAddr string
	// webhooks: the sender's identity and the key that seals signing
	// secrets at rest.
	webhookTokenFile, webhookSecretKey string
	webhookPreviousKeys                string
	webhookMaxAttempts                 int
	// What prepare read from the flags above.
	calendarToken, webhookToken grpcclient.TokenSource
	webhookBox                  *webhooks.SecretBox
	// migrate runs the schema's migrations at start, as the URL's user. Off
	// when the URL names the services' own login role (see
	// pgdb.EnsureLoginRole) and the migrate job, as the owner, migrates.
	migrate bool
	// reflection serves gRPC reflection (see grpcserver.Config.Reflection).
	reflection bool
	// log is the process's logger, for background parts.
	log *slog.Logger
}

var serviceDefs = []serviceDef{
	{
		name: "families", schema: families.Schema, addr: familiesAddr, migrations: families.Migrations(), policy: families.Policy(),
		register: func(s *grpcserver.Server, pool *pgdb.DB, _ serviceFlags) (part, error) {
			srv := families.New(pool, families.Config{})
			familiesv1.RegisterFamiliesServiceServer(s, srv)
			s.SetAuditor(srv.Auditor())
			return part{}, nil
		},
	},
	{
		name: "interventions", schema: interventions.Schema, addr: interventionsAddr, migrations: interventions.Migrations(), policy: interventions.Policy(),
		peers: func(f serviceFlags) []string { return []string{f.familiesAddr, f.referralsAddr} },
		flags: func(fs *flag.FlagSet, f *serviceFlags) {
			fs.StringVar(&f.referralsAddr, "referrals-address", env("HANDOFF_REFERRALS_ADDRESS", referralsAddr), "referrals service host:port (HANDOFF_REFERRALS_ADDRESS)")
			fs.StringVar(&f.calendarTokenFile, "calendar-token-file", env("HANDOFF_CALENDAR_TOKEN_FILE", ""),
				"token of the calendar_reader identity, re-read when it changes; without it feeds leave out intake appointments (HANDOFF_CALENDAR_TOKEN_FILE)")
		},
		prepare: func(ctx context.Context, f *serviceFlags) error {
			if f.calendarTokenFile == "" {
				return nil
			}
			token, err := startToken(ctx, f.calendarTokenFile)
			f.calendarToken = token
			return err
		},
		register: func(s *grpcserver.Server, pool *pgdb.DB, f serviceFlags) (part, error) {
			// Calls to the families service carry the caller's own token.
			conn, err := f.dial(f.familiesAddr, nil)
			if err != nil {
				return part{}, err
			}
			// And those to the referrals service, which checks a hold named
			// on the checklist.
			refConn, err := f.dial(f.referralsAddr, nil)
			if err != nil {
				conn.Close()
				return part{}, err
			}
			conns := []io.Closer{conn, refConn}
			cfg := interventions.Config{Families: familiesv1.NewFamiliesServiceClient(conn), Holds: referralsv1.NewReferralsServiceClient(refConn)}
			if token := f.calendarToken; token != nil {
				// A feed request carries no token to forward: feeds read as
				// their own narrow identity.
				calFam, err := f.dial(f.familiesAddr, token)
				if err != nil {
					closeAll(conns...)()
					return part{}, err
				}
				calRef, err := f.dial(f.referralsAddr, token)
				if err != nil {
					closeAll(append(conns, calFam)...)()
					return part{}, err
				}
				conns = append(conns, calFam, calRef)
				cfg.CalendarFamilies, cfg.CalendarReferrals = familiesv1.NewFamiliesServiceClient(calFam), referralsv1.NewReferralsServiceClient(calRef)
			}
			srv := interventions.New(pool, cfg)
			interventionsv1.RegisterInterventionsServiceServer(s, srv)
			s.SetAuditor(srv.Auditor())
			s.SetCredentials(srv.Credentials())
			return part{close: closeAll(conns...)}, nil
		},
	},
	{
		name: "referrals", schema: referrals.Schema, addr: referralsAddr, migrations: referrals.Migrations(), policy: referrals.Policy(),
		peers: func(f serviceFlags) []string { return []string{f.familiesAddr, f.interventionsAddr} },
		flags: func(fs *flag.FlagSet, f *serviceFlags) {
			fs.StringVar(&f.interventionsAddr, "interventions-address", env("HANDOFF_INTERVENTIONS_ADDRESS", interventionsAddr),
				"interventions service host:port (HANDOFF_INTERVENTIONS_ADDRESS)")
		},
		register: func(s *grpcserver.Server, pool *pgdb.DB, f serviceFlags) (part, error) {
			// The EHR's reads are checked against consent by the families
			// service, with the EHR's own token; families and interventions
			// are read with the caller's.
			conn, err := f.dial(f.familiesAddr, nil)
			if err != nil {
				return part{}, err
			}
			ivConn, err := f.dial(f.interventionsAddr, nil)
			if err != nil {
				closeAll(conn)()
				return part{}, err
			}
			famClient := familiesv1.NewFamiliesServiceClient(conn)
			srv := referrals.New(pool, referrals.Config{Log: f.log, Consent: &consentgate.Gate{Families: famClient}, Families: famClient,
				Interventions: interventionsv1.NewInterventionsServiceClient(ivConn)})
			referralsv1.RegisterReferralsServiceServer(s, srv)
			s.SetAuditor(srv.Auditor())
			return part{run: func(ctx context.Context) { srv.RunExpiry(ctx, time.Minute) }, close: closeAll(conn, ivConn)}, nil
		},
	},
	{
		name: "webhooks", schema: webhooks.Schema, addr: webhooksAddr, migrations: webhooks.Migrations(), policy: webhooks.Policy(),
		peers: func(f serviceFlags) []string { return []string{f.familiesAddr} },
		flags: func(fs *flag.FlagSet, f *serviceFlags) {
			fs.StringVar(&f.webhookTokenFile, "token-file", env("HANDOFF_WEBHOOK_TOKEN_FILE", ""),
				"token of the webhook_sender identity, re-read when it changes (HANDOFF_WEBHOOK_TOKEN_FILE)")
			secretVar(fs, &f.webhookSecretKey, "secret-key", env("HANDOFF_WEBHOOK_SECRET_KEY", ""),
				"base64 of 32 bytes that seal the subscriptions' signing secrets at rest (HANDOFF_WEBHOOK_SECRET_KEY)")
			secretVar(fs, &f.webhookPreviousKeys, "previous-secret-keys", env("HANDOFF_WEBHOOK_PREVIOUS_SECRET_KEYS", ""),
				"comma-separated base64 keys that sealed secrets before --secret-key: they only open, and the sender seals those secrets again under --secret-key (HANDOFF_WEBHOOK_PREVIOUS_SECRET_KEYS)")
			fs.IntVar(&f.webhookMaxAttempts, "max-attempts", webhooks.DefaultMaxAttempts, "attempts before a delivery is dead-lettered (HANDOFF_WEBHOOK_MAX_ATTEMPTS)")
		},
		env: []string{"max-attempts", "HANDOFF_WEBHOOK_MAX_ATTEMPTS"},
		prepare: func(ctx context.Context, f *serviceFlags) error {
			if f.webhookMaxAttempts < 1 {
				// The sender would take it for unset and use the default:
				// an operator meaning "never give up" would get 20.
				return fmt.Errorf("--max-attempts (HANDOFF_WEBHOOK_MAX_ATTEMPTS) is %d: at least 1", f.webhookMaxAttempts)
			}
			if f.webhookTokenFile == "" || f.webhookSecretKey == "" {
				return errors.New("--token-file and --secret-key are required: the sender checks consent as itself, and signing secrets are never stored in clear")
			}
			key, err := base64.StdEncoding.DecodeString(f.webhookSecretKey)
			if err != nil {
				return fmt.Errorf("--secret-key: %w", err)
			}
			var previous [][]byte
			for k := range strings.SplitSeq(f.webhookPreviousKeys, ",") {
				if k = strings.TrimSpace(k); k == "" {
					continue
				}
				b, err := base64.StdEncoding.DecodeString(k)
				if err != nil {
					return fmt.Errorf("--previous-secret-keys: key %d: %w", len(previous)+1, err)
				}
				previous = append(previous, b)
			}
			if f.webhookBox, err = webhooks.NewSecretBox(key, previous...); err != nil {
				return err
			}
			f.webhookToken, err = startToken(ctx, f.webhookTokenFile)
			return err
		},
		register: func(s *grpcserver.Server, pool *pgdb.DB, f serviceFlags) (part, error) {
			conn, err := f.dial(f.familiesAddr, f.webhookToken)
			if err != nil {
				return part{}, err
			}
			srv := webhooks.New(pool, webhooks.Config{Secrets: f.webhookBox})
			webhooksv1.RegisterWebhooksServiceServer(s, srv)
			s.SetAuditor(srv.Auditor())
			sender := webhooks.NewSender(webhooks.SenderConfig{DB: pool, Families: familiesv1.NewFamiliesServiceClient(conn),
				Secrets: f.webhookBox, MaxAttempts: f.webhookMaxAttempts, Log: f.log.With("part", "webhook-sender")})
			return part{run: sender.Run, close: closeAll(conn)}, nil
		},
	},
}

func init() {
	for _, d := range serviceDefs {
		secrets := []string{"HANDOFF_DATABASE_URL", "HANDOFF_PAYLOAD_KEYS", "HANDOFF_TEMPORAL_API_KEY"}
		if d.name == "webhooks" {
			secrets = append(secrets, "HANDOFF_WEBHOOK_SECRET_KEY", "HANDOFF_WEBHOOK_PREVIOUS_SECRET_KEYS")
		}
		commands[d.name] = command{summary: "run the " + d.name + " gRPC service and its outbox relay", run: d.run, secrets: secrets}
	}
	commands["migrate"] = command{summary: "apply every service's migrations and exit", run: runMigrate, oneShot: true,
		secrets: []string{"HANDOFF_DATABASE_URL", "HANDOFF_APP_LOGIN_PASSWORD"}}
}

// otlpTLS is the TLS for the trace collector, nil for plaintext: spans
// carry resource names, SQL text and client addresses, so they go in clear
// only to this machine, or on a network --insecure-plaintext trusts when no
// --otlp-ca asks for TLS. The collector's certificate is checked against
// --otlp-ca, else the system's roots. The collector is not one of
// Handoff's processes: it is not checked against their CA (a certificate
// from it would also pass as a client of the services) and is shown no
// certificate of theirs.
func (c *common) otlpTLS() (*tls.Config, error) {
	if c.otlpCA == "" && isLoopback(c.otlpEndpoint) {
		return nil, nil
	}
	if c.otlpCA == "" && c.insecurePlaintext {
		c.waive("traces to " + c.otlpEndpoint)
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.otlpCA != "" {
		pem, err := os.ReadFile(c.otlpCA)
		if err != nil {
			return nil, fmt.Errorf("otlp tls: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("otlp tls: no certificate in %s", c.otlpCA)
		}
	}
	return cfg, nil
}

// observe sets up traces and metrics for a process and, when asked, serves
// them with the probes on the metrics address; the returned function
// flushes them on exit.
func (c *common) observe(ctx context.Context, log *slog.Logger, service string) (*telemetry.Telemetry, *ops, func(), error) {
	var exp sdktrace.SpanExporter
	if c.otlpEndpoint != "" {
		var err error
		cfg, err := c.otlpTLS()
		if err != nil {
			return nil, nil, nil, err
		}
		security := otlptracegrpc.WithInsecure()
		if cfg != nil {
			security = otlptracegrpc.WithTLSCredentials(credentials.NewTLS(cfg))
		}
		if exp, err = otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(c.otlpEndpoint), security); err != nil {
			return nil, nil, nil, fmt.Errorf("otlp: %w", err)
		}
	}
	tel, err := telemetry.Setup(telemetry.Config{Service: "handoff-" + service, Exporter: exp})
	if err != nil {
		return nil, nil, nil, err
	}
	o := &ops{}
	// The probes and metrics outlive SIGTERM: through the graceful stop
	// /readyz says not ready (rather than refusing connections) and the
	// drain can still be scraped. They stop when the returned function
	// runs, as the process ends.
	opsCtx, stopOps := context.WithCancel(context.WithoutCancel(ctx))
	opsDone := make(chan struct{})
	if c.metricsListen != "" {
		// Bound before the process goes on: one that could not serve its
		// probes would never be ready, and be restarted by its liveness
		// probe, while its relays or worker went on meanwhile.
		lis, err := net.Listen("tcp", c.metricsListen)
		if err != nil {
			stopOps()
			_ = tel.Shutdown(context.WithoutCancel(ctx))
			return nil, nil, nil, fmt.Errorf("metrics and probes: listen on %s: %w", c.metricsListen, err)
		}
		go func() {
			defer close(opsDone)
			if err := serveOn(opsCtx, log.With("part", "metrics and probes"), lis, o.handler(tel), drainFor); err != nil {
				log.Error("metrics and probes", "error", err.Error())
			}
		}()
	} else {
		close(opsDone)
	}
	return tel, o, func() {
		stopOps()
		<-opsDone
		// Spans still queued get a few seconds to reach the collector; a
		// collector that is down must not hold up the exit.
		flushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = tel.Shutdown(flushCtx)
	}, nil
}

// parse reads the service's flags from the environment and then args.
func (d serviceDef) parse(args []string) (serviceFlags, error) {
	fs := flag.NewFlagSet(d.name, flag.ContinueOnError)
	var f serviceFlags
	f.register(fs, true)
	up := strings.ToUpper(d.name)
	fs.StringVar(&f.listen, "listen", env("HANDOFF_"+up+"_LISTEN", d.addr), "gRPC listen address (HANDOFF_"+up+"_LISTEN)")
	fs.StringVar(&f.familiesAddr, "families-address", env("HANDOFF_FAMILIES_ADDRESS", familiesAddr), "families service host:port (HANDOFF_FAMILIES_ADDRESS)")
	fs.BoolVar(&f.migrate, "migrate", true,
		"migrate the schema at start as the URL's user; false when that user is the services' login role and 'handoff migrate' runs as the owner (HANDOFF_MIGRATE)")
	fs.BoolVar(&f.reflection, "grpc-reflection", false,
		"serve gRPC reflection on the listen address, unauthenticated, for tools such as grpcurl (HANDOFF_GRPC_REFLECTION)")
	if d.flags != nil {
		d.flags(fs, &f)
	}
	if err := fromEnv(fs, append([]string{"migrate", "HANDOFF_MIGRATE", "grpc-reflection", "HANDOFF_GRPC_REFLECTION"}, d.env...)...); err != nil {
		return f, err
	}
	err := fs.Parse(args) // before f is returned: it writes through &f
	return f, err
}

func (d serviceDef) run(ctx context.Context, log *slog.Logger, args []string) error {
	f, err := d.parse(args)
	if err != nil {
		return err
	}
	verifier, err := f.verifier()
	if err != nil {
		return err
	}
	_, o, flush, err := f.observe(ctx, log, d.name)
	if err != nil {
		return err
	}
	defer flush()
	tc, err := f.temporal(log, true)
	if err != nil {
		return err
	}
	defer tc.Close()
	return d.serve(ctx, log, f, verifier, tc, o)
}

// serve migrates, then serves the service and relays its outbox to Temporal
// until ctx ends.
func (d serviceDef) serve(ctx context.Context, log *slog.Logger, f serviceFlags, verifier *auth.Verifier, tc client.Client, o *ops) error {
	log = log.With("service", d.name)
	// Migrate as the URL's user (the owner), then act as the application
	// role under row-level security.
	// The transport and the service's own settings are checked first: a
	// refusal must not wait on, or follow, a migration.
	creds, err := tlsconf.Server(f.tls)
	if err != nil {
		return err
	}
	if err := f.plaintext("listening on", f.listen, creds); err != nil {
		return err
	}
	if err := databaseTransport(f.databaseURL, f.databasePlaintext, databaseWaiver); err != nil {
		return err
	}
	if d.peers != nil {
		// As dial will check each when register calls it.
		client, err := tlsconf.Client(f.tls)
		if err != nil {
			return err
		}
		for _, addr := range d.peers(f) {
			if err := f.plaintext("calling", addr, client); err != nil {
				return err
			}
		}
	}
	f.warnWaived(log)
	if d.prepare != nil {
		if err := d.prepare(ctx, &f); err != nil {
			return err
		}
	}
	pool, err := openSchema(ctx, log, f.databaseURL, d.schema, d.migrations, f.migrate)
	if err != nil {
		return err
	}
	defer pool.Pool.Close()
	srv, err := grpcserver.New(grpcserver.Config{Logger: log, Verifier: verifier, Policy: d.policy, TLS: creds, Reflection: f.reflection})
	if err != nil {
		return err
	}
	f.log = log
	background, err := d.register(srv, pool, f)
	if err != nil {
		return err
	}
	if background.close != nil {
		// Runs when serve returns: after the graceful stop and the relay,
		// before the pools deferred above.
		defer background.close()
	}
	var parts []func(context.Context)
	if background.run != nil {
		parts = append(parts, background.run)
	}
	deliver := (&dispatch.Dispatcher{Client: tc, Log: log}).Deliver
	relay := &outbox.Relay{DB: pool, Deliver: deliver, Log: log, Lane: outbox.ByFamily}
	if d.schema != webhooks.Schema {
		// Every event is offered to the webhook subscriptions too, by a
		// relay of its own: the EHR's and the reminder automation's
		// notifications wait on no Temporal. The webhooks schema is
		// migrated here too, so the relay never waits for a service that
		// starts later.
		whDB, err := openSchema(ctx, log, f.databaseURL, webhooks.Schema, webhooks.Migrations(), f.migrate)
		if err != nil {
			return err
		}
		defer whDB.Pool.Close()
		relay.AwaitSink = true
		sink := &outbox.Relay{DB: pool, Deliver: (&webhooks.Sink{DB: whDB, Log: log}).For(d.schema), Log: log.With("consumer", "sink"),
			Lane: outbox.ByFamily, Consumer: outbox.Sink}
		parts = append(parts, sink.Run)
	}
	parts = append(parts, relay.Run)
	// Bound last, once everything it serves with is open: a port taken
	// while a migration waits on another's lock would take connections it
	// cannot answer, and stay open if that migration failed.
	lis, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("%s: listen: %w", d.name, err)
	}
	return runWith(ctx, func(ctx context.Context) error {
		o.setReady(serving(srv.Health))
		log.Info("serving", "addr", lis.Addr().String())
		return srv.Serve(ctx, lis, drainFor)
	}, parts...)
}

// runWith runs the parts until ctx ends or serve returns, whichever comes
// first, and waits for them: a server that fails on its own must not leave
// the relay and the sweeps running in a process that answers nobody.
func runWith(ctx context.Context, serve func(context.Context) error, parts ...func(context.Context)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for _, run := range parts {
		wg.Add(1)
		go func() { defer wg.Done(); run(ctx) }()
	}
	err := serve(ctx)
	cancel()
	wg.Wait()
	return err
}

// dial connects to another of Handoff's services over the processes'
// mutual TLS. Calls carry the caller's token, or token when there is none
// (a service identity; nil sends caller tokens only).
func (f serviceFlags) dial(addr string, token grpcclient.TokenSource) (*grpc.ClientConn, error) {
	creds, err := tlsconf.Client(f.tls)
	if err != nil {
		return nil, err
	}
	if err := f.plaintext("calling", addr, creds); err != nil {
		return nil, err
	}
	return grpcclient.Dial(addr, grpcclient.Config{TLS: creds, Token: token})
}

// openSchema migrates a service's schema as the URL's user (its owner),
// unless told not to, then opens it as the application role, under
// row-level security.
func openSchema(ctx context.Context, log *slog.Logger, dbURL, schema string, migrations []pgdb.Source, migrate bool) (*pgdb.DB, error) {
	schema = schemaPrefix() + schema
	if !migrate {
		// Not migrating, the process logs in as the services' own role:
		// given the owner's URL, it would hold the owner's rights.
		db, err := pgdb.OpenApp(ctx, dbURL, schema)
		if err != nil {
			return nil, err
		}
		if err := pgdb.CheckLoginRole(ctx, db, schema); err != nil {
			db.Pool.Close()
			return nil, err
		}
		if err := awaitMigrated(ctx, log, db, schema, migrations); err != nil {
			db.Pool.Close()
			return nil, err
		}
		return db, nil
	}
	owner, err := pgdb.Open(ctx, dbURL, schema)
	if err != nil {
		return nil, err
	}
	err = pgdb.Migrate(ctx, owner, schema, migrations...)
	owner.Close()
	if err != nil {
		return nil, err
	}
	return pgdb.OpenApp(ctx, dbURL, schema)
}

// migratedPoll is how often a service not migrating looks again for its
// release's migrations.
var migratedPoll = 5 * time.Second

// awaitMigrated waits, not ready, until schema holds every migration of
// this release: started before the migration job has run (manifests
// applied in one pass, or the job still running), or against a database
// that lacks the schema, the service would otherwise report ready and
// fail every call that reads what the migrations add. The probes answer
// meanwhile (the process is alive, not ready), and the rollout waits.
func awaitMigrated(ctx context.Context, log *slog.Logger, db *pgdb.DB, schema string, migrations []pgdb.Source) error {
	var said time.Time
	var missing []string
	lacks := func(err error) error {
		return fmt.Errorf("schema %s lacks %d migrations of this release (first %s): %w", schema, len(missing), missing[0], err)
	}
	for {
		now, err := pgdb.Unapplied(ctx, db.Pool, schema, migrations...)
		if err != nil {
			// Given up while looking again, the service still says what it
			// waited for: that, not the read cut short, is what the operator
			// must act on.
			if ctx.Err() != nil && len(missing) > 0 {
				return lacks(ctx.Err())
			}
			return err
		}
		missing = now
		if len(missing) == 0 {
			return nil
		}
		if time.Since(said) >= time.Minute {
			said = time.Now()
			log.Warn("waiting for this release's migrations: run `handoff migrate` as the schemas' owner",
				"schema", schema, "missing", len(missing), "first", missing[0])
		}
		select {
		case <-ctx.Done():
			return lacks(ctx.Err())
		case <-time.After(migratedPoll):
		}
	}
}

// schemaPrefix lets tests run the real processes in schemas of their own
// (HANDOFF_SCHEMA_PREFIX); empty in normal use.
func schemaPrefix() string { return env("HANDOFF_SCHEMA_PREFIX", "") }

func runMigrate(ctx context.Context, log *slog.Logger, args []string) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	dbURL := new(string)
	secretVar(fs, dbURL, "database-url", env("HANDOFF_DATABASE_URL", defaultDatabaseURL), "PostgreSQL URL of the schemas' owner (HANDOFF_DATABASE_URL)")
	loginRole := fs.String("app-login-role", env("HANDOFF_APP_LOGIN_ROLE", ""),
		"a role the services log in as, granted the application role's rights only; created if a password is given (HANDOFF_APP_LOGIN_ROLE)")
	loginPassword := new(string)
	secretVar(fs, loginPassword, "app-login-password", env("HANDOFF_APP_LOGIN_PASSWORD", ""), "its password (HANDOFF_APP_LOGIN_PASSWORD)")
	trusted := fs.Bool("database-plaintext", false, databasePlaintextUsage)
	envErr := fromEnv(fs, "database-plaintext", "HANDOFF_DATABASE_PLAINTEXT")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if envErr != nil {
		return envErr
	}
	if err := loginPasswordProblem(*loginPassword); err != nil {
		return err
	}
	if err := databaseTransport(*dbURL, *trusted, databaseWaiver); err != nil {
		return err
	}
	if err := migrateAll(ctx, log, *dbURL); err != nil {
		return err
	}
	if *loginRole == "" {
		return nil
	}
	pool, err := pgdb.Open(ctx, *dbURL, schemaPrefix()+serviceDefs[0].schema)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := pgdb.EnsureLoginRole(ctx, pool, *loginRole, *loginPassword); err != nil {
		return err
	}
	log.Info("services' login role ready", "role", *loginRole)
	return nil
}

// minLoginPassword is the shortest password the migration sets for the
// services' login role: the role reads every clinic's records, and no
// person types it.
const minLoginPassword = 16

// loginPasswordProblem refuses a login role password that is a placeholder
// (deploy/k8s/secrets.example.yaml's CHANGE-ME, published with the
// repository) or too short. Empty is allowed: the role is then one an
// administrator made.
func loginPasswordProblem(pw string) error {
	switch {
	case pw == "":
		return nil
	case strings.Contains(strings.ToUpper(pw), "CHANGE-ME"):
		return errors.New("--app-login-password is the example's placeholder: set a password of your own")
	case utf8.RuneCountInString(pw) < minLoginPassword:
		return fmt.Errorf("--app-login-password is shorter than %d characters", minLoginPassword)
	}
	return nil
}

func migrateAll(ctx context.Context, log *slog.Logger, dbURL string) error {
	for _, d := range serviceDefs {
		pool, err := pgdb.Open(ctx, dbURL, schemaPrefix()+d.schema)
		if err != nil {
			return err
		}
		err = pgdb.Migrate(ctx, pool, schemaPrefix()+d.schema, d.migrations...)
		pool.Close()
		if err != nil {
			return err
		}
		log.Info("migrated", "schema", d.schema)
	}
	return nil
}

// temporalPlaintext refuses a connection to Temporal without TLS (cfg nil)
// off loopback unless --insecure-plaintext says the network is trusted.
// Payloads are sealed, but workflow ids and types are not: they name
// interventions, MAT intakes and overdoses, which is Part 2 information
// about who is in treatment, and the connection carries the commands that
// start and stop them.
func (c *common) temporalPlaintext(cfg *tls.Config) error {
	if c.envErr != nil {
		return c.envErr
	}
	if cfg != nil || isLoopback(c.temporalAddr) {
		return nil
	}
	if c.insecurePlaintext {
		c.waive("Temporal at " + c.temporalAddr)
		return nil
	}
	return fmt.Errorf("Temporal at %s without TLS would send workflow ids, which name interventions, intakes and overdoses, in clear: "+
		"set --temporal-tls-ca (HANDOFF_TEMPORAL_TLS_CA) and a client certificate (--temporal-tls-cert, --temporal-tls-key) "+
		"or --temporal-api-key, or --insecure-plaintext (HANDOFF_INSECURE_PLAINTEXT=true) on a network you trust", c.temporalAddr)
}

// temporalSecurity applies mTLS (a client certificate, as Temporal Cloud and
// self-hosted clusters with TLS use) or an API key (Temporal Cloud).
func (c *common) temporalSecurity(o *client.Options) error {
	var cfg *tls.Config
	if c.temporalTLS.Cert != "" || c.temporalTLS.Key != "" {
		// Read again at each handshake, so that a renewed certificate is
		// used without a restart.
		get, err := tlsconf.ClientCertificate(c.temporalTLS.Cert, c.temporalTLS.Key)
		if err != nil {
			return fmt.Errorf("temporal tls: %w", err)
		}
		cfg = &tls.Config{GetClientCertificate: get, MinVersion: tls.VersionTLS12}
	}
	if c.temporalTLS.CA != "" {
		// A private CA alone is server TLS, with an API key or without a
		// client certificate.
		pem, err := os.ReadFile(c.temporalTLS.CA)
		if err != nil {
			return fmt.Errorf("temporal tls: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("temporal tls: no certificate in %s", c.temporalTLS.CA)
		}
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		cfg.RootCAs = pool
	}
	if c.temporalAPIKey != "" {
		o.Credentials = client.NewAPIKeyStaticCredentials(c.temporalAPIKey)
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
	}
	o.ConnectionOptions.TLS = cfg
	return nil
}
