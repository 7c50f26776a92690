// Package referrals is the referrals service: a directory of treatment and
// support programs with live intake capacity, holds that keep a slot ready
// for a planned intervention, barrier-aware matching, and closed-loop
// referrals followed until the person is in treatment. It owns the
// PostgreSQL schema "referrals".
package referrals

import (
	"context"
	"embed"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
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
	// Families is read, with the caller's token, to check that a referral
	// or hold names a family (and member) that exists. Nil skips the check:
	// only for benchmarks that run this service alone.
	Families FamilyReader
	// Interventions is read, with the caller's token, to check that a
	// referral or hold names an intervention of its own family: the
	// workflow of that intervention converts the hold it finds naming it.
	// Nil skips the check, as Families.
	Interventions InterventionReader
}

// InterventionReader is the part of the interventions API the service reads.
type InterventionReader interface {
	GetIntervention(ctx context.Context, in *interventionsv1.GetInterventionRequest, opts ...grpc.CallOption) (*interventionsv1.Intervention, error)
}

// FamilyReader is the part of the families API the service reads.
type FamilyReader interface {
	GetFamily(ctx context.Context, in *familiesv1.GetFamilyRequest, opts ...grpc.CallOption) (*familiesv1.Family, error)
}

// checkFamily refuses, as a field violation, a family that does not exist
// and a member who is not one of it: a hold would take a real slot, and a
// referral would reach a program, for no one.
func (s *Server) checkFamily(ctx context.Context, field, family, memberField, member string) (*familiesv1.Family, error) {
	if s.cfg.Families == nil {
		return nil, nil
	}
	fam, err := s.cfg.Families.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: family})
	if apperr.IsCode(err, codes.NotFound) {
		return nil, apperr.Field(field, "no such family")
	}
	if err != nil {
		return nil, fmt.Errorf("read family: %w", err)
	}
	if member != "" && !slices.ContainsFunc(fam.GetMembers(), func(m *familiesv1.Member) bool { return m.GetId() == member }) {
		return nil, apperr.Field(memberField, "%q is not a member of the family", member)
	}
	return fam, nil
}

// checkIntervention refuses, as a field violation, an intervention that
// does not exist or is another family's: its workflow would take a hold
// naming it for its own loved one, and the referral made from it would
// carry one family's treatment decision under another's record.
func (s *Server) checkIntervention(ctx context.Context, field, intervention, family string) error {
	_, err := s.readIntervention(ctx, field, intervention, family)
	return err
}

// readIntervention is checkIntervention that returns the intervention
// read, nil when none is named or no interventions service is set.
func (s *Server) readIntervention(ctx context.Context, field, intervention, family string) (*interventionsv1.Intervention, error) {
	if s.cfg.Interventions == nil || intervention == "" {
		return nil, nil
	}
	iv, err := s.cfg.Interventions.GetIntervention(ctx, &interventionsv1.GetInterventionRequest{Name: intervention})
	if apperr.IsCode(err, codes.NotFound) {
		return nil, apperr.Field(field, "no such intervention")
	}
	if err != nil {
		return nil, fmt.Errorf("read intervention: %w", err)
	}
	if iv.GetFamily() != family {
		return nil, apperr.Field(field, "is an intervention of another family")
	}
	return iv, nil
}

// ReasonInterventionEnded is the reason of a hold refused because the
// intervention it names ended with no one to take the place: cancelled,
// or its outcome accepted no treatment.
const ReasonInterventionEnded = "INTERVENTION_ENDED"

// checkHeldFor refuses a hold for an intervention that ended with no one
// to take the place. The places still held for it were given back when it
// ended (the cancelled-holds workflow, started once); one taken after
// would keep a scarce slot from everyone else until it lapsed, days later.
// A yes (a treatment among what was accepted) still takes one: the intake
// holds the place it converts.
func checkHeldFor(iv *interventionsv1.Intervention) error {
	switch iv.GetState() {
	case interventionsv1.InterventionState_INTERVENTION_STATE_CANCELLED:
		return apperr.FailedPrecondition(ReasonInterventionEnded,
			iv.GetName()+" was cancelled: no one will take a place held for it", map[string]string{"intervention": iv.GetName()})
	case interventionsv1.InterventionState_INTERVENTION_STATE_COMPLETED:
		o := iv.GetOutcome()
		if o.GetKind() == interventionsv1.OutcomeKind_OUTCOME_KIND_ACCEPTED || slices.ContainsFunc(o.GetAcceptedServices(), func(k interventionsv1.ServiceKind) bool {
			return slices.Contains(treatmentKinds, referralsv1.ServiceKind(k)) // the enums share their numbers
		}) {
			return nil
		}
		return apperr.FailedPrecondition(ReasonInterventionEnded,
			iv.GetName()+" ended with no treatment accepted: no one will take a place held for it", map[string]string{"intervention": iv.GetName()})
	}
	return nil
}

// treatmentKinds are the services that count as treatment, which a yes
// takes a place for: medication and care, not support.
var treatmentKinds = []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE,
	referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, referralsv1.ServiceKind_SERVICE_KIND_MAT_NALTREXONE,
	referralsv1.ServiceKind_SERVICE_KIND_INPATIENT, referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT,
	referralsv1.ServiceKind_SERVICE_KIND_INTENSIVE_OUTPATIENT}

// Server implements referralsv1.ReferralsServiceServer.
type Server struct {
	referralsv1.UnimplementedReferralsServiceServer
	pool *pgdb.DB
	cfg  Config
	// expireBatch is how many holds the sweep expires in one transaction.
	expireBatch int
	// afterStored, set by tests, runs as a handler has found no stored
	// answer for its request id and goes on to check the request.
	afterStored func(method string)
}

// New returns a server whose queries run through pool, as the application
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
	return &Server{pool: pool, cfg: cfg, expireBatch: 500}
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
