// Package interventions is the interventions service: where counselors plan
// the conversation with a loved one, schedule it, and record how it went;
// and where the workflows put the reminders that automation delivers. It
// owns the PostgreSQL schema "interventions" and reads families only
// through the families service's API.
package interventions

import (
	"context"
	"embed"
	"time"
	_ "time/tzdata" // time zones must resolve on minimal images too

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/consentgate"
	"github.com/handoff-health/handoff/services/outbox"
	"github.com/handoff-health/handoff/services/pgdb"
)

// Schema is the PostgreSQL schema the service owns.
const Schema = "interventions"

//go:embed migrations/*.sql
var migrations embed.FS

// Migrations are the service's migrations, shared tables first.
func Migrations() []pgdb.Source {
	return []pgdb.Source{
		{Name: "common", FS: pgdb.Common, Dir: "common"},
		{Name: "interventions", FS: migrations, Dir: "migrations"},
	}
}

// Config tunes the service.
type Config struct {
	// Families reads families (members, safety screens, barriers).
	Families familiesv1.FamiliesServiceClient
	// CalendarFamilies and CalendarReferrals find a counselor's clients'
	// intake appointments for calendar feeds. A feed's reader has no token
	// to forward, so these connections must carry the calendar_reader
	// service identity's token. Without them feeds show interventions only.
	CalendarFamilies  familiesv1.FamiliesServiceClient
	CalendarReferrals referralsv1.ReferralsServiceClient
	// Holds is read, with the caller's token, to check the hold a
	// counselor names on the checklist: it must keep a place for this
	// meeting of this family, the hold its workflows convert or release;
	// and the referral a reminder to someone of a family is about.
	// Nil skips the check: only for tests and benchmarks that run this
	// service alone.
	Holds HoldReader
	// Horizon is how far ahead an intervention may be scheduled. Default one
	// year.
	Horizon time.Duration
	// Now is the clock; tests replace it.
	Now func() time.Time
}

// HoldReader is the part of the referrals API the service reads.
type HoldReader interface {
	GetHold(ctx context.Context, in *referralsv1.GetHoldRequest, opts ...grpc.CallOption) (*referralsv1.Hold, error)
	// GetReferral reads, with the caller's token, the family of the
	// referral a reminder to someone of a family is about.
	GetReferral(ctx context.Context, in *referralsv1.GetReferralRequest, opts ...grpc.CallOption) (*referralsv1.Referral, error)
	// ListHolds finds, with the worker's token, the hold the worker
	// ticks among the live holds of its intervention.
	ListHolds(ctx context.Context, in *referralsv1.ListHoldsRequest, opts ...grpc.CallOption) (*referralsv1.ListHoldsResponse, error)
}

// Server implements interventionsv1.InterventionsServiceServer.
type Server struct {
	interventionsv1.UnimplementedInterventionsServiceServer
	pool *pgdb.DB
	cfg  Config
	// consent checks the EHR's reads with the families service.
	consent *consentgate.Gate
}

// New returns a server over pool, whose search path is the service's schema.
// New returns a server whose queries run through db, as the application
// role and scoped to the caller's clinic.
func New(pool *pgdb.DB, cfg Config) *Server {
	if cfg.Horizon == 0 {
		cfg.Horizon = 365 * 24 * time.Hour
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{pool: pool, cfg: cfg, consent: &consentgate.Gate{Families: cfg.Families}}
	s.observeDue()
	return s
}

const svc = "/handoff.interventions.v1.InterventionsService/"

type ref struct{ clinic, id string }

func authorized(ctx context.Context, field, name, collection string) (ref, error) {
	ids, err := aip.Parse(name, "clinics", collection)
	if err != nil {
		return ref{}, apperr.Field(field, "%v", err)
	}
	return ref{ids[0], ids[1]}, auth.CheckClinic(ctx, ids[0], name)
}

func parentClinic(ctx context.Context, parent string) (string, error) {
	ids, err := aip.Parse(parent, "clinics")
	if err != nil {
		return "", apperr.Field("parent", "%v", err)
	}
	return ids[0], auth.CheckClinic(ctx, ids[0], parent)
}

func interventionName(clinic, id string) string {
	return aip.Name("clinics", clinic, "interventions", id)
}

// Event types the intervention workflow listens for, through the outbox.
const (
	EventScheduled   = "handoff.interventions.v1.intervention.scheduled"
	EventRescheduled = "handoff.interventions.v1.intervention.rescheduled"
	EventCancelled   = "handoff.interventions.v1.intervention.cancelled"
	EventOutcome     = "handoff.interventions.v1.intervention.outcome_recorded"
	EventCheckIn     = "handoff.interventions.v1.intervention.check_in_recorded"
)

func emit(ctx context.Context, tx pgx.Tx, clinic, event, resource string, payload proto.Message) error {
	return outbox.Write(ctx, tx, outbox.Event{Clinic: clinic, Type: "handoff.interventions.v1." + event, Resource: resource, Payload: payload})
}
