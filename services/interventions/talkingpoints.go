package interventions

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/idempotency"
	"github.com/handoff-health/handoff/services/pgdb"
)

// Built-in talking points have clinic ” in the table and appear under every
// clinic's name.
const tpSelect = `SELECT id, barrier_kind, prompt, fact, source, clinic = '', create_time, version FROM talking_points`

func scanTP(clinic string) pgx.RowToFunc[*interventionsv1.TalkingPoint] {
	return func(r pgx.CollectableRow) (*interventionsv1.TalkingPoint, error) {
		var (
			id, prompt, fact, source string
			kind                     int16
			builtIn                  bool
			created                  time.Time
			version                  int64
		)
		if err := r.Scan(&id, &kind, &prompt, &fact, &source, &builtIn, &created, &version); err != nil {
			return nil, err
		}
		return &interventionsv1.TalkingPoint{Name: aip.Name("clinics", clinic, "talkingPoints", id),
			BarrierKind: interventionsv1.BarrierKind(kind), Prompt: prompt, Fact: fact, Source: source, BuiltIn: builtIn,
			CreateTime: timestamppb.New(created), Etag: aip.Etag(version)}, nil
	}
}

func newTP() *interventionsv1.TalkingPoint { return &interventionsv1.TalkingPoint{} }

// CreateTalkingPoint implements the API.
func (s *Server) CreateTalkingPoint(ctx context.Context, req *interventionsv1.CreateTalkingPointRequest) (*interventionsv1.TalkingPoint, error) {
	clinic, err := parentClinic(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	tp := req.GetTalkingPoint()
	var vs apperr.Violations
	if tp.GetBarrierKind() == interventionsv1.BarrierKind_BARRIER_KIND_UNSPECIFIED {
		vs.Add("talking_point.barrier_kind", "is required")
	}
	if strings.TrimSpace(tp.GetPrompt()) == "" {
		vs.Add("talking_point.prompt", "is required")
	}
	if tp.GetFact() != "" && strings.TrimSpace(tp.GetSource()) == "" {
		vs.Add("talking_point.source", "is required with a fact: say where the fact comes from")
	}
	if err := vs.Err(); err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.pool, clinic, svc+"CreateTalkingPoint", req.GetRequestId(), req, newTP,
		func(tx pgx.Tx) (*interventionsv1.TalkingPoint, error) {
			id := aip.NewID()
			// The audit record names the point, and goes with its insert.
			pgdb.StampNames(tx, aip.Name("clinics", clinic, "talkingPoints", id))
			if _, err := tx.Exec(ctx, `INSERT INTO talking_points (clinic, id, barrier_kind, prompt, fact, source, create_time)
				VALUES ($1, $2, $3, $4, $5, $6, $7)`, clinic, id, int16(tp.GetBarrierKind()), tp.GetPrompt(), tp.GetFact(),
				tp.GetSource(), s.cfg.Now()); err != nil {
				return nil, fmt.Errorf("insert talking point: %w", err)
			}
			rows, err := tx.Query(ctx, tpSelect+` WHERE clinic = $1 AND id = $2`, clinic, id)
			return pgdb.One(rows, err, "talking point", scanTP(clinic))
		})
}

var tpFilter = map[string]aip.FilterField{
	"barrier_kind": {Column: "barrier_kind", Kind: aip.Enum, Enum: aip.EnumLookup(interventionsv1.BarrierKind_value, "BARRIER_KIND_")},
}

// ListTalkingPoints implements the API: built-in points and the clinic's own.
func (s *Server) ListTalkingPoints(ctx context.Context, req *interventionsv1.ListTalkingPointsRequest) (*interventionsv1.ListTalkingPointsResponse, error) {
	clinic, err := parentClinic(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	items, next, err := pgdb.ListPage(ctx, s.pool, "talking points", tpSelect, `clinic IN ($1, '')`, []any{clinic},
		req, tpFilter, scanTP(clinic), func(tp *interventionsv1.TalkingPoint) string { return tp.GetName() })
	if err != nil {
		return nil, err
	}
	return &interventionsv1.ListTalkingPointsResponse{TalkingPoints: items, NextPageToken: next}, nil
}

// DeleteTalkingPoint implements the API. Built-in points stay.
func (s *Server) DeleteTalkingPoint(ctx context.Context, req *interventionsv1.DeleteTalkingPointRequest) (*emptypb.Empty, error) {
	r, err := authorized(ctx, "name", req.GetName(), "talkingPoints")
	if err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.pool, r.clinic, svc+"DeleteTalkingPoint", req.GetRequestId(), req,
		func() *emptypb.Empty { return &emptypb.Empty{} },
		func(tx pgx.Tx) (*emptypb.Empty, error) {
			rows, err := tx.Query(ctx, tpSelect+` WHERE clinic IN ($1, '') AND id = $2`, r.clinic, r.id)
			tp, err := pgdb.One(rows, err, req.GetName(), scanTP(r.clinic))
			if err != nil {
				return nil, err
			}
			if tp.GetBuiltIn() {
				return nil, apperr.FailedPrecondition("BUILT_IN", req.GetName()+" ships with Handoff and cannot be deleted",
					map[string]string{"resource": req.GetName()})
			}
			if err := aip.CheckEtag(req.GetName(), req.GetEtag(), tp.GetEtag()); err != nil {
				return nil, err
			}
			// The version in the condition makes two racing deletes one delete
			// and one NOT_FOUND.
			v, _ := aip.ParseEtag(tp.GetEtag())
			tag, err := tx.Exec(ctx, `DELETE FROM talking_points WHERE clinic = $1 AND id = $2 AND version = $3`, r.clinic, r.id, v)
			if err != nil {
				return nil, fmt.Errorf("delete talking point: %w", err)
			}
			if tag.RowsAffected() == 0 {
				return nil, apperr.NotFound(req.GetName())
			}
			return &emptypb.Empty{}, nil
		})
}

// GetTalkingPoints implements the API: for each barrier the family still
// faces, the talking points for its kind.
func (s *Server) GetTalkingPoints(ctx context.Context, req *interventionsv1.GetTalkingPointsRequest) (*interventionsv1.GetTalkingPointsResponse, error) {
	r, err := authorized(ctx, "name", req.GetName(), "interventions")
	if err != nil {
		return nil, err
	}
	iv, err := readIntervention(ctx, s.pool, r, false)
	if err != nil {
		return nil, err
	}
	var kinds []int16
	seen := map[familiesv1.BarrierKind]bool{}
	token := ""
	for {
		page, err := s.cfg.Families.ListBarriers(ctx, &familiesv1.ListBarriersRequest{Parent: iv.GetFamily(),
			Filter: "resolved = false", PageSize: 1000, PageToken: token})
		if err != nil {
			return nil, fmt.Errorf("list barriers: %w", err)
		}
		for _, b := range page.GetBarriers() {
			if !seen[b.GetKind()] {
				seen[b.GetKind()] = true
				kinds = append(kinds, int16(b.GetKind())) // the two BarrierKind enums share numbers
			}
		}
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	rows, err := s.pool.Query(ctx, tpSelect+` WHERE clinic IN ($1, '') AND barrier_kind = ANY($2) ORDER BY barrier_kind, clinic, id`, r.clinic, kinds)
	if err != nil {
		return nil, fmt.Errorf("read talking points: %w", err)
	}
	tps, err := pgx.CollectRows(rows, scanTP(r.clinic))
	if err != nil {
		return nil, fmt.Errorf("read talking points: %w", err)
	}
	// One entry per kind, in the order the family's barriers were first
	// recorded (the query sorts by kind number, which means nothing to a
	// counselor), even a kind the clinic has no talking point for.
	resp := &interventionsv1.GetTalkingPointsResponse{}
	byKind := map[interventionsv1.BarrierKind]*interventionsv1.BarrierTalkingPoints{}
	for _, k := range kinds {
		e := &interventionsv1.BarrierTalkingPoints{BarrierKind: interventionsv1.BarrierKind(k)}
		byKind[e.GetBarrierKind()] = e
		resp.Barriers = append(resp.Barriers, e)
	}
	for _, tp := range tps {
		if e := byKind[tp.GetBarrierKind()]; e != nil {
			e.TalkingPoints = append(e.TalkingPoints, tp)
		}
	}
	return resp, nil
}
