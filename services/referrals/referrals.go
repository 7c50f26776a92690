// Package referrals is the referrals service: a directory of treatment and
// support programs with live intake capacity, holds that keep a slot ready
// for a planned intervention, barrier-aware matching, and closed-loop
// referrals followed until the person is in treatment. It owns the
// PostgreSQL schema "referrals".
package referrals

import (
	"context"
	"embed"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/consentgate"
	"github.com/handoff-health/handoff/services/outbox"
	"github.com/handoff-health/handoff/services/pgdb"
)

// Schema is the PostgreSQL schema the service owns.
const Schema = "referrals"

//go:embed migrations/*.sql
var migrations embed.FS

// Migrations are the service's migrations, shared tables first.
func Migrations() []pgdb.Source {
	return []pgdb.Source{
		{Name: "common", FS: pgdb.Common, Dir: "common"},
		{Name: "referrals", FS: migrations, Dir: "migrations"},
	}
}

// Config tunes the service.
type Config struct {
	// DefaultHoldTTL is how long a hold lasts when the request names no TTL.
	DefaultHoldTTL time.Duration
	// Now is the clock; tests replace it.
	Now func() time.Time
	Log *slog.Logger
	// Consent checks and records the EHR's reads and write-backs of
	// referrals with the families service (42 CFR Part 2).
	Consent *consentgate.Gate
}

// Server implements referralsv1.ReferralsServiceServer.
type Server struct {
	referralsv1.UnimplementedReferralsServiceServer
	pool *pgdb.DB
	cfg  Config
}

// New returns a server over pool, whose search path is the service's schema.
// New returns a server whose queries run through db, as the application
// role and scoped to the caller's clinic.
func New(pool *pgdb.DB, cfg Config) *Server {
	if cfg.DefaultHoldTTL == 0 {
		cfg.DefaultHoldTTL = 72 * time.Hour
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Server{pool: pool, cfg: cfg}
}

const svc = "/handoff.referrals.v1.ReferralsService/"

// ref is a parsed clinic-scoped name.
type ref struct{ clinic, id string }

func parse(field, name, collection string) (ref, error) {
	ids, err := aip.Parse(name, "clinics", collection)
	if err != nil {
		return ref{}, apperr.Field(field, "%v", err)
	}
	return ref{ids[0], ids[1]}, nil
}

// authorized parses name and checks that the caller may act in its clinic.
func authorized(ctx context.Context, field, name, collection string) (ref, error) {
	r, err := parse(field, name, collection)
	if err != nil {
		return ref{}, err
	}
	return r, auth.CheckClinic(ctx, r.clinic, name)
}

func parentClinic(ctx context.Context, parent string) (string, error) {
	ids, err := aip.Parse(parent, "clinics")
	if err != nil {
		return "", apperr.Field("parent", "%v", err)
	}
	return ids[0], auth.CheckClinic(ctx, ids[0], parent)
}

func programName(clinic, id string) string  { return aip.Name("clinics", clinic, "programs", id) }
func holdName(clinic, id string) string     { return aip.Name("clinics", clinic, "holds", id) }
func referralName(clinic, id string) string { return aip.Name("clinics", clinic, "referrals", id) }

// emit writes an outbox event for a change to resource.
func emit(ctx context.Context, tx pgx.Tx, clinic, event, resource string, payload proto.Message) error {
	return outbox.Write(ctx, tx, outbox.Event{Clinic: clinic, Type: "handoff.referrals.v1." + event, Resource: resource, Payload: payload})
}
