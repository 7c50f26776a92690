package referrals

import (
	"context"
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/idempotency"
	"github.com/handoff-health/handoff/services/pgdb"
)

const programSelect = `SELECT id, doc, services, payments, telehealth, same_day_intake, same_day_induction,
	available_slots, held_slots, waitlist, capacity_update_time, create_time, update_time, version, delete_time,
	min_age, max_age FROM programs`

func scanProgram(clinic string) pgx.RowToFunc[*referralsv1.Program] {
	return func(r pgx.CollectableRow) (*referralsv1.Program, error) {
		var (
			id                              string
			doc                             []byte
			services, payments              []int16
			tele, sameIntake, sameInduction bool
			available, held                 int32
			waitlist                        bool
			capUpdated, deleted             *time.Time
			created, updated                time.Time
			version                         int64
			minAge, maxAge                  int16
		)
		if err := r.Scan(&id, &doc, &services, &payments, &tele, &sameIntake, &sameInduction,
			&available, &held, &waitlist, &capUpdated, &created, &updated, &version, &deleted, &minAge, &maxAge); err != nil {
			return nil, err
		}
		p := &referralsv1.Program{}
		// Lenient: a field a newer release added (read during a rollout,
		// or after a rollback) must not make the row unreadable.
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(doc, p); err != nil {
			return nil, fmt.Errorf("decode program %s: %w", id, err)
		}
		p.Name = programName(clinic, id)
		for _, s := range services {
			p.Services = append(p.Services, referralsv1.ServiceKind(s))
		}
		for _, s := range payments {
			p.PaymentsAccepted = append(p.PaymentsAccepted, referralsv1.PaymentKind(s))
		}
		p.Telehealth, p.SameDayIntake, p.SameDayInduction = tele, sameIntake, sameInduction
		p.MinAge, p.MaxAge = int32(minAge), int32(maxAge)
		p.Capacity = &referralsv1.Capacity{AvailableSlots: available, HeldSlots: held, Waitlist: waitlist}
		if capUpdated != nil {
			p.Capacity.UpdateTime = timestamppb.New(*capUpdated)
		}
		p.CreateTime, p.UpdateTime, p.Etag = timestamppb.New(created), timestamppb.New(updated), aip.Etag(version)
		if deleted != nil {
			p.DeleteTime = timestamppb.New(*deleted)
		}
		return p, nil
	}
}

func readProgram(ctx context.Context, q pgdb.Querier, r ref, lock bool) (*referralsv1.Program, error) {
	if lock {
		return readProgramLocking(ctx, q, r, forUpdate)
	}
	return readProgramLocking(ctx, q, r, "")
}

// Row locks readProgramLocking takes.
const (
	forUpdate = " FOR UPDATE"
	forShare  = " FOR SHARE"
)

// readProgramLocking reads the program r, locking its row with lock
// (forUpdate, forShare, or "" for none).
func readProgramLocking(ctx context.Context, q pgdb.Querier, r ref, lock string) (*referralsv1.Program, error) {
	rows, err := q.Query(ctx, programSelect+` WHERE clinic = $1 AND id = $2`+lock, r.clinic, r.id)
	return pgdb.One(rows, err, programName(r.clinic, r.id), scanProgram(r.clinic))
}

// programDoc is the descriptive part of a program, stored as JSON.
func programDoc(p *referralsv1.Program) ([]byte, error) {
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(&referralsv1.Program{
		Organization: p.GetOrganization(), DisplayName: p.GetDisplayName(), Description: p.GetDescription(),
		Address: p.GetAddress(), Hours: p.GetHours(), Languages: p.GetLanguages(), Phone: p.GetPhone(),
	})
	if err != nil {
		return nil, fmt.Errorf("encode program: %w", err)
	}
	return b, nil
}

func enumInts[E ~int32](xs []E) []int16 {
	out := make([]int16, len(xs))
	for i, x := range xs {
		out[i] = int16(x)
	}
	return out
}

func checkProgram(p *referralsv1.Program) error {
	var vs apperr.Violations
	if strings.TrimSpace(p.GetDisplayName()) == "" {
		vs.Add("program.display_name", "is required")
	}
	if len(p.GetServices()) == 0 {
		vs.Add("program.services", "must list at least one service")
	}
	for i, s := range p.GetServices() {
		if s == referralsv1.ServiceKind_SERVICE_KIND_UNSPECIFIED {
			vs.Add(fmt.Sprintf("program.services[%d]", i), "must be a service kind")
		}
	}
	// Each age's range is the proto's rule; the pair is checked here, after
	// an update's mask is applied over the stored program.
	if p.GetMaxAge() > 0 && p.GetMinAge() > p.GetMaxAge() {
		vs.Add("program.max_age", "must be at least min_age (%d), or 0 for no upper limit", p.GetMinAge())
	}
	return vs.Err()
}

func newProgram() *referralsv1.Program { return &referralsv1.Program{} }

// CreateProgram implements the API. A new program has no free slots until
// it reports capacity.
func (s *Server) CreateProgram(ctx context.Context, req *referralsv1.CreateProgramRequest) (*referralsv1.Program, error) {
	clinic, err := parentClinic(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	p := req.GetProgram()
	if err := checkProgram(p); err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.pool, clinic, svc+"CreateProgram", req.GetRequestId(), req, newProgram,
		func(tx pgx.Tx) (*referralsv1.Program, error) {
			doc, err := programDoc(p)
			if err != nil {
				return nil, err
			}
			r := ref{clinic, aip.NewID()}
			now := s.cfg.Now()
			if _, err := tx.Exec(ctx, `INSERT INTO programs (clinic, id, doc, services, payments, telehealth, same_day_intake,
				same_day_induction, locality, postal_code, languages, create_time, update_time, min_age, max_age)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13, $14)`,
				r.clinic, r.id, doc, enumInts(p.GetServices()), enumInts(p.GetPaymentsAccepted()), p.GetTelehealth(),
				p.GetSameDayIntake(), p.GetSameDayInduction(), strings.ToLower(p.GetAddress().GetLocality()),
				postalKey(p.GetAddress().GetPostalCode()), lower(p.GetLanguages()), now, p.GetMinAge(), p.GetMaxAge()); err != nil {
				return nil, fmt.Errorf("insert program: %w", err)
			}
			out, err := readProgram(ctx, tx, r, false)
			if err != nil {
				return nil, err
			}
			return out, emit(ctx, tx, clinic, "program.created", out.GetName(), out)
		})
}

// postalKey is a postal code as places are matched by it: upper case,
// without spaces or hyphens, so that one place typed two ways ("k1a 0b1",
// "K1A0B1") is one.
func postalKey(pc string) string {
	return strings.ToUpper(strings.Map(func(r rune) rune {
		if unicode.IsSpace(r) || r == '-' {
			return -1
		}
		return r
	}, pc))
}

func lower(xs []string) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = strings.ToLower(x)
	}
	return out
}

// GetProgram implements the API.
func (s *Server) GetProgram(ctx context.Context, req *referralsv1.GetProgramRequest) (*referralsv1.Program, error) {
	r, err := authorized(ctx, "name", req.GetName(), "programs")
	if err != nil {
		return nil, err
	}
	s.returnLapsed(ctx, r.clinic, r.id)
	return readProgram(ctx, s.pool, r, false)
}

// withDeleted binds a page token to show_deleted as well as to the parent
// and filter: the flag changes which programs the pages hold. Without it,
// the hash is the parent's alone, as before the flag counted.
type withDeleted struct {
	*referralsv1.ListProgramsRequest
}

func (r withDeleted) GetParent() string {
	if r.GetShowDeleted() {
		return r.ListProgramsRequest.GetParent() + "\x00show_deleted"
	}
	return r.ListProgramsRequest.GetParent()
}

var programFilter = map[string]aip.FilterField{
	"service":         {Column: "services", Kind: aip.EnumIn, Enum: aip.EnumLookup(referralsv1.ServiceKind_value, "SERVICE_KIND_")},
	"payment":         {Column: "payments", Kind: aip.EnumIn, Enum: aip.EnumLookup(referralsv1.PaymentKind_value, "PAYMENT_KIND_")},
	"telehealth":      {Column: "telehealth", Kind: aip.Bool},
	"same_day_intake": {Column: "same_day_intake", Kind: aip.Bool},
	// For FHIR _lastUpdated searches.
	"update_time": {Column: "update_time", Kind: aip.Time},
}

// ListPrograms implements the API.
func (s *Server) ListPrograms(ctx context.Context, req *referralsv1.ListProgramsRequest) (*referralsv1.ListProgramsResponse, error) {
	clinic, err := parentClinic(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	// As GetProgram and MatchPrograms do: a list must not show a slot
	// held by a hold GetHold already calls EXPIRED. Once per listing, on
	// its first page: the pages after it follow within moments.
	if req.GetPageToken() == "" {
		s.returnLapsed(ctx, clinic, "")
	}
	items, next, err := pgdb.ListPage(ctx, s.pool, "programs", programSelect, `clinic = $1 AND ($2 OR delete_time IS NULL)`,
		[]any{clinic, req.GetShowDeleted()},
		withDeleted{req}, programFilter, scanProgram(clinic), func(p *referralsv1.Program) string { return p.GetName() })
	if err != nil {
		return nil, err
	}
	return &referralsv1.ListProgramsResponse{Programs: items, NextPageToken: next}, nil
}

var programUpdatable = []string{"organization", "display_name", "description", "services", "payments_accepted",
	"address", "hours", "telehealth", "same_day_intake", "same_day_induction", "languages", "phone", "min_age", "max_age"}

// UpdateProgram implements the API.
func (s *Server) UpdateProgram(ctx context.Context, req *referralsv1.UpdateProgramRequest) (*referralsv1.Program, error) {
	r, err := authorized(ctx, "program.name", req.GetProgram().GetName(), "programs")
	if err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.pool, r.clinic, svc+"UpdateProgram", req.GetRequestId(), req, newProgram,
		func(tx pgx.Tx) (*referralsv1.Program, error) {
			cur, err := lockProgram(ctx, tx, r, req.GetProgram().GetEtag())
			if err != nil {
				return nil, err
			}
			if err := notDeleted(cur); err != nil {
				return nil, err
			}
			next := proto.Clone(cur).(*referralsv1.Program)
			if err := aip.ApplyMask(next, req.GetProgram(), req.GetUpdateMask().GetPaths(), programUpdatable); err != nil {
				return nil, apperr.Field("update_mask", "%v", err)
			}
			if err := checkProgram(next); err != nil {
				return nil, err
			}
			doc, err := programDoc(next)
			if err != nil {
				return nil, err
			}
			if _, err := tx.Exec(ctx, `UPDATE programs SET doc = $3, services = $4, payments = $5, telehealth = $6,
				same_day_intake = $7, same_day_induction = $8, locality = $9, postal_code = $10, languages = $11,
				update_time = $12, min_age = $13, max_age = $14, version = version + 1 WHERE clinic = $1 AND id = $2`,
				r.clinic, r.id, doc, enumInts(next.GetServices()), enumInts(next.GetPaymentsAccepted()), next.GetTelehealth(),
				next.GetSameDayIntake(), next.GetSameDayInduction(), strings.ToLower(next.GetAddress().GetLocality()),
				postalKey(next.GetAddress().GetPostalCode()), lower(next.GetLanguages()), s.cfg.Now(), next.GetMinAge(), next.GetMaxAge()); err != nil {
				return nil, fmt.Errorf("update program: %w", err)
			}
			out, err := readProgram(ctx, tx, r, false)
			if err != nil {
				return nil, err
			}
			return out, emit(ctx, tx, r.clinic, "program.updated", out.GetName(), out)
		})
}

// DeleteProgram implements the API. A program that holds or referrals
// name is kept, marked deleted: the history of where people were sent must
// remain whole, and their names must still resolve.
func (s *Server) DeleteProgram(ctx context.Context, req *referralsv1.DeleteProgramRequest) (*emptypb.Empty, error) {
	r, err := authorized(ctx, "name", req.GetName(), "programs")
	if err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.pool, r.clinic, svc+"DeleteProgram", req.GetRequestId(), req,
		func() *emptypb.Empty { return &emptypb.Empty{} },
		func(tx pgx.Tx) (*emptypb.Empty, error) {
			now := s.cfg.Now()
			cur, err := s.lockProgramExpiring(ctx, tx, r, req.GetEtag(), now)
			if err != nil {
				return nil, err
			}
			if cur.GetDeleteTime() != nil {
				return &emptypb.Empty{}, nil
			}
			var held, named bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM holds WHERE clinic = $1 AND program_id = $2 AND state = $3),
				EXISTS (SELECT 1 FROM holds WHERE clinic = $1 AND program_id = $2)
				OR EXISTS (SELECT 1 FROM referrals WHERE clinic = $1 AND program_id = $2)`,
				r.clinic, r.id, int16(referralsv1.HoldState_HOLD_STATE_HELD)).Scan(&held, &named); err != nil {
				return nil, fmt.Errorf("check program use: %w", err)
			}
			if held {
				return nil, apperr.FailedPrecondition("PROGRAM_HOLDS_SLOTS",
					cur.GetName()+" holds slots for people about to be referred: release the holds first",
					map[string]string{"resource": cur.GetName()})
			}
			if !named {
				// Gone for good: a retry of its create or updates must not
				// get a copy of it back, as if it were still listed.
				if err := idempotency.ForgetResource(ctx, tx, r.clinic, cur.GetName()); err != nil {
					return nil, err
				}
				if _, err := tx.Exec(ctx, `DELETE FROM programs WHERE clinic = $1 AND id = $2`, r.clinic, r.id); err != nil {
					return nil, fmt.Errorf("delete program: %w", err)
				}
				return &emptypb.Empty{}, emit(ctx, tx, r.clinic, "program.deleted", cur.GetName(), cur)
			}
			if _, err := tx.Exec(ctx, `UPDATE programs SET delete_time = $3, update_time = $3, version = version + 1
				WHERE clinic = $1 AND id = $2`, r.clinic, r.id, now); err != nil {
				return nil, fmt.Errorf("delete program: %w", err)
			}
			out, err := readProgram(ctx, tx, r, false)
			if err != nil {
				return nil, err
			}
			return &emptypb.Empty{}, emit(ctx, tx, r.clinic, "program.deleted", out.GetName(), out)
		})
}

// UndeleteProgram implements the API.
func (s *Server) UndeleteProgram(ctx context.Context, req *referralsv1.UndeleteProgramRequest) (*referralsv1.Program, error) {
	r, err := authorized(ctx, "name", req.GetName(), "programs")
	if err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.pool, r.clinic, svc+"UndeleteProgram", req.GetRequestId(), req, newProgram,
		func(tx pgx.Tx) (*referralsv1.Program, error) {
			cur, err := lockProgram(ctx, tx, r, req.GetEtag())
			if err != nil {
				return nil, err
			}
			if cur.GetDeleteTime() == nil {
				return nil, apperr.AlreadyExists(cur.GetName(), cur.GetName()+" is not deleted")
			}
			// The capacity it last reported is as old as its deletion: it
			// takes no one until it reports again (held_slots is 0, as a
			// program holding slots cannot be deleted).
			if _, err := tx.Exec(ctx, `UPDATE programs SET delete_time = NULL, update_time = $3, version = version + 1,
					available_slots = 0, capacity_update_time = NULL
				WHERE clinic = $1 AND id = $2`, r.clinic, r.id, s.cfg.Now()); err != nil {
				return nil, fmt.Errorf("undelete program: %w", err)
			}
			out, err := readProgram(ctx, tx, r, false)
			if err != nil {
				return nil, err
			}
			return out, emit(ctx, tx, r.clinic, "program.undeleted", out.GetName(), out)
		})
}

// lockProgram reads the program r for a change, locked, if etag (when
// set) is still its etag.
func lockProgram(ctx context.Context, tx pgx.Tx, r ref, etag string) (*referralsv1.Program, error) {
	cur, err := readProgram(ctx, tx, r, true)
	if err != nil {
		return nil, err
	}
	if err := aip.CheckEtag(cur.GetName(), etag, cur.GetEtag()); err != nil {
		return nil, err
	}
	return cur, nil
}

// lockProgramExpiring locks program r as lockProgram does, and expires
// its holds past their expiry that the sweep has not reached yet: shown
// as EXPIRED everywhere else, they hold nothing here either. Such holds
// are locked before the program, as the sweep and HoldSlot lock them (the
// other order deadlocks against them), and expired after the etag is
// checked, as expiring them changes the program. The program returned is
// as it was read, before the expiry.
func (s *Server) lockProgramExpiring(ctx context.Context, tx pgx.Tx, r ref, etag string, now time.Time) (*referralsv1.Program, error) {
	due, err := tx.Exec(ctx, `SELECT 1 FROM holds WHERE clinic = $1 AND program_id = $2 AND state = $3 AND expire_time <= $4
		ORDER BY clinic, id FOR UPDATE`, r.clinic, r.id, int16(referralsv1.HoldState_HOLD_STATE_HELD), now)
	if err != nil {
		return nil, fmt.Errorf("lock due holds: %w", err)
	}
	cur, err := lockProgram(ctx, tx, r, etag)
	if err != nil || cur.GetDeleteTime() != nil || due.RowsAffected() == 0 {
		// A deleted program holds nothing; with no hold due (the usual
		// case) there is nothing to expire, and no statement to send.
		return cur, err
	}
	if _, _, err := s.expireHolds(ctx, tx, r.clinic, r.id, now, 0, holdKey{}); err != nil {
		return nil, err
	}
	return cur, nil
}

// notDeleted refuses a change to a deleted program.
func notDeleted(p *referralsv1.Program) error {
	if p.GetDeleteTime() == nil {
		return nil
	}
	return apperr.FailedPrecondition("PROGRAM_DELETED", p.GetName()+" is deleted: undelete it first",
		map[string]string{"resource": p.GetName()})
}

// ReportCapacity implements the API: the program's own count of free slots
// replaces ours; held slots stay held. A hold already past its expiry is
// free in the program's count, as it is in ours: it is expired first, so
// that the sweep does not give its slot back on top of the report.
func (s *Server) ReportCapacity(ctx context.Context, req *referralsv1.ReportCapacityRequest) (*referralsv1.Program, error) {
	r, err := authorized(ctx, "name", req.GetName(), "programs")
	if err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.pool, r.clinic, svc+"ReportCapacity", req.GetRequestId(), req, newProgram,
		func(tx pgx.Tx) (*referralsv1.Program, error) {
			now := s.cfg.Now()
			cur, err := s.lockProgramExpiring(ctx, tx, r, req.GetEtag(), now)
			if err != nil {
				return nil, err
			}
			if err := notDeleted(cur); err != nil {
				return nil, err
			}
			if _, err := tx.Exec(ctx, `UPDATE programs SET available_slots = $3, waitlist = $4, capacity_update_time = $5,
				update_time = $5, version = version + 1 WHERE clinic = $1 AND id = $2`,
				r.clinic, r.id, req.GetAvailableSlots(), req.GetWaitlist(), now); err != nil {
				return nil, fmt.Errorf("report capacity: %w", err)
			}
			return capacityChanged(ctx, tx, r)
		})
}

// capacityChanged reads program r back after its capacity changed (a
// report, or a rejection for want of room) and tells the subscribers.
func capacityChanged(ctx context.Context, tx pgx.Tx, r ref) (*referralsv1.Program, error) {
	out, err := readProgram(ctx, tx, r, false)
	if err != nil {
		return nil, err
	}
	return out, emit(ctx, tx, r.clinic, "program.capacity_reported", out.GetName(), out)
}
