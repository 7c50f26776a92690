package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/families"
	"github.com/handoff-health/handoff/services/grpcserver"
	"github.com/handoff-health/handoff/services/pgdb"
)

// serviceDef describes one gRPC service process.
type serviceDef struct {
	name       string
	schema     string
	addr       string
	migrations []pgdb.Source
	policy     grpcserver.Policy
	register   func(s *grpc.Server, pool *pgxpool.Pool, deps serviceDeps) error
}

// serviceDeps are what a service may need beyond its own database.
type serviceDeps struct {
	log *slog.Logger
}

var serviceDefs = []serviceDef{
	{
		name: "families", schema: families.Schema, addr: "127.0.0.1:7101",
		migrations: families.Migrations(), policy: families.Policy(),
		register: func(s *grpc.Server, pool *pgxpool.Pool, _ serviceDeps) error {
			familiesv1.RegisterFamiliesServiceServer(s, families.New(pool, families.Config{}))
			return nil
		},
	},
}

func init() {
	for _, d := range serviceDefs {
		commands[d.name] = command{summary: "run the " + d.name + " gRPC service", run: d.run}
	}
	commands["migrate"] = command{summary: "apply every service's migrations and exit", run: runMigrate}
}

// common flags of every service process.
type serviceFlags struct {
	listen, databaseURL, issuer, audience, jwksURL string
}

func (d serviceDef) flags(args []string) (serviceFlags, error) {
	fs := flag.NewFlagSet(d.name, flag.ContinueOnError)
	var f serviceFlags
	fs.StringVar(&f.listen, "listen", env("HANDOFF_"+strings.ToUpper(d.name)+"_LISTEN", d.addr), "gRPC listen address (HANDOFF_"+strings.ToUpper(d.name)+"_LISTEN)")
	fs.StringVar(&f.databaseURL, "database-url", env("HANDOFF_DATABASE_URL", defaultDatabaseURL), "PostgreSQL URL (HANDOFF_DATABASE_URL)")
	fs.StringVar(&f.issuer, "oidc-issuer", env("HANDOFF_OIDC_ISSUER", ""), "trusted token issuer (HANDOFF_OIDC_ISSUER)")
	fs.StringVar(&f.audience, "oidc-audience", env("HANDOFF_OIDC_AUDIENCE", "handoff"), "required token audience (HANDOFF_OIDC_AUDIENCE)")
	fs.StringVar(&f.jwksURL, "jwks-url", env("HANDOFF_JWKS_URL", ""), "issuer's JWKS URL (HANDOFF_JWKS_URL)")
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	if f.issuer == "" || f.jwksURL == "" {
		return f, fmt.Errorf("%s: --oidc-issuer and --jwks-url are required (every call must carry a verified token)", d.name)
	}
	return f, nil
}

const defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/handoff?sslmode=disable"

func (d serviceDef) run(ctx context.Context, log *slog.Logger, args []string) error {
	f, err := d.flags(args)
	if err != nil {
		return err
	}
	verifier := &auth.Verifier{Issuer: f.issuer, Audience: f.audience, Keys: &auth.JWKS{URL: f.jwksURL}, Leeway: 30 * time.Second}
	return d.serve(ctx, log, f.listen, f.databaseURL, verifier)
}

// serve migrates, then serves the service until ctx ends.
func (d serviceDef) serve(ctx context.Context, log *slog.Logger, listen, databaseURL string, verifier *auth.Verifier) error {
	log = log.With("service", d.name)
	pool, err := pgdb.Open(ctx, databaseURL, d.schema)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := pgdb.Migrate(ctx, pool, d.schema, d.migrations...); err != nil {
		return err
	}
	srv, err := grpcserver.New(grpcserver.Config{Logger: log, Verifier: verifier, Policy: d.policy})
	if err != nil {
		return err
	}
	if err := d.register(srv.Server, pool, serviceDeps{log: log}); err != nil {
		return err
	}
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("%s: listen: %w", d.name, err)
	}
	log.Info("serving", "addr", lis.Addr().String())
	return srv.Serve(ctx, lis, 10*time.Second)
}

func runMigrate(ctx context.Context, log *slog.Logger, args []string) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	dbURL := fs.String("database-url", env("HANDOFF_DATABASE_URL", defaultDatabaseURL), "PostgreSQL URL (HANDOFF_DATABASE_URL)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, d := range serviceDefs {
		pool, err := pgdb.Open(ctx, *dbURL, d.schema)
		if err != nil {
			return err
		}
		err = pgdb.Migrate(ctx, pool, d.schema, d.migrations...)
		pool.Close()
		if err != nil {
			return err
		}
		log.Info("migrated", "schema", d.schema)
	}
	return nil
}
