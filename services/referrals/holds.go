package referrals

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/idempotency"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/telemetry"
)

const holdSelect = `SELECT id, program_id, service_kind, family, intervention, expire_time, state, referral,
	release_reason, create_time, update_time, version, holder, workflow_held FROM holds`

// holdRow is a row of holdSelect's columns.
type holdRow struct {
	id, program, family, intervention, referral, reason string
	kind, state                                         int16
	expires, created, updated                           time.Time
	version                                             int64
	holder                                              string
	workflowHeld                                        bool
}

func (h *holdRow) dest() []any {
	return []any{&h.id, &h.program, &h.kind, &h.family, &h.intervention, &h.expires, &h.state, &h.referral, &h.reason,
		&h.created, &h.updated, &h.version, &h.holder, &h.workflowHeld}
}

// hold is the row as the API shows it at now, in clinic.
func (h *holdRow) hold(clinic string, now time.Time) *referralsv1.Hold {
	out := &referralsv1.Hold{
		Name: holdName(clinic, h.id), Program: programName(clinic, h.program), ServiceKind: referralsv1.ServiceKind(h.kind),
		Family: h.family, Intervention: h.intervention, ExpireTime: timestamppb.New(h.expires),
		State: referralsv1.HoldState(h.state), Referral: h.referral, ReleaseReason: h.reason,
		CreateTime: timestamppb.New(h.created), UpdateTime: timestamppb.New(h.updated), Etag: aip.Etag(h.version),
		Holder: h.holder, WorkflowHeld: h.workflowHeld,
	}
	// A hold past its expiry is expired whether or not the sweeper has
	// returned its slot yet.
	if out.State == referralsv1.HoldState_HOLD_STATE_HELD && !now.Before(h.expires) {
		out.State, out.ReleaseReason = referralsv1.HoldState_HOLD_STATE_EXPIRED, reasonExpired
	}
	return out
}

func (s *Server) scanHold(clinic string) pgx.RowToFunc[*referralsv1.Hold] {
	return scanHoldAt(clinic, s.cfg.Now)
}

// scanHoldAt reads a hold as it stands at now(), which is called once the
// row is here: a locking read waits for the lock after the query is sent,
// and a hold that lapsed meanwhile must not be converted or released as
// still held.
func scanHoldAt(clinic string, now func() time.Time) pgx.RowToFunc[*referralsv1.Hold] {
	return func(r pgx.CollectableRow) (*referralsv1.Hold, error) {
		var h holdRow
		if err := r.Scan(h.dest()...); err != nil {
			return nil, err
		}
		return h.hold(clinic, now()), nil
	}
}

func (s *Server) readHold(ctx context.Context, q pgdb.Querier, r ref, lock bool) (*referralsv1.Hold, error) {
	sql := holdSelect + ` WHERE clinic = $1 AND id = $2`
	if lock {
		sql += ` FOR UPDATE`
	}
	rows, err := q.Query(ctx, sql, r.clinic, r.id)
	return pgdb.One(rows, err, holdName(r.clinic, r.id), s.scanHold(r.clinic))
}

func newHold() *referralsv1.Hold { return &referralsv1.Hold{} }

// HoldSlot implements the API. The slot is taken by one conditional UPDATE
// on the program row, so concurrent holds serialise on that row and the
// CHECK constraint stands behind it: capacity is never oversold.
func (s *Server) HoldSlot(ctx context.Context, req *referralsv1.HoldSlotRequest) (*referralsv1.Hold, error) {
	p, err := authorized(ctx, "program", req.GetProgram(), "programs")
	if err != nil {
		return nil, err
	}
	var vs apperr.Violations
	if req.GetServiceKind() == referralsv1.ServiceKind_SERVICE_KIND_UNSPECIFIED {
		vs.Add("service_kind", "is required")
	}
	checkRef(&vs, p.clinic, "family", req.GetFamily(), "families", true)
	checkRef(&vs, p.clinic, "intervention", req.GetIntervention(), "interventions", false)
	if err := vs.Err(); err != nil {
		return nil, err
	}
	if out, ok, err := idempotency.Stored(ctx, s.pool, p.clinic, svc+"HoldSlot", req.GetRequestId(), req, newHold); ok || err != nil {
		return out, err
	}
	if _, err := s.checkFamily(ctx, "family", req.GetFamily(), "", ""); err != nil {
		return nil, err
	}
	iv, err := s.readIntervention(ctx, "intervention", req.GetIntervention(), req.GetFamily())
	if err != nil {
		return nil, err
	}
	if err := checkHeldFor(iv); err != nil {
		return nil, err
	}
	ttl := s.cfg.DefaultHoldTTL
	if req.GetTtl() != nil {
		ttl = req.GetTtl().AsDuration()
	}
	return idempotency.InTx(ctx, s.pool, p.clinic, svc+"HoldSlot", req.GetRequestId(), req, newHold,
		func(tx pgx.Tx) (*referralsv1.Hold, error) {
			now := s.cfg.Now()
			if _, _, err := s.expireHolds(ctx, tx, p.clinic, p.id, now, 0, holdKey{}); err != nil {
				return nil, err
			}
			tag, err := tx.Exec(ctx, `UPDATE programs SET available_slots = available_slots - 1, held_slots = held_slots + 1,
				update_time = $4, version = version + 1
				WHERE clinic = $1 AND id = $2 AND $3 = ANY(services) AND available_slots > 0 AND delete_time IS NULL`,
				p.clinic, p.id, int16(req.GetServiceKind()), now)
			if err != nil {
				return nil, fmt.Errorf("take slot: %w", err)
			}
			if tag.RowsAffected() == 0 {
				prog, err := readProgram(ctx, tx, p, false)
				if err != nil {
					return nil, err
				}
				if err := notDeleted(prog); err != nil {
					return nil, err
				}
				if err := offered(prog, req.GetServiceKind()); err != nil {
					return nil, err
				}
				return nil, apperr.FailedPrecondition(apperr.ReasonNoCapacity,
					prog.GetName()+" has no free intake slot: match another program or try again later",
					map[string]string{"program": prog.GetName()})
			}
			h := ref{p.clinic, aip.NewID()}
			// A place is a workflow's if the worker held it.
			pr, _ := auth.FromContext(ctx)
			byWorkflow := pr.WorkerOnly()
			if _, err := tx.Exec(ctx, `INSERT INTO holds (clinic, id, program_id, service_kind, family, intervention, expire_time, state,
					create_time, update_time, holder, workflow_held)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11)`, h.clinic, h.id, p.id, int16(req.GetServiceKind()),
				req.GetFamily(), req.GetIntervention(), now.Add(ttl), int16(referralsv1.HoldState_HOLD_STATE_HELD), now,
				auth.Actor(ctx), byWorkflow); err != nil {
				return nil, fmt.Errorf("insert hold: %w", err)
			}
			out, err := s.readHold(ctx, tx, h, false)
			if err != nil {
				return nil, err
			}
			return out, emit(ctx, tx, h.clinic, "hold.created", out.GetName(), out)
		})
}

// checkRef checks that name is a resource of collection in clinic.
func checkRef(vs *apperr.Violations, clinic, field, name, collection string, required bool) {
	if name == "" {
		if required {
			vs.Add(field, "is required")
		}
		return
	}
	ids, err := aip.Parse(name, "clinics", collection)
	if err != nil {
		vs.Add(field, "%v", err)
		return
	}
	if ids[0] != clinic {
		vs.Add(field, "must be in the same clinic")
	}
}

// reasonExpired is the release reason of a hold that reached its expiry:
// the view shows it as soon as the hold lapses, and the sweep stores it.
const reasonExpired = "expired"

// expireHolds marks due holds EXPIRED and gives their slots back, for one
// program or (programID "") for every program, at most limit of them (0:
// all). Each expired hold gets a hold.expired event, as a release does, so
// that a reader of the outbox learns that the slot went back without
// anyone asking for it. Only holds after the key after (clinic, id) are
// taken: a sweep in batches resumes where its last batch ended instead of
// reading past every hold it already expired. It returns how many it
// expired and the key of the last.
func (s *Server) expireHolds(ctx context.Context, tx pgx.Tx, clinic, programID string, now time.Time, limit int, after holdKey) (int, holdKey, error) {
	// The due holds are locked first, in one order (clinic, id), as every
	// statement that locks several holds does: the sweep of every clinic
	// and a program's own (HoldSlot, DeleteProgram) would otherwise lock
	// two holds of one program in opposite orders and deadlock.
	rows, err := tx.Query(ctx, `WITH due AS MATERIALIZED (
			SELECT clinic, id FROM holds
			WHERE state = $5 AND expire_time <= $3 AND ($1 = '' OR clinic = $1) AND ($2 = '' OR program_id = $2)
				AND (clinic, id) > ($7, $8)
			ORDER BY clinic, id LIMIT NULLIF($6, 0) FOR UPDATE),
		expired AS (
			UPDATE holds h SET state = $4, release_reason = $9, update_time = $3, version = h.version + 1
			FROM due WHERE h.clinic = due.clinic AND h.id = due.id AND h.state = $5
			RETURNING h.clinic, h.id, h.program_id, h.service_kind, h.family, h.intervention, h.expire_time, h.state, h.referral,
				h.release_reason, h.create_time, h.update_time, h.version, h.holder, h.workflow_held),
		counts AS (SELECT clinic, program_id, count(*) AS n FROM expired GROUP BY clinic, program_id),
		returned AS (UPDATE programs p SET available_slots = p.available_slots + c.n, held_slots = p.held_slots - c.n,
			update_time = $3, version = p.version + 1
			FROM counts c WHERE p.clinic = c.clinic AND p.id = c.program_id)
		SELECT clinic, id, program_id, service_kind, family, intervention, expire_time, state, referral,
			release_reason, create_time, update_time, version, holder, workflow_held FROM expired ORDER BY clinic, id`,
		clinic, programID, now, int16(referralsv1.HoldState_HOLD_STATE_EXPIRED), int16(referralsv1.HoldState_HOLD_STATE_HELD), limit,
		after.clinic, after.id, reasonExpired)
	if err != nil {
		return 0, after, fmt.Errorf("expire holds: %w", err)
	}
	// The expired holds as they now are, from the statement itself: no
	// read of each afterwards.
	type expiredHold struct {
		clinic string
		hold   *referralsv1.Hold
	}
	expired, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (expiredHold, error) {
		var e expiredHold
		var h holdRow
		if err := row.Scan(append([]any{&e.clinic}, h.dest()...)...); err != nil {
			return e, err
		}
		e.hold = h.hold(e.clinic, now)
		return e, nil
	})
	if err != nil {
		return 0, after, fmt.Errorf("expire holds: %w", err)
	}
	for _, e := range expired {
		if err := emit(ctx, tx, e.clinic, "hold.expired", e.hold.GetName(), e.hold); err != nil {
			return 0, after, err
		}
		after = holdKey{e.clinic, aip.ID(e.hold.GetName())}
	}
	return len(expired), after, nil
}

// holdKey is a hold's key, (clinic, id).
type holdKey struct{ clinic, id string }

// ExpireHolds returns the slots of every hold past its expiry. The service
// process runs it periodically (RunExpiry); holds and conversions also
// expire what is due on their own program first. It works in batches, a
// transaction each: after the sweep was down for a while, one transaction
// over the whole backlog would keep every program's holds locked from
// HoldSlot and conversions until it ended.
func (s *Server) ExpireHolds(ctx context.Context) error {
	ctx = pgdb.WithClinic(ctx, pgdb.SystemScope) // every clinic's holds
	var after holdKey
	for {
		// Read for each batch: its holds and programs are stamped with
		// it, and a backlog's later batches commit long after the first;
		// a client polling by update time from in between would miss
		// them if they bore the first's.
		now := s.cfg.Now()
		var n int
		if err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			var err error
			n, after, err = s.expireHolds(ctx, tx, "", "", now, s.expireBatch, after)
			return err
		}); err != nil {
			return err
		}
		if s.expireBatch <= 0 || n < s.expireBatch {
			return nil // a batch of 0 is everything at once
		}
	}
}

// RunExpiry calls ExpireHolds every interval until ctx ends.
func (s *Server) RunExpiry(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.ExpireHolds(ctx); err != nil && ctx.Err() == nil {
				s.cfg.Log.Error("expire holds", "error", telemetry.LogSafe(err))
			}
		}
	}
}

// GetHold implements the API.
func (s *Server) GetHold(ctx context.Context, req *referralsv1.GetHoldRequest) (*referralsv1.Hold, error) {
	r, err := authorized(ctx, "name", req.GetName(), "holds")
	if err != nil {
		return nil, err
	}
	return s.readHold(ctx, s.pool, r, false)
}

var holdStates = aip.EnumLookup(referralsv1.HoldState_value, "HOLD_STATE_")

// holdFilter filters on the state a reader sees, as scanHold reports it: a
// HELD hold past its expiry is EXPIRED before the sweeper gets to it. The
// instant is now, by the service clock, written as a literal the code
// formats.
func holdFilter(now time.Time) map[string]aip.FilterField {
	state := fmt.Sprintf("(CASE WHEN state = %d AND expire_time <= '%s'::timestamptz THEN %d ELSE state END)",
		referralsv1.HoldState_HOLD_STATE_HELD, now.UTC().Format(time.RFC3339Nano), referralsv1.HoldState_HOLD_STATE_EXPIRED)
	return map[string]aip.FilterField{
		"state":        {Column: state, Kind: aip.Enum, Enum: holdStates},
		"program":      {Column: "('clinics/' || clinic || '/programs/' || program_id)", Kind: aip.String, Collection: "programs", IDColumn: "program_id"},
		"intervention": {Column: "intervention", Kind: aip.String},
		"family":       {Column: "family", Kind: aip.String},
	}
}

// ListHolds implements the API.
func (s *Server) ListHolds(ctx context.Context, req *referralsv1.ListHoldsRequest) (*referralsv1.ListHoldsResponse, error) {
	clinic, err := parentClinic(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	// One instant for the filter and the rows: a hold that lapses between
	// two readings of the clock would match state = HELD and read EXPIRED.
	now := s.cfg.Now()
	if err := auth.RequirePinned(ctx, aip.PinnedBy(req.GetFilter(), holdFilter(now)), "holds", "family", "intervention"); err != nil {
		return nil, err
	}
	items, next, err := pgdb.ListPage(ctx, s.pool, "holds", holdSelect, `clinic = $1`, []any{clinic},
		req, holdFilter(now), scanHoldAt(clinic, func() time.Time { return now }), func(h *referralsv1.Hold) string { return h.GetName() })
	if err != nil {
		return nil, err
	}
	return &referralsv1.ListHoldsResponse{Holds: items, NextPageToken: next}, nil
}

// lockHeld locks a hold that must still be HELD (and not past its expiry).
func (s *Server) lockHeld(ctx context.Context, tx pgx.Tx, r ref, etag, verb string) (*referralsv1.Hold, error) {
	h, err := s.readHold(ctx, tx, r, true)
	if err != nil {
		return nil, err
	}
	return h, stillHeld(h, etag, verb)
}

// stillHeld refuses to verb hold h unless etag (if given) is its own and
// it is still HELD.
func stillHeld(h *referralsv1.Hold, etag, verb string) error {
	if err := aip.CheckEtag(h.GetName(), etag, h.GetEtag()); err != nil {
		return err
	}
	if h.GetState() != referralsv1.HoldState_HOLD_STATE_HELD {
		return apperr.InvalidTransition(h.GetName(), strings.TrimPrefix(h.GetState().String(), "HOLD_STATE_"), verb)
	}
	return nil
}

// ReleaseHold implements the API: the slot goes back to the program.
func (s *Server) ReleaseHold(ctx context.Context, req *referralsv1.ReleaseHoldRequest) (*referralsv1.Hold, error) {
	r, err := authorized(ctx, "name", req.GetName(), "holds")
	if err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.pool, r.clinic, svc+"ReleaseHold", req.GetRequestId(), req, newHold,
		func(tx pgx.Tx) (*referralsv1.Hold, error) {
			h, err := s.lockHeld(ctx, tx, r, req.GetEtag(), "RELEASED")
			if err != nil {
				return nil, err
			}
			now := s.cfg.Now()
			reason := req.GetReason()
			if reason == "" {
				reason = "released"
			}
			if _, err := tx.Exec(ctx, `UPDATE holds SET state = $3, release_reason = $4, update_time = $5, version = version + 1
				WHERE clinic = $1 AND id = $2`, r.clinic, r.id, int16(referralsv1.HoldState_HOLD_STATE_RELEASED), reason, now); err != nil {
				return nil, fmt.Errorf("release hold: %w", err)
			}
			if _, err := tx.Exec(ctx, `UPDATE programs SET available_slots = available_slots + 1, held_slots = held_slots - 1,
				update_time = $3, version = version + 1 WHERE clinic = $1 AND id = $2`, r.clinic, aip.ID(h.GetProgram()), now); err != nil {
				return nil, fmt.Errorf("return slot: %w", err)
			}
			out, err := s.readHold(ctx, tx, r, false)
			if err != nil {
				return nil, err
			}
			return out, emit(ctx, tx, r.clinic, "hold.released", out.GetName(), out)
		})
}

// convertible checks, before ConvertHold's transaction, that the hold r
// can still be converted as req asks, and returns its family.
func (s *Server) convertible(ctx context.Context, r ref, req *referralsv1.ConvertHoldRequest) (*familiesv1.Family, error) {
	if s.afterStored != nil {
		s.afterStored(svc + "ConvertHold")
	}
	held, err := s.readHold(ctx, s.pool, r, false)
	if err != nil {
		return nil, err
	}
	// Refused for its etag or state first, as under the lock: a hold
	// released as its family was deleted is no longer held, and the
	// families service is not asked about a call that cannot go ahead.
	if err := stillHeld(held, req.GetEtag(), "CONVERTED"); err != nil {
		return nil, err
	}
	fam, err := s.checkFamily(ctx, "name", held.GetFamily(), "", "")
	if apperr.IsCode(err, codes.InvalidArgument) {
		return nil, apperr.NotReady(held.GetName(), apperr.Violations{{Field: "family",
			Description: "names a family that was deleted: release the hold"}})
	}
	return fam, err
}

// ConvertHold implements the API: the held slot becomes an immediate
// referral for the loved one. The slot is consumed, not returned.
func (s *Server) ConvertHold(ctx context.Context, req *referralsv1.ConvertHoldRequest) (*referralsv1.Referral, error) {
	r, err := authorized(ctx, "name", req.GetName(), "holds")
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(req.GetReason()) == "" {
		return nil, apperr.Field("reason", "is required: why the person is referred, minimum necessary")
	}
	if err := reportedTime("first_contact_time", req.GetFirstContactTime(), s.cfg.Now()); err != nil {
		return nil, err
	}
	// A retry answers as the first call did, whatever became of the family.
	if out, ok, err := idempotency.Stored(ctx, s.pool, r.clinic, svc+"ConvertHold", req.GetRequestId(), req, newReferral); ok || err != nil {
		return out, err
	}
	// A family deleted since the hold was taken (its workflow releases the
	// hold a moment later): a referral now would reach a program for no
	// one on record. Read before the transaction, as CreateReferral does,
	// so that no lock waits on the families service; a deletion in the
	// moment between is the family's workflow's to undo. A hold's family
	// never changes.
	fam, err := s.convertible(ctx, r, req)
	if err != nil {
		// The first call may have converted the hold since Stored looked.
		out, err := idempotency.Refused(ctx, s.pool, r.clinic, svc+"ConvertHold", req.GetRequestId(), req, newReferral, err)
		if apperr.Reason(err) == apperr.ReasonInvalidTransition {
			s.returnLapsed(ctx, r.clinic, "")
		}
		return out, err
	}
	first := firstContact(req.GetFirstContactTime(), fam, s.cfg.Now())
	out, err := idempotency.InTx(ctx, s.pool, r.clinic, svc+"ConvertHold", req.GetRequestId(), req, newReferral,
		func(tx pgx.Tx) (*referralsv1.Referral, error) {
			h, err := s.lockHeld(ctx, tx, r, req.GetEtag(), "CONVERTED")
			if err != nil {
				return nil, err
			}
			// Another service than the hold's is checked against the
			// program by insertReferral, under its lock.
			kind := h.GetServiceKind()
			if k := req.GetServiceKind(); k != referralsv1.ServiceKind_SERVICE_KIND_UNSPECIFIED {
				kind = k
			}
			now := s.cfg.Now()
			ref := &referralsv1.Referral{
				Family:      h.GetFamily(),
				Subject:     &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE},
				ServiceKind: kind, Program: h.GetProgram(), Urgency: referralsv1.Urgency_URGENCY_IMMEDIATE,
				Reason: req.GetReason(), Hold: h.GetName(), Intervention: h.GetIntervention(),
				FirstContactTime: first,
			}
			out, err := s.insertReferral(ctx, tx, r.clinic, ref, h.GetServiceKind(), now)
			if err != nil {
				return nil, err
			}
			if _, err := tx.Exec(ctx, `UPDATE holds SET state = $3, referral = $4, update_time = $5, version = version + 1
				WHERE clinic = $1 AND id = $2`, r.clinic, r.id, int16(referralsv1.HoldState_HOLD_STATE_CONVERTED), out.GetName(), now); err != nil {
				return nil, fmt.Errorf("convert hold: %w", err)
			}
			if _, err := tx.Exec(ctx, `UPDATE programs SET held_slots = held_slots - 1, update_time = $3, version = version + 1
				WHERE clinic = $1 AND id = $2`, r.clinic, aip.ID(h.GetProgram()), now); err != nil {
				return nil, fmt.Errorf("consume slot: %w", err)
			}
			hold, err := s.readHold(ctx, tx, r, false)
			if err != nil {
				return nil, err
			}
			if err := emit(ctx, tx, r.clinic, "hold.converted", hold.GetName(), hold); err != nil {
				return nil, err
			}
			return out, nil
		})
	if apperr.Reason(err) == apperr.ReasonInvalidTransition {
		s.returnLapsed(ctx, r.clinic, "")
	}
	return out, err
}

// offered refuses a service the program does not offer.
func offered(prog *referralsv1.Program, kind referralsv1.ServiceKind) error {
	if slices.Contains(prog.GetServices(), kind) {
		return nil
	}
	return apperr.FailedPrecondition("SERVICE_NOT_OFFERED", fmt.Sprintf("%s does not offer %s", prog.GetName(), kind),
		map[string]string{"program": prog.GetName(), "service_kind": kind.String()})
}

// returnLapsed gives back, in a transaction of its own, the slots of a
// clinic's holds (of one program, or of all for "") that are past their
// expiry and not yet swept: a lapsed hold is shown EXPIRED, with its slot
// back in the program's capacity, and a match, a program read, or the
// match that follows a yes whose place ran out (a refused conversion)
// must agree, not wait up to a minute for the sweep. Best effort: the
// sweep returns them anyway. A look through the index of held holds by
// expiry finds none in the usual case, and costs no transaction.
func (s *Server) returnLapsed(ctx context.Context, clinic, program string) {
	// Without the call's audit record: the expiry is the sweep's work,
	// not the call's change, and a refused call's record would say OK.
	ctx = pgdb.WithStamp(ctx, nil)
	now := s.cfg.Now()
	var due bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM holds
		WHERE state = $3 AND expire_time <= $4 AND clinic = $1 AND ($2 = '' OR program_id = $2))`,
		clinic, program, int16(referralsv1.HoldState_HOLD_STATE_HELD), now).Scan(&due)
	if err != nil || !due {
		return
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// At most a batch: after the sweep was down, a clinic's backlog
		// would otherwise be expired, and its holds locked, in a request.
		// The sweep takes the rest.
		_, _, err := s.expireHolds(ctx, tx, clinic, program, now, s.expireBatch, holdKey{})
		return err
	})
	if err != nil && ctx.Err() == nil {
		s.cfg.Log.WarnContext(ctx, "returning lapsed holds' slots failed; the sweep will", "clinic", clinic, "program", program, "error", telemetry.LogSafe(err))
	}
}
