package families

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/idempotency"
	"github.com/handoff-health/handoff/services/pgdb"
)

// craftOrder is the order in which CRAFT teaches its topics; the enum's
// numbers follow it.
var craftOrder = []familiesv1.CraftTopic{
	familiesv1.CraftTopic_CRAFT_TOPIC_INDUCTION,
	familiesv1.CraftTopic_CRAFT_TOPIC_FUNCTIONAL_ANALYSIS,
	familiesv1.CraftTopic_CRAFT_TOPIC_POSITIVE_COMMUNICATION,
	familiesv1.CraftTopic_CRAFT_TOPIC_REWARDING_NON_USE,
	familiesv1.CraftTopic_CRAFT_TOPIC_NATURAL_CONSEQUENCES,
	familiesv1.CraftTopic_CRAFT_TOPIC_SELF_CARE,
	familiesv1.CraftTopic_CRAFT_TOPIC_TREATMENT_ENTRY,
}

// craftSafety says whether topics may be taught to a family whose safety
// screen has status st. CRAFT screens for domestic violence right after
// induction, so nothing past induction is taught without a screen that
// counts; letting consequences fall on the loved one can provoke them, so
// it also waits out a high risk, as boundary steps do.
func craftSafety(topics []familiesv1.CraftTopic, st familiesv1.SafetyScreenStatus) (familiesv1.CraftTopic, bool) {
	for _, t := range topics {
		switch {
		case t == familiesv1.CraftTopic_CRAFT_TOPIC_INDUCTION:
		case st == familiesv1.SafetyScreenStatus_SAFETY_SCREEN_STATUS_CURRENT:
		case st == familiesv1.SafetyScreenStatus_SAFETY_SCREEN_STATUS_HIGH_RISK &&
			t != familiesv1.CraftTopic_CRAFT_TOPIC_NATURAL_CONSEQUENCES:
		default:
			return t, false
		}
	}
	return 0, true
}

// screenStatusAsOf is the family's safety screen status when a session was
// held, at: from the screens done by then, ranked as LatestScreen ranks
// them (a high risk entered late still counts), aged at at. For a
// session recorded later than it was held (CreateCraftSession), judged
// on what was known when it was held, not on a screen done since.
func (s *Server) screenStatusAsOf(ctx context.Context, tx pgx.Tx, c child, at time.Time) (familiesv1.SafetyScreenStatus, error) {
	var (
		result int16
		counts time.Time
	)
	err := tx.QueryRow(ctx, `SELECT result, counts_from FROM (
			SELECT s.id, s.result, `+screenCountsFrom+` AS counts_from
			FROM safety_screens s WHERE s.clinic = $1 AND s.family_id = $2 AND s.screen_time <= $3) s
		ORDER BY counts_from DESC, id DESC LIMIT 1`, c.clinic, c.family, at).Scan(&result, &counts)
	if errors.Is(err, pgx.ErrNoRows) {
		return familiesv1.SafetyScreenStatus_SAFETY_SCREEN_STATUS_MISSING, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read the safety screen of the session's time: %w", err)
	}
	return s.screenStatusAt(at, counts, familiesv1.SafetyRisk(result)), nil
}

const craftSelect = `SELECT id, member_ids, topics, notes, counselor, session_time, create_time, r.retract_time, r.retracted_by, r.reason
	FROM craft_sessions LEFT JOIN LATERAL (SELECT retract_time, retracted_by, reason FROM craft_session_retractions r
		WHERE r.clinic = craft_sessions.clinic AND r.family_id = craft_sessions.family_id AND r.session_id = craft_sessions.id) r ON true`

func scanCraft(fam string) pgx.RowToFunc[*familiesv1.CraftSession] {
	return func(r pgx.CollectableRow) (*familiesv1.CraftSession, error) {
		var (
			id, notes, by     string
			members           []string
			topics            []int16
			held, recorded    time.Time
			retracted         *time.Time
			retractBy, reason *string
		)
		if err := r.Scan(&id, &members, &topics, &notes, &by, &held, &recorded, &retracted, &retractBy, &reason); err != nil {
			return nil, err
		}
		out := &familiesv1.CraftSession{
			Name: aip.Name(fam, "craftSessions", id), MemberIds: members, Notes: notes, Counselor: by,
			SessionTime: timestamppb.New(held), CreateTime: timestamppb.New(recorded),
		}
		if retracted != nil {
			out.RetractTime, out.RetractedBy, out.RetractReason = timestamppb.New(*retracted), *retractBy, *reason
		}
		for _, t := range topics {
			out.Topics = append(out.Topics, familiesv1.CraftTopic(t))
		}
		return out, nil
	}
}

// CreateCraftSession implements the API.
func (s *Server) CreateCraftSession(ctx context.Context, req *familiesv1.CreateCraftSessionRequest) (*familiesv1.CraftSession, error) {
	c, err := parentFamily(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	cs := req.GetCraftSession()
	now := s.cfg.Now()
	var vs apperr.Violations
	if len(cs.GetMemberIds()) == 0 {
		vs.Add("craft_session.member_ids", "is required: the members who took part")
	}
	if len(cs.GetTopics()) == 0 {
		vs.Add("craft_session.topics", "is required: the topics the session covered")
	}
	at := pastTime(&vs, "craft_session.session_time", cs.GetSessionTime(), now)
	if err := vs.Err(); err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.pool, c.clinic, svc+"CreateCraftSession", req.GetRequestId(), req,
		func() *familiesv1.CraftSession { return &familiesv1.CraftSession{} },
		func(tx pgx.Tx) (*familiesv1.CraftSession, error) {
			// Shared: a screen recorded meanwhile waits, so the session is
			// judged on the screens as they stand. Two statements, not one
			// read FOR SHARE: a statement that waited on the lock would
			// still see the screens of its snapshot from before the wait.
			if err := requireFamily(ctx, tx, c); err != nil {
				return nil, err
			}
			fam, err := s.readFamily(ctx, tx, c.clinic, c.family)
			if err != nil {
				return nil, err
			}
			// A session is judged on the screens done by its time; one
			// recorded as it happens also on the family's current status,
			// read under the family's lock, so that a screen committed
			// just before counts whatever its clocks say.
			then, err := s.screenStatusAsOf(ctx, tx, c, at)
			if err != nil {
				return nil, err
			}
			st := then
			if now.Sub(at) <= clockSkew {
				// Both must allow it: the status now (a high risk just
				// recorded by a clock ahead) and the status then (a high
				// risk when it was taught, cleared by a screen since).
				if _, ok := craftSafety(cs.GetTopics(), fam.GetSafetyScreenStatus()); !ok {
					st = fam.GetSafetyScreenStatus()
				}
			}
			members := map[string]bool{}
			for _, m := range fam.GetMembers() {
				members[m.GetId()] = true
			}
			for i, id := range cs.GetMemberIds() {
				if !members[id] {
					vs.Add(fmt.Sprintf("craft_session.member_ids[%d]", i), "names no member of %s", fam.GetName())
				}
			}
			if err := vs.Err(); err != nil {
				return nil, err
			}
			if t, ok := craftSafety(cs.GetTopics(), st); !ok {
				need := "a current safety screen"
				if st == familiesv1.SafetyScreenStatus_SAFETY_SCREEN_STATUS_HIGH_RISK {
					need = "a current safety screen that is not high risk"
				}
				return nil, apperr.FailedPrecondition(apperr.ReasonSafetyScreen,
					fmt.Sprintf("%s needed %s when the session was held, before %s is taught (status then: %s)", fam.GetName(), need, t, st),
					map[string]string{"family": fam.GetName(), "safety_screen_status": st.String(), "topic": t.String()})
			}
			topics := make([]int16, len(cs.GetTopics()))
			for i, t := range cs.GetTopics() {
				topics[i] = int16(t)
			}
			c.id = aip.NewID()
			if _, err := tx.Exec(ctx, `INSERT INTO craft_sessions (clinic, family_id, id, member_ids, topics, notes, counselor, session_time, create_time)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`, c.clinic, c.family, c.id, cs.GetMemberIds(), topics,
				cs.GetNotes(), auth.Actor(ctx), at, now); err != nil {
				return nil, fmt.Errorf("insert craft session: %w", err)
			}
			out, err := readCraft(ctx, tx, c)
			if err != nil {
				return nil, err
			}
			return out, emit(ctx, tx, c.clinic, "craft_session.created", out.GetName(), out)
		})
}

func readCraft(ctx context.Context, q pgdb.Querier, c child) (*familiesv1.CraftSession, error) {
	rows, err := q.Query(ctx, craftSelect+` WHERE clinic = $1 AND family_id = $2 AND id = $3`, c.clinic, c.family, c.id)
	return pgdb.One(rows, err, aip.Name(c.familyName(), "craftSessions", c.id), scanCraft(c.familyName()))
}

// GetCraftSession implements the API.
func (s *Server) GetCraftSession(ctx context.Context, req *familiesv1.GetCraftSessionRequest) (*familiesv1.CraftSession, error) {
	c, err := authorizedChild(ctx, "name", req.GetName(), "craftSessions")
	if err != nil {
		return nil, err
	}
	return readCraft(ctx, s.pool, c)
}

// RetractCraftSession implements the API.
func (s *Server) RetractCraftSession(ctx context.Context, req *familiesv1.RetractCraftSessionRequest) (*familiesv1.CraftSession, error) {
	c, err := authorizedChild(ctx, "name", req.GetName(), "craftSessions")
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(req.GetReason()) == "" {
		return nil, apperr.Field("reason", "is required: say why the session was recorded in error")
	}
	return idempotency.InTx(ctx, s.pool, c.clinic, svc+"RetractCraftSession", req.GetRequestId(), req,
		func() *familiesv1.CraftSession { return &familiesv1.CraftSession{} },
		func(tx pgx.Tx) (*familiesv1.CraftSession, error) {
			// The insert is the check: a second retraction meets the
			// first's key, even when both are under way at once. Its key
			// refers to the session, so a family deleted meanwhile waits
			// for it or takes it along.
			now := s.cfg.Now().Truncate(time.Microsecond)
			tag, err := tx.Exec(ctx, `INSERT INTO craft_session_retractions (clinic, family_id, session_id, reason, retracted_by, retract_time)
				SELECT clinic, family_id, id, $4, $5, $6 FROM craft_sessions WHERE clinic = $1 AND family_id = $2 AND id = $3
				ON CONFLICT DO NOTHING`, c.clinic, c.family, c.id, req.GetReason(), auth.Actor(ctx), now)
			if err != nil {
				return nil, fmt.Errorf("retract craft session: %w", err)
			}
			out, err := readCraft(ctx, tx, c)
			if err != nil {
				return nil, err
			}
			if tag.RowsAffected() == 0 {
				return nil, apperr.InvalidTransition(out.GetName(), "RETRACTED", "RETRACTED")
			}
			return out, emit(ctx, tx, c.clinic, "craft_session.retracted", out.GetName(), out)
		})
}

// ListCraftSessions implements the API.
func (s *Server) ListCraftSessions(ctx context.Context, req *familiesv1.ListCraftSessionsRequest) (*familiesv1.ListCraftSessionsResponse, error) {
	items, next, err := listOfFamily(ctx, s, req, "craft sessions", craftSelect, scanCraft)
	if err != nil {
		return nil, err
	}
	return &familiesv1.ListCraftSessionsResponse{CraftSessions: items, NextPageToken: next}, nil
}

// GetCraftProgress implements the API. It is computed in one statement
// over the family's sessions that stand (not retracted), so it always
// agrees with them.
func (s *Server) GetCraftProgress(ctx context.Context, req *familiesv1.GetCraftProgressRequest) (*familiesv1.CraftProgress, error) {
	fam, ok := strings.CutSuffix(req.GetName(), "/craftProgress")
	if _, _, err := parseFamily(fam); !ok || err != nil {
		return nil, apperr.Field("name", "want clinics/{clinic}/families/{family}/craftProgress")
	}
	c, err := parentFamily(ctx, fam)
	if err != nil {
		return nil, err
	}
	var (
		n             int32
		first, last   *time.Time
		topics        []int16
		members       []string
		familyPresent bool
	)
	err = s.pool.QueryRow(ctx, `WITH held AS (
			SELECT cs.* FROM craft_sessions cs WHERE cs.clinic = $1 AND cs.family_id = $2
			AND NOT EXISTS (SELECT 1 FROM craft_session_retractions r
				WHERE r.clinic = cs.clinic AND r.family_id = cs.family_id AND r.session_id = cs.id))
		SELECT EXISTS (SELECT 1 FROM families WHERE clinic = $1 AND id = $2),
			(SELECT count(*)::int FROM held), (SELECT min(session_time) FROM held), (SELECT max(session_time) FROM held),
			COALESCE((SELECT array_agg(DISTINCT t ORDER BY t) FROM held, unnest(held.topics) t), '{}'),
			COALESCE((SELECT array_agg(DISTINCT m COLLATE "C" ORDER BY m COLLATE "C") FROM held, unnest(held.member_ids) m), '{}')`,
		c.clinic, c.family).
		Scan(&familyPresent, &n, &first, &last, &topics, &members)
	if err != nil {
		return nil, fmt.Errorf("read craft progress: %w", err)
	}
	if !familyPresent {
		return nil, apperr.NotFound(c.familyName())
	}
	out := &familiesv1.CraftProgress{Name: c.familyName() + "/craftProgress", SessionCount: n, MemberIds: members}
	if first != nil {
		out.FirstSessionTime, out.LastSessionTime = timestamppb.New(*first), timestamppb.New(*last)
	}
	covered := map[familiesv1.CraftTopic]bool{}
	for _, t := range topics {
		covered[familiesv1.CraftTopic(t)] = true
	}
	for _, t := range craftOrder {
		if covered[t] {
			out.CoveredTopics = append(out.CoveredTopics, t)
		} else if out.NextTopic == familiesv1.CraftTopic_CRAFT_TOPIC_UNSPECIFIED {
			out.NextTopic = t
		}
	}
	// A topic this version does not know (from a newer replica) is still
	// shown as covered, after the known ones.
	for _, t := range topics {
		if ct := familiesv1.CraftTopic(t); !slices.Contains(craftOrder, ct) {
			out.CoveredTopics = append(out.CoveredTopics, ct)
		}
	}
	return out, nil
}
