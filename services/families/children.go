package families

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/idempotency"
	"github.com/handoff-health/handoff/services/pgdb"
)

// child names a resource under a family.
type child struct {
	clinic, family, id string
}

func (c child) familyName() string { return familyName(c.clinic, c.family) }

// maxBarrierNotes is Barrier.notes' max_len in the API.
const maxBarrierNotes = 2000

func parseChild(field, name, collection string) (child, error) {
	ids, err := aip.Parse(name, "clinics", "families", collection)
	if err != nil {
		return child{}, apperr.Field(field, "%v", err)
	}
	return child{ids[0], ids[1], ids[2]}, nil
}

// authorizedChild parses and authorises a child named in field, as
// parentFamily does its parent.
func authorizedChild(ctx context.Context, field, name, collection string) (child, error) {
	c, err := parseChild(field, name, collection)
	if err != nil {
		return child{}, err
	}
	return c, auth.CheckClinic(ctx, c.clinic, name)
}

// parentFamily parses and authorises the family a child is created or listed
// under.
func parentFamily(ctx context.Context, parent string) (child, error) {
	ids, err := aip.Parse(parent, "clinics", "families")
	if err != nil {
		return child{}, apperr.Field("parent", "%v", err)
	}
	c := child{clinic: ids[0], family: ids[1]}
	return c, auth.CheckClinic(ctx, c.clinic, parent)
}

// requireFamily locks the family row so that children are never added to a
// family being deleted, and reports NOT_FOUND for a missing family.
func requireFamily(ctx context.Context, tx pgx.Tx, c child) error {
	return lockFamilyRow(ctx, tx, c, "FOR SHARE")
}

// emptyOfAFamily answers NOT_FOUND when an empty page (n items) lists the
// records of a family that does not exist (AIP-132): an empty list must not
// stand for a name mistyped or a family deleted since it was read.
func (s *Server) emptyOfAFamily(ctx context.Context, n int, c child) error {
	if n > 0 {
		return nil
	}
	return lockFamilyRow(ctx, s.pool, c, "")
}

// lockFamilyRow is requireFamily with a chosen lock ("" for none): callers
// that will update the family take FOR NO KEY UPDATE up front, so two of
// them queue instead of deadlocking on upgraded share locks.
func lockFamilyRow(ctx context.Context, q pgdb.Querier, c child, lock string) error {
	var one int
	err := q.QueryRow(ctx, `SELECT 1 FROM families WHERE clinic = $1 AND id = $2 `+lock, c.clinic, c.family).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return apperr.NotFound(c.familyName())
	}
	if err != nil {
		return fmt.Errorf("read family: %w", err)
	}
	return nil
}

// --- Barriers ---

const barrierSelect = `SELECT id, kind, notes, create_time, update_time, resolve_time, version FROM barriers`

func scanBarrier(fam string) pgx.RowToFunc[*familiesv1.Barrier] {
	return func(r pgx.CollectableRow) (*familiesv1.Barrier, error) {
		var (
			id, notes        string
			kind             int16
			created, updated time.Time
			resolved         *time.Time
			version          int64
		)
		if err := r.Scan(&id, &kind, &notes, &created, &updated, &resolved, &version); err != nil {
			return nil, err
		}
		b := &familiesv1.Barrier{
			Name: aip.Name(fam, "barriers", id), Kind: familiesv1.BarrierKind(kind), Notes: notes,
			CreateTime: timestamppb.New(created), UpdateTime: timestamppb.New(updated), Etag: aip.Etag(version),
		}
		if resolved != nil {
			b.ResolveTime = timestamppb.New(*resolved)
		}
		return b, nil
	}
}

func readBarrier(ctx context.Context, q pgdb.Querier, c child, lock bool) (*familiesv1.Barrier, error) {
	sql := barrierSelect + ` WHERE clinic = $1 AND family_id = $2 AND id = $3`
	if lock {
		sql += ` FOR UPDATE`
	}
	rows, err := q.Query(ctx, sql, c.clinic, c.family, c.id)
	if err != nil {
		return nil, fmt.Errorf("read barrier: %w", err)
	}
	b, err := pgx.CollectExactlyOneRow(rows, scanBarrier(c.familyName()))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, apperr.NotFound(aip.Name(c.familyName(), "barriers", c.id))
	}
	if err != nil {
		return nil, fmt.Errorf("read barrier: %w", err)
	}
	return b, nil
}

// CreateBarrier implements the API.
func (s *Server) CreateBarrier(ctx context.Context, req *familiesv1.CreateBarrierRequest) (*familiesv1.Barrier, error) {
	c, err := parentFamily(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	if req.GetBarrier().GetKind() == familiesv1.BarrierKind_BARRIER_KIND_UNSPECIFIED {
		return nil, apperr.Field("barrier.kind", "is required")
	}
	return idempotency.InTx(ctx, s.pool, c.clinic, svc+"CreateBarrier", req.GetRequestId(), req,
		func() *familiesv1.Barrier { return &familiesv1.Barrier{} },
		func(tx pgx.Tx) (*familiesv1.Barrier, error) {
			if err := requireFamily(ctx, tx, c); err != nil {
				return nil, err
			}
			c.id = aip.NewID()
			now := s.cfg.Now()
			if _, err := tx.Exec(ctx, `INSERT INTO barriers (clinic, family_id, id, kind, notes, create_time, update_time)
				VALUES ($1, $2, $3, $4, $5, $6, $6)`, c.clinic, c.family, c.id, int16(req.GetBarrier().GetKind()), req.GetBarrier().GetNotes(), now); err != nil {
				return nil, fmt.Errorf("insert barrier: %w", err)
			}
			b, err := readBarrier(ctx, tx, c, false)
			if err != nil {
				return nil, err
			}
			return b, emit(ctx, tx, c.clinic, "barrier.created", b.GetName(), b)
		})
}

// GetBarrier implements the API.
func (s *Server) GetBarrier(ctx context.Context, req *familiesv1.GetBarrierRequest) (*familiesv1.Barrier, error) {
	c, err := authorizedChild(ctx, "name", req.GetName(), "barriers")
	if err != nil {
		return nil, err
	}
	return readBarrier(ctx, s.pool, c, false)
}

var barrierFilter = map[string]aip.FilterField{
	"kind":     {Column: "kind", Kind: aip.Enum, Enum: aip.EnumLookup(familiesv1.BarrierKind_value, "BARRIER_KIND_")},
	"resolved": {Column: "(resolve_time IS NOT NULL)", Kind: aip.Bool},
}

// ListBarriers implements the API.
func (s *Server) ListBarriers(ctx context.Context, req *familiesv1.ListBarriersRequest) (*familiesv1.ListBarriersResponse, error) {
	c, err := parentFamily(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	items, next, err := pgdb.ListPage(ctx, s.pool, "barriers", barrierSelect, `clinic = $1 AND family_id = $2`, []any{c.clinic, c.family},
		req, barrierFilter, scanBarrier(c.familyName()), func(b *familiesv1.Barrier) string { return b.GetName() })
	if err != nil {
		return nil, err
	}
	if err := s.emptyOfAFamily(ctx, len(items), c); err != nil {
		return nil, err
	}
	if familyView(ctx) == viewWorker {
		for _, b := range items {
			b.Notes = "" // as familyForCaller keeps the screens from it
		}
	}
	return &familiesv1.ListBarriersResponse{Barriers: items, NextPageToken: next}, nil
}

// UpdateBarrier implements the API.
func (s *Server) UpdateBarrier(ctx context.Context, req *familiesv1.UpdateBarrierRequest) (*familiesv1.Barrier, error) {
	c, err := authorizedChild(ctx, "barrier.name", req.GetBarrier().GetName(), "barriers")
	if err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.pool, c.clinic, svc+"UpdateBarrier", req.GetRequestId(), req,
		func() *familiesv1.Barrier { return &familiesv1.Barrier{} },
		func(tx pgx.Tx) (*familiesv1.Barrier, error) {
			cur, err := readBarrier(ctx, tx, c, true)
			if err != nil {
				return nil, err
			}
			if err := aip.CheckEtag(cur.GetName(), req.GetBarrier().GetEtag(), cur.GetEtag()); err != nil {
				return nil, err
			}
			next := proto.Clone(cur).(*familiesv1.Barrier)
			if err := aip.ApplyMask(next, req.GetBarrier(), req.GetUpdateMask().GetPaths(), []string{"notes"}); err != nil {
				return nil, apperr.Field("update_mask", "%v", err)
			}
			if _, err := tx.Exec(ctx, `UPDATE barriers SET notes = $4, update_time = $5, version = version + 1
				WHERE clinic = $1 AND family_id = $2 AND id = $3`, c.clinic, c.family, c.id, next.GetNotes(), s.cfg.Now()); err != nil {
				return nil, fmt.Errorf("update barrier: %w", err)
			}
			b, err := readBarrier(ctx, tx, c, false)
			if err != nil {
				return nil, err
			}
			return b, emit(ctx, tx, c.clinic, "barrier.updated", b.GetName(), b)
		})
}

// DeleteBarrier implements the API.
func (s *Server) DeleteBarrier(ctx context.Context, req *familiesv1.DeleteBarrierRequest) (*emptypb.Empty, error) {
	c, err := authorizedChild(ctx, "name", req.GetName(), "barriers")
	if err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.pool, c.clinic, svc+"DeleteBarrier", req.GetRequestId(), req, newEmpty,
		func(tx pgx.Tx) (*emptypb.Empty, error) {
			cur, err := readBarrier(ctx, tx, c, true)
			if err != nil {
				return nil, err
			}
			if err := aip.CheckEtag(cur.GetName(), req.GetEtag(), cur.GetEtag()); err != nil {
				return nil, err
			}
			if _, err := tx.Exec(ctx, `DELETE FROM barriers WHERE clinic = $1 AND family_id = $2 AND id = $3`, c.clinic, c.family, c.id); err != nil {
				return nil, fmt.Errorf("delete barrier: %w", err)
			}
			// The stored answers of its create, updates and resolution
			// are copies of its notes: a retry gets NOT_FOUND, as after
			// DeleteFamily.
			if err := idempotency.ForgetResource(ctx, tx, c.clinic, cur.GetName()); err != nil {
				return nil, err
			}
			return &emptypb.Empty{}, emit(ctx, tx, c.clinic, "barrier.deleted", cur.GetName(), cur)
		})
}

// ResolveBarrier implements the API.
func (s *Server) ResolveBarrier(ctx context.Context, req *familiesv1.ResolveBarrierRequest) (*familiesv1.Barrier, error) {
	c, err := authorizedChild(ctx, "name", req.GetName(), "barriers")
	if err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.pool, c.clinic, svc+"ResolveBarrier", req.GetRequestId(), req,
		func() *familiesv1.Barrier { return &familiesv1.Barrier{} },
		func(tx pgx.Tx) (*familiesv1.Barrier, error) {
			cur, err := readBarrier(ctx, tx, c, true)
			if err != nil {
				return nil, err
			}
			if cur.GetResolveTime() != nil {
				return nil, apperr.InvalidTransition(cur.GetName(), "RESOLVED", "RESOLVED")
			}
			notes := cur.GetNotes()
			if n := req.GetNotes(); n != "" {
				if notes != "" {
					notes += "\n"
				}
				notes += n
			}
			// The barrier's notes keep their limit, or the next update of
			// them would be refused for what this call wrote.
			if utf8.RuneCountInString(notes) > maxBarrierNotes {
				return nil, apperr.Field("notes", "with the barrier's notes (%d characters) it would exceed %d characters",
					utf8.RuneCountInString(cur.GetNotes()), maxBarrierNotes)
			}
			now := s.cfg.Now()
			if _, err := tx.Exec(ctx, `UPDATE barriers SET notes = $4, resolve_time = $5, update_time = $5, version = version + 1
				WHERE clinic = $1 AND family_id = $2 AND id = $3`, c.clinic, c.family, c.id, notes, now); err != nil {
				return nil, fmt.Errorf("resolve barrier: %w", err)
			}
			b, err := readBarrier(ctx, tx, c, false)
			if err != nil {
				return nil, err
			}
			return b, emit(ctx, tx, c.clinic, "barrier.resolved", b.GetName(), b)
		})
}

// --- Warning signs ---

// warningSelect reads each sign with its retraction, if any. The lateral
// join adds only the retraction's columns, so that clinic and id (which
// ListPage names bare) stay the sign's.
const warningSelect = `SELECT id, kind, occur_time, notes, recorded_by, create_time, r.retract_time, r.retracted_by, r.reason
	FROM warning_signs LEFT JOIN LATERAL (SELECT retract_time, retracted_by, reason FROM warning_sign_retractions r
		WHERE r.clinic = warning_signs.clinic AND r.family_id = warning_signs.family_id AND r.sign_id = warning_signs.id) r ON true`

func scanWarning(fam string) pgx.RowToFunc[*familiesv1.WarningSign] {
	return func(r pgx.CollectableRow) (*familiesv1.WarningSign, error) {
		var (
			id, notes, by    string
			kind             int16
			occur, created   time.Time
			retracted        *time.Time
			retractBy, cause *string
		)
		if err := r.Scan(&id, &kind, &occur, &notes, &by, &created, &retracted, &retractBy, &cause); err != nil {
			return nil, err
		}
		w := &familiesv1.WarningSign{
			Name: aip.Name(fam, "warningSigns", id), Kind: familiesv1.WarningSignKind(kind),
			OccurTime: timestamppb.New(occur), Notes: notes, RecordedBy: by, CreateTime: timestamppb.New(created),
		}
		if retracted != nil {
			w.RetractTime, w.RetractedBy, w.RetractReason = timestamppb.New(*retracted), *retractBy, *cause
		}
		return w, nil
	}
}

func readWarning(ctx context.Context, q pgdb.Querier, c child) (*familiesv1.WarningSign, error) {
	rows, err := q.Query(ctx, warningSelect+` WHERE clinic = $1 AND family_id = $2 AND id = $3`, c.clinic, c.family, c.id)
	if err != nil {
		return nil, fmt.Errorf("read warning sign: %w", err)
	}
	w, err := pgx.CollectExactlyOneRow(rows, scanWarning(c.familyName()))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, apperr.NotFound(aip.Name(c.familyName(), "warningSigns", c.id))
	}
	if err != nil {
		return nil, fmt.Errorf("read warning sign: %w", err)
	}
	return w, nil
}

// clockSkew is how far in the future a reported time may lie before it is
// refused: clients' clocks drift.
const clockSkew = 5 * time.Minute

// tooEarly adds a violation of field if t is before aip.EarliestReported.
func tooEarly(vs *apperr.Violations, field string, t time.Time) {
	if t.Before(aip.EarliestReported) {
		vs.Add(field, "must not be before 1990 (an unset time? leave it out for now)")
	}
}

// pastTime is when something reported happened: t, or now when t is
// unset. A time before aip.EarliestReported or beyond the clock skew ahead is a
// violation of field; one ahead by less (a clock's drift) is taken as now.
func pastTime(vs *apperr.Violations, field string, t *timestamppb.Timestamp, now time.Time) time.Time {
	if t == nil {
		return now
	}
	at := t.AsTime()
	tooEarly(vs, field, at)
	if at.After(now.Add(clockSkew)) {
		vs.Add(field, "must not be in the future")
	}
	if at.After(now) {
		return now
	}
	return at
}

// CreateWarningSign implements the API. An overdose marks the family urgent
// in the same transaction, so no reader sees the sign without the urgency.
func (s *Server) CreateWarningSign(ctx context.Context, req *familiesv1.CreateWarningSignRequest) (*familiesv1.WarningSign, error) {
	c, err := parentFamily(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	ws := req.GetWarningSign()
	now := s.cfg.Now()
	var vs apperr.Violations
	if ws.GetKind() == familiesv1.WarningSignKind_WARNING_SIGN_KIND_UNSPECIFIED {
		vs.Add("warning_sign.kind", "is required")
	}
	occur := now
	if ws.GetOccurTime() != nil {
		occur = ws.GetOccurTime().AsTime()
		tooEarly(&vs, "warning_sign.occur_time", occur)
		if occur.After(now.Add(clockSkew)) {
			vs.Add("warning_sign.occur_time", "must not be in the future")
		}
		if occur.After(now) {
			occur = now // as a screen's time
		}
	}
	if err := vs.Err(); err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.pool, c.clinic, svc+"CreateWarningSign", req.GetRequestId(), req,
		func() *familiesv1.WarningSign { return &familiesv1.WarningSign{} },
		func(tx pgx.Tx) (*familiesv1.WarningSign, error) {
			lock := "FOR SHARE"
			if ws.GetKind() == familiesv1.WarningSignKind_WARNING_SIGN_KIND_OVERDOSE {
				lock = "FOR NO KEY UPDATE" // the family row is updated below
			}
			if err := lockFamilyRow(ctx, tx, c, lock); err != nil {
				return nil, err
			}
			c.id = aip.NewID()
			// The audit record names the sign, and goes with its insert
			// (an overdose's event is not a *.created one to carry it).
			pgdb.StampNames(tx, aip.Name(c.familyName(), "warningSigns", c.id))
			if _, err := tx.Exec(ctx, `INSERT INTO warning_signs (clinic, family_id, id, kind, occur_time, notes, recorded_by, create_time)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, c.clinic, c.family, c.id, int16(ws.GetKind()), occur, ws.GetNotes(), auth.Actor(ctx), now); err != nil {
				return nil, fmt.Errorf("insert warning sign: %w", err)
			}
			if ws.GetKind() == familiesv1.WarningSignKind_WARNING_SIGN_KIND_OVERDOSE {
				// Outsiders see nothing of urgency: what they see keeps its
				// version and update time (migration 0003).
				if _, err := tx.Exec(ctx, `UPDATE families SET urgent = true, `+unseenChange+`
					WHERE clinic = $1 AND id = $2`, c.clinic, c.family, now); err != nil {
					return nil, fmt.Errorf("mark family urgent: %w", err)
				}
			}
			w, err := readWarning(ctx, tx, c)
			if err != nil {
				return nil, err
			}
			// The event type names the kind so that consumers (the boundary
			// workflow) can react to an overdose without decoding the payload.
			event := "warning_sign.created"
			if w.GetKind() == familiesv1.WarningSignKind_WARNING_SIGN_KIND_OVERDOSE {
				event = "warning_sign.overdose"
			}
			return w, emit(ctx, tx, c.clinic, event, w.GetName(), w)
		})
}

// RetractWarningSign implements the API. Retracting the family's last
// standing overdose clears its urgency in the same transaction, so no
// reader sees the family urgent for a sign that no longer stands.
func (s *Server) RetractWarningSign(ctx context.Context, req *familiesv1.RetractWarningSignRequest) (*familiesv1.WarningSign, error) {
	c, err := authorizedChild(ctx, "name", req.GetName(), "warningSigns")
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(req.GetReason()) == "" {
		return nil, apperr.Field("reason", "is required: say why the sign was recorded in error")
	}
	return idempotency.InTx(ctx, s.pool, c.clinic, svc+"RetractWarningSign", req.GetRequestId(), req,
		func() *familiesv1.WarningSign { return &familiesv1.WarningSign{} },
		func(tx pgx.Tx) (*familiesv1.WarningSign, error) {
			// The family row first, as CreateWarningSign locks it: an
			// overdose recorded meanwhile keeps the family urgent.
			if err := lockFamilyRow(ctx, tx, c, "FOR NO KEY UPDATE"); err != nil {
				return nil, err
			}
			cur, err := readWarning(ctx, tx, c)
			if err != nil {
				return nil, err
			}
			if cur.GetRetractTime() != nil {
				return nil, apperr.InvalidTransition(cur.GetName(), "RETRACTED", "RETRACTED")
			}
			// As stored: the answer is built here, not read back.
			now := s.cfg.Now().Truncate(time.Microsecond)
			if _, err := tx.Exec(ctx, `INSERT INTO warning_sign_retractions (clinic, family_id, sign_id, reason, retracted_by, retract_time)
				VALUES ($1, $2, $3, $4, $5, $6)`, c.clinic, c.family, c.id, req.GetReason(), auth.Actor(ctx), now); err != nil {
				return nil, fmt.Errorf("retract warning sign: %w", err)
			}
			if cur.GetKind() == familiesv1.WarningSignKind_WARNING_SIGN_KIND_OVERDOSE {
				// As on CreateWarningSign, outsiders' view keeps its version.
				if _, err := tx.Exec(ctx, `UPDATE families SET urgent = false, `+unseenChange+`
					WHERE clinic = $1 AND id = $2 AND urgent AND NOT EXISTS (
						SELECT 1 FROM warning_signs w WHERE w.clinic = $1 AND w.family_id = $2 AND w.kind = $4
						AND NOT EXISTS (SELECT 1 FROM warning_sign_retractions r
							WHERE r.clinic = w.clinic AND r.family_id = w.family_id AND r.sign_id = w.id))`,
					c.clinic, c.family, now, int16(familiesv1.WarningSignKind_WARNING_SIGN_KIND_OVERDOSE)); err != nil {
					return nil, fmt.Errorf("clear family urgency: %w", err)
				}
			}
			cur.RetractTime, cur.RetractedBy, cur.RetractReason = timestamppb.New(now), auth.Actor(ctx), req.GetReason()
			return cur, emit(ctx, tx, c.clinic, "warning_sign.retracted", cur.GetName(), cur)
		})
}

// GetWarningSign implements the API.
func (s *Server) GetWarningSign(ctx context.Context, req *familiesv1.GetWarningSignRequest) (*familiesv1.WarningSign, error) {
	c, err := authorizedChild(ctx, "name", req.GetName(), "warningSigns")
	if err != nil {
		return nil, err
	}
	return readWarning(ctx, s.pool, c)
}

var warningFilter = map[string]aip.FilterField{
	"kind": {Column: "kind", Kind: aip.Enum, Enum: aip.EnumLookup(familiesv1.WarningSignKind_value, "WARNING_SIGN_KIND_")},
	// The workflows answer only the overdoses that stand.
	"retracted": {Column: "(r.retract_time IS NOT NULL)", Kind: aip.Bool},
	// When it was recorded: the boundary workflow asks for overdoses
	// recorded since the refused meeting began.
	"create_time": {Column: "create_time", Kind: aip.Time},
}

// ListWarningSigns implements the API.
func (s *Server) ListWarningSigns(ctx context.Context, req *familiesv1.ListWarningSignsRequest) (*familiesv1.ListWarningSignsResponse, error) {
	c, err := parentFamily(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	items, next, err := pgdb.ListPage(ctx, s.pool, "warning signs", warningSelect, `clinic = $1 AND family_id = $2`, []any{c.clinic, c.family},
		req, warningFilter, scanWarning(c.familyName()), func(w *familiesv1.WarningSign) string { return w.GetName() })
	if err != nil {
		return nil, err
	}
	if err := s.emptyOfAFamily(ctx, len(items), c); err != nil {
		return nil, err
	}
	if familyView(ctx) == viewWorker {
		// As familyForCaller does with the screens: an overdose's account
		// ("found by her sister in the car") and why it was taken back
		// stay with the staff.
		for _, w := range items {
			w.Notes, w.RetractReason = "", ""
		}
	}
	return &familiesv1.ListWarningSignsResponse{WarningSigns: items, NextPageToken: next}, nil
}

// --- Safety screens ---

const screenSelect = `SELECT id, result, safety_plan, notes, screened_by, screen_time, create_time FROM safety_screens`

func scanScreen(fam string) pgx.RowToFunc[*familiesv1.SafetyScreen] {
	return func(r pgx.CollectableRow) (*familiesv1.SafetyScreen, error) {
		var (
			id, notes, by     string
			result            int16
			plan              bool
			screened, created time.Time
		)
		if err := r.Scan(&id, &result, &plan, &notes, &by, &screened, &created); err != nil {
			return nil, err
		}
		return &familiesv1.SafetyScreen{
			Name: aip.Name(fam, "safetyScreens", id), Result: familiesv1.SafetyRisk(result), SafetyPlanInPlace: plan,
			Notes: notes, ScreenedBy: by, ScreenTime: timestamppb.New(screened), CreateTime: timestamppb.New(created),
		}, nil
	}
}

// CreateSafetyScreen implements the API.
func (s *Server) CreateSafetyScreen(ctx context.Context, req *familiesv1.CreateSafetyScreenRequest) (*familiesv1.SafetyScreen, error) {
	c, err := parentFamily(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	ss := req.GetSafetyScreen()
	now := s.cfg.Now()
	var vs apperr.Violations
	switch ss.GetResult() {
	case familiesv1.SafetyRisk_SAFETY_RISK_UNSPECIFIED:
		vs.Add("safety_screen.result", "is required")
	case familiesv1.SafetyRisk_SAFETY_RISK_RISK_WITH_PLAN:
		if !ss.GetSafetyPlanInPlace() {
			vs.Add("safety_screen.safety_plan_in_place", "must be true when the result is RISK_WITH_PLAN")
		}
	}
	// A screen time ahead by a clock's drift is now: kept ahead, it would
	// stay the family's latest screen over one recorded after it (a high
	// risk hidden behind a no risk).
	at := pastTime(&vs, "safety_screen.screen_time", ss.GetScreenTime(), now)
	if err := vs.Err(); err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.pool, c.clinic, svc+"CreateSafetyScreen", req.GetRequestId(), req,
		func() *familiesv1.SafetyScreen { return &familiesv1.SafetyScreen{} },
		func(tx pgx.Tx) (*familiesv1.SafetyScreen, error) {
			if err := lockFamilyRow(ctx, tx, c, "FOR NO KEY UPDATE"); err != nil { // updated below
				return nil, err
			}
			// The family shows its latest screen and the status it gives:
			// its etag and update time move with them, so that a reader
			// syncing on either does not miss a new risk. Outsiders see
			// no screens: what they see keeps its version (migration 0003).
			if _, err := tx.Exec(ctx, `UPDATE families SET `+unseenChange+`
				WHERE clinic = $1 AND id = $2`, c.clinic, c.family, now); err != nil {
				return nil, fmt.Errorf("note the family's new screen: %w", err)
			}
			c.id = aip.NewID()
			// Recorded after every screen the family has, though its time
			// was read before the lock was had (a screen asked for later
			// may have taken it first) or on a replica whose clock is
			// behind: a high risk recorded last must rank last
			// (LatestScreen, which ranks one by the later of when it was
			// done and recorded), not behind the no risk it waited on.
			// When it was done stays as given, or this replica's now: a
			// clock ahead elsewhere must not put it in the future.
			if _, err := tx.Exec(ctx, `INSERT INTO safety_screens (clinic, family_id, id, result, safety_plan, notes, screened_by, screen_time, create_time)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, greatest($9::timestamptz, (SELECT max(create_time) + interval '1 microsecond'
					FROM safety_screens WHERE clinic = $1 AND family_id = $2)))`, c.clinic, c.family, c.id, int16(ss.GetResult()),
				ss.GetSafetyPlanInPlace(), ss.GetNotes(), auth.Actor(ctx), at, now); err != nil {
				return nil, fmt.Errorf("insert safety screen: %w", err)
			}
			rows, err := tx.Query(ctx, screenSelect+` WHERE clinic = $1 AND family_id = $2 AND id = $3`, c.clinic, c.family, c.id)
			if err != nil {
				return nil, fmt.Errorf("read safety screen: %w", err)
			}
			out, err := pgx.CollectExactlyOneRow(rows, scanScreen(c.familyName()))
			if err != nil {
				return nil, fmt.Errorf("read safety screen: %w", err)
			}
			return out, emit(ctx, tx, c.clinic, "safety_screen.created", out.GetName(), out)
		})
}

// ListSafetyScreens implements the API.
func (s *Server) ListSafetyScreens(ctx context.Context, req *familiesv1.ListSafetyScreensRequest) (*familiesv1.ListSafetyScreensResponse, error) {
	items, next, err := listOfFamily(ctx, s, req, "safety screens", screenSelect, scanScreen)
	if err != nil {
		return nil, err
	}
	return &familiesv1.ListSafetyScreensResponse{SafetyScreens: items, NextPageToken: next}, nil
}

// pageRequest is a List request of a family's records without a filter.
type pageRequest interface {
	GetParent() string
	GetPageToken() string
	GetPageSize() int32
}

// named is a record with a resource name.
type named interface{ GetName() string }

// listOfFamily lists a page of a family's records of one collection,
// oldest recorded first (ids sort by creation), in one query: selectSQL
// reads the collection, scan builds a record under the family's name. An
// empty page of a family that does not exist is NOT_FOUND.
func listOfFamily[T named](ctx context.Context, s *Server, req pageRequest, collection, selectSQL string,
	scan func(fam string) pgx.RowToFunc[T]) ([]T, string, error) {
	c, err := parentFamily(ctx, req.GetParent())
	if err != nil {
		return nil, "", err
	}
	_, after, q, err := aip.ListArgs(collection, req.GetParent(), "", req.GetPageToken(), nil)
	if err != nil {
		return nil, "", err
	}
	size := aip.PageSize(req.GetPageSize())
	rows, err := s.pool.Query(ctx, selectSQL+` WHERE clinic = $1 AND family_id = $2 AND id > $3 ORDER BY id LIMIT $4`,
		c.clinic, c.family, after, size+1)
	if err != nil {
		return nil, "", fmt.Errorf("list %s: %w", collection, err)
	}
	items, err := pgx.CollectRows(rows, scan(c.familyName()))
	if err != nil {
		return nil, "", fmt.Errorf("list %s: %w", collection, err)
	}
	items, next := aip.Page(items, size, q, func(x T) string { return aip.ID(x.GetName()) })
	if err := s.emptyOfAFamily(ctx, len(items), c); err != nil {
		return nil, "", err
	}
	return items, next, nil
}
