package families

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/idempotency"
	"github.com/handoff-health/handoff/services/pgdb"
)

// boundarySelect reads boundaries with their histories in one statement,
// so that both are of one snapshot: read apart, a move committed between
// them showed a state its history had passed, or had not reached.
const boundarySelect = `SELECT id, category, wording, consequence, state, reinforcement_count, create_time, update_time, version,
	(SELECT coalesce(json_agg(json_build_object('from', e.from_state, 'to', e.to_state, 'actor', e.actor, 'reason', e.reason,
		'us', (extract(epoch FROM e.event_time) * 1000000)::bigint) ORDER BY e.seq), '[]')
	FROM boundary_events e WHERE e.clinic = boundaries.clinic AND e.family_id = boundaries.family_id AND e.boundary_id = boundaries.id)
	FROM boundaries`

// historyEvent is one boundary_events row as boundarySelect gives it.
type historyEvent struct {
	From   int16  `json:"from"`
	To     int16  `json:"to"`
	Actor  string `json:"actor"`
	Reason string `json:"reason"`
	Micros int64  `json:"us"`
}

func scanBoundary(fam string) pgx.RowToFunc[*familiesv1.Boundary] {
	return func(r pgx.CollectableRow) (*familiesv1.Boundary, error) {
		var (
			id, wording, consequence string
			category, state          int16
			count                    int32
			created, updated         time.Time
			version                  int64
			events                   []historyEvent
		)
		if err := r.Scan(&id, &category, &wording, &consequence, &state, &count, &created, &updated, &version, &events); err != nil {
			return nil, err
		}
		history := make([]*familiesv1.BoundaryEvent, 0, len(events))
		for _, e := range events {
			history = append(history, &familiesv1.BoundaryEvent{
				FromState: familiesv1.BoundaryState(e.From), ToState: familiesv1.BoundaryState(e.To),
				Actor: e.Actor, Reason: e.Reason, Time: timestamppb.New(time.UnixMicro(e.Micros)),
			})
		}
		return &familiesv1.Boundary{
			Name: aip.Name(fam, "boundaries", id), Category: familiesv1.BoundaryCategory(category),
			Wording: wording, Consequence: consequence, State: familiesv1.BoundaryState(state),
			ReinforcementCount: count, CreateTime: timestamppb.New(created), UpdateTime: timestamppb.New(updated),
			Etag: aip.Etag(version), History: history,
		}, nil
	}
}

// readBoundary reads one boundary with its history.
func readBoundary(ctx context.Context, q pgdb.Querier, c child, lock bool) (*familiesv1.Boundary, error) {
	sql := boundarySelect + ` WHERE clinic = $1 AND family_id = $2 AND id = $3`
	if lock {
		sql += ` FOR UPDATE`
	}
	rows, err := q.Query(ctx, sql, c.clinic, c.family, c.id)
	if err != nil {
		return nil, fmt.Errorf("read boundary: %w", err)
	}
	b, err := pgx.CollectExactlyOneRow(rows, scanBoundary(c.familyName()))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, apperr.NotFound(aip.Name(c.familyName(), "boundaries", c.id))
	}
	if err != nil {
		return nil, fmt.Errorf("read boundary: %w", err)
	}
	return b, nil
}

func newBoundary() *familiesv1.Boundary { return &familiesv1.Boundary{} }

// checkConsequence requires a stated consequence to state one: without it
// the boundary would be agreed and kept, yet never count as one a formal
// meeting can put to the loved one (boundaries.StatesConsequence).
func checkConsequence(vs *apperr.Violations, b *familiesv1.Boundary) {
	if b.GetCategory() == familiesv1.BoundaryCategory_BOUNDARY_CATEGORY_STATED_CONSEQUENCE && strings.TrimSpace(b.GetConsequence()) == "" {
		vs.Add("boundary.consequence", "is required for a stated consequence: what the family will do")
	}
}

// CreateBoundary implements the API.
func (s *Server) CreateBoundary(ctx context.Context, req *familiesv1.CreateBoundaryRequest) (*familiesv1.Boundary, error) {
	c, err := parentFamily(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	b := req.GetBoundary()
	var vs apperr.Violations
	if b.GetCategory() == familiesv1.BoundaryCategory_BOUNDARY_CATEGORY_UNSPECIFIED {
		vs.Add("boundary.category", "is required")
	}
	if strings.TrimSpace(b.GetWording()) == "" {
		vs.Add("boundary.wording", "is required: the boundary in the family's own words")
	}
	checkConsequence(&vs, b)
	if err := vs.Err(); err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.pool, c.clinic, svc+"CreateBoundary", req.GetRequestId(), req, newBoundary,
		func(tx pgx.Tx) (*familiesv1.Boundary, error) {
			if err := requireFamily(ctx, tx, c); err != nil {
				return nil, err
			}
			c.id = aip.NewID()
			now := s.cfg.Now()
			proposed := familiesv1.BoundaryState_BOUNDARY_STATE_PROPOSED
			if _, err := tx.Exec(ctx, `INSERT INTO boundaries (clinic, family_id, id, category, wording, consequence, state, create_time, update_time)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)`, c.clinic, c.family, c.id, int16(b.GetCategory()),
				b.GetWording(), b.GetConsequence(), int16(proposed), now); err != nil {
				return nil, fmt.Errorf("insert boundary: %w", err)
			}
			if err := addEvent(ctx, tx, c, familiesv1.BoundaryState_BOUNDARY_STATE_UNSPECIFIED, proposed, auth.Actor(ctx), "proposed", now); err != nil {
				return nil, err
			}
			out, err := readBoundary(ctx, tx, c, false)
			if err != nil {
				return nil, err
			}
			return out, emit(ctx, tx, c.clinic, "boundary.created", out.GetName(), out)
		})
}

func addEvent(ctx context.Context, tx pgx.Tx, c child, from, to familiesv1.BoundaryState, actor, reason string, at time.Time) error {
	if _, err := tx.Exec(ctx, `INSERT INTO boundary_events (clinic, family_id, boundary_id, from_state, to_state, actor, reason, event_time)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, c.clinic, c.family, c.id, int16(from), int16(to), actor, reason, at); err != nil {
		return fmt.Errorf("insert boundary event: %w", err)
	}
	return nil
}

// GetBoundary implements the API.
func (s *Server) GetBoundary(ctx context.Context, req *familiesv1.GetBoundaryRequest) (*familiesv1.Boundary, error) {
	c, err := authorizedChild(ctx, "name", req.GetName(), "boundaries")
	if err != nil {
		return nil, err
	}
	return readBoundary(ctx, s.pool, c, false)
}

var boundaryFilter = map[string]aip.FilterField{
	"state":    {Column: "state", Kind: aip.Enum, Enum: aip.EnumLookup(familiesv1.BoundaryState_value, "BOUNDARY_STATE_")},
	"category": {Column: "category", Kind: aip.Enum, Enum: aip.EnumLookup(familiesv1.BoundaryCategory_value, "BOUNDARY_CATEGORY_")},
}

// ListBoundaries implements the API.
func (s *Server) ListBoundaries(ctx context.Context, req *familiesv1.ListBoundariesRequest) (*familiesv1.ListBoundariesResponse, error) {
	c, err := parentFamily(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	items, next, err := pgdb.ListPage(ctx, s.pool, "boundaries", boundarySelect, `clinic = $1 AND family_id = $2`, []any{c.clinic, c.family},
		req, boundaryFilter, scanBoundary(c.familyName()), func(b *familiesv1.Boundary) string { return b.GetName() })
	if err != nil {
		return nil, err
	}
	if err := s.emptyOfAFamily(ctx, len(items), c); err != nil {
		return nil, err
	}
	for i, b := range items {
		items[i] = forWorker(ctx, b)
	}
	return &familiesv1.ListBoundariesResponse{Boundaries: items, NextPageToken: next}, nil
}

// withheldConsequence stands, for the worker, in a consequence stated.
const withheldConsequence = "[withheld]"

// forWorker is b as the worker is given it, or b itself for anyone else.
// Its workflows read a boundary's state and whether it states a
// consequence (boundaries.Held, StatesConsequence), nothing more; the
// family's own words, what they will do, and why staff moved it ("he broke
// the door when we refused money") stay with the staff, as the notes of
// barriers and warning signs do: the worker's token serves every clinic.
func forWorker(ctx context.Context, b *familiesv1.Boundary) *familiesv1.Boundary {
	if b == nil || familyView(ctx) != viewWorker {
		return b
	}
	b = proto.Clone(b).(*familiesv1.Boundary)
	b.Wording = ""
	if strings.TrimSpace(b.GetConsequence()) != "" {
		b.Consequence = withheldConsequence
	}
	for _, e := range b.GetHistory() {
		e.Actor, e.Reason = "", ""
	}
	return b
}

// UpdateBoundary implements the API.
func (s *Server) UpdateBoundary(ctx context.Context, req *familiesv1.UpdateBoundaryRequest) (*familiesv1.Boundary, error) {
	c, err := authorizedChild(ctx, "boundary.name", req.GetBoundary().GetName(), "boundaries")
	if err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.pool, c.clinic, svc+"UpdateBoundary", req.GetRequestId(), req, newBoundary,
		func(tx pgx.Tx) (*familiesv1.Boundary, error) {
			cur, err := readBoundary(ctx, tx, c, true)
			if err != nil {
				return nil, err
			}
			if err := aip.CheckEtag(cur.GetName(), req.GetBoundary().GetEtag(), cur.GetEtag()); err != nil {
				return nil, err
			}
			if cur.GetState() != familiesv1.BoundaryState_BOUNDARY_STATE_PROPOSED {
				return nil, apperr.FailedPrecondition(apperr.ReasonInvalidTransition,
					fmt.Sprintf("%s is %s: only a proposed boundary can be reworded; propose a new one instead", cur.GetName(), cur.GetState()),
					map[string]string{"resource": cur.GetName(), "state": cur.GetState().String()})
			}
			next := proto.Clone(cur).(*familiesv1.Boundary)
			if err := aip.ApplyMask(next, req.GetBoundary(), req.GetUpdateMask().GetPaths(), []string{"wording", "consequence"}); err != nil {
				return nil, apperr.Field("update_mask", "%v", err)
			}
			if strings.TrimSpace(next.GetWording()) == "" {
				return nil, apperr.Field("boundary.wording", "is required")
			}
			var vs apperr.Violations
			checkConsequence(&vs, next)
			if err := vs.Err(); err != nil {
				return nil, err
			}
			if _, err := tx.Exec(ctx, `UPDATE boundaries SET wording = $4, consequence = $5, update_time = $6, version = version + 1
				WHERE clinic = $1 AND family_id = $2 AND id = $3`, c.clinic, c.family, c.id, next.GetWording(), next.GetConsequence(), s.cfg.Now()); err != nil {
				return nil, fmt.Errorf("update boundary: %w", err)
			}
			out, err := readBoundary(ctx, tx, c, false)
			if err != nil {
				return nil, err
			}
			return out, emit(ctx, tx, c.clinic, "boundary.updated", out.GetName(), out)
		})
}

// transition is one boundary verb: the states it leaves from and the state it
// reaches.
type transition struct {
	verb string
	from []familiesv1.BoundaryState
	to   familiesv1.BoundaryState
}

var (
	agree = transition{"agree", []familiesv1.BoundaryState{familiesv1.BoundaryState_BOUNDARY_STATE_PROPOSED},
		familiesv1.BoundaryState_BOUNDARY_STATE_AGREED}
	activate = transition{"activate", []familiesv1.BoundaryState{familiesv1.BoundaryState_BOUNDARY_STATE_AGREED},
		familiesv1.BoundaryState_BOUNDARY_STATE_ACTIVE}
	reinforce = transition{"reinforce", []familiesv1.BoundaryState{familiesv1.BoundaryState_BOUNDARY_STATE_ACTIVE,
		familiesv1.BoundaryState_BOUNDARY_STATE_REINFORCED}, familiesv1.BoundaryState_BOUNDARY_STATE_REINFORCED}
	retire = transition{"retire", []familiesv1.BoundaryState{familiesv1.BoundaryState_BOUNDARY_STATE_PROPOSED,
		familiesv1.BoundaryState_BOUNDARY_STATE_AGREED, familiesv1.BoundaryState_BOUNDARY_STATE_ACTIVE,
		familiesv1.BoundaryState_BOUNDARY_STATE_REINFORCED}, familiesv1.BoundaryState_BOUNDARY_STATE_RETIRED}
)

// AgreeBoundary implements the API.
func (s *Server) AgreeBoundary(ctx context.Context, req *familiesv1.TransitionBoundaryRequest) (*familiesv1.Boundary, error) {
	return s.transition(ctx, req, agree)
}

// ActivateBoundary implements the API.
func (s *Server) ActivateBoundary(ctx context.Context, req *familiesv1.TransitionBoundaryRequest) (*familiesv1.Boundary, error) {
	return s.transition(ctx, req, activate)
}

// ReinforceBoundary implements the API.
func (s *Server) ReinforceBoundary(ctx context.Context, req *familiesv1.TransitionBoundaryRequest) (*familiesv1.Boundary, error) {
	out, err := s.transition(ctx, req, reinforce)
	if err != nil {
		return nil, err
	}
	return forWorker(ctx, out), nil
}

// RetireBoundary implements the API.
func (s *Server) RetireBoundary(ctx context.Context, req *familiesv1.TransitionBoundaryRequest) (*familiesv1.Boundary, error) {
	return s.transition(ctx, req, retire)
}

func (s *Server) transition(ctx context.Context, req *familiesv1.TransitionBoundaryRequest, t transition) (*familiesv1.Boundary, error) {
	c, err := authorizedChild(ctx, "name", req.GetName(), "boundaries")
	if err != nil {
		return nil, err
	}
	method := svc + strings.ToUpper(t.verb[:1]) + t.verb[1:] + "Boundary"
	return idempotency.InTx(ctx, s.pool, c.clinic, method, req.GetRequestId(), req, newBoundary,
		func(tx pgx.Tx) (*familiesv1.Boundary, error) {
			screened := t.verb == activate.verb || t.verb == reinforce.verb
			if screened {
				// The family first, as every change of a family's records
				// takes it, and in a mode that waits for a safety screen
				// being recorded (which holds it FOR NO KEY UPDATE): the check
				// below must see that screen, not the one before it.
				if err := lockFamilyRow(ctx, tx, c, "FOR NO KEY UPDATE"); err != nil {
					return nil, err
				}
			}
			cur, err := readBoundary(ctx, tx, c, true)
			if err != nil {
				return nil, err
			}
			if err := aip.CheckEtag(cur.GetName(), req.GetEtag(), cur.GetEtag()); err != nil {
				return nil, err
			}
			legal := false
			for _, f := range t.from {
				legal = legal || cur.GetState() == f
			}
			if !legal {
				return nil, apperr.InvalidTransition(cur.GetName(), cur.GetState().String(), t.to.String())
			}
			if screened {
				// Reinforcing is a boundary step too: a screen that found
				// risk after the boundary became active stops it.
				if err := s.requireSafeScreen(ctx, tx, c); err != nil {
					return nil, err
				}
			}
			now := s.cfg.Now()
			count := "reinforcement_count"
			if t.verb == "reinforce" {
				count += " + 1"
			}
			if _, err := tx.Exec(ctx, `UPDATE boundaries SET state = $4, reinforcement_count = `+count+`,
				update_time = $5, version = version + 1 WHERE clinic = $1 AND family_id = $2 AND id = $3`,
				c.clinic, c.family, c.id, int16(t.to), now); err != nil {
				return nil, fmt.Errorf("%s boundary: %w", t.verb, err)
			}
			reason := req.GetReason()
			if reason == "" {
				reason = t.verb
			}
			if err := addEvent(ctx, tx, c, cur.GetState(), t.to, auth.Actor(ctx), reason, now); err != nil {
				return nil, err
			}
			out, err := readBoundary(ctx, tx, c, false)
			if err != nil {
				return nil, err
			}
			return out, emit(ctx, tx, c.clinic, "boundary."+t.verb+"d", out.GetName(), out)
		})
}

// requireSafeScreen refuses boundary activation and reinforcement without
// a current safety screen, or with a high-risk one: boundaries can escalate
// danger at home. A family whose case was closed takes no boundary step
// either: the clinic no longer works with it, and the follow-up that asks
// may have read the family before it closed. Nor one whose loved one is in
// treatment: boundaries answer a refusal, and the follow-up may have read
// the family before staff recorded the entry (its cancel comes through the
// outbox, later).
func (s *Server) requireSafeScreen(ctx context.Context, tx pgx.Tx, c child) error {
	fam, err := s.readFamily(ctx, tx, c.clinic, c.family)
	if err != nil {
		return err
	}
	if fam.GetState() == familiesv1.FamilyState_FAMILY_STATE_CLOSED {
		return apperr.FailedPrecondition(apperr.ReasonFamilyClosed, fam.GetName()+"'s case is closed: reopen it before a boundary step",
			map[string]string{"family": fam.GetName()})
	}
	if fam.GetState() == familiesv1.FamilyState_FAMILY_STATE_ENGAGED_IN_TREATMENT {
		return apperr.FailedPrecondition(apperr.ReasonFamilyInTreatment, fam.GetName()+
			"'s loved one is in treatment: boundaries answer a refusal (set the family ACTIVE again if they leave treatment)",
			map[string]string{"family": fam.GetName()})
	}
	st := fam.GetSafetyScreenStatus()
	if st == familiesv1.SafetyScreenStatus_SAFETY_SCREEN_STATUS_CURRENT {
		return nil
	}
	return apperr.FailedPrecondition(apperr.ReasonSafetyScreen,
		fmt.Sprintf("%s needs a current safety screen that is not high risk before a boundary step (status: %s)", fam.GetName(), st),
		map[string]string{"family": fam.GetName(), "safety_screen_status": st.String()})
}
