// Package families is the families service: the care circle around a loved
// one who refuses treatment, with barriers, warning signs, safety screens and
// boundaries. It owns the PostgreSQL schema "families"; everyone else reaches
// its data through its gRPC API.
package families

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"maps"
	"net/mail"
	"regexp"
	"slices"
	"strings"
	"time"
	_ "time/tzdata" // time zones must resolve on minimal images too

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/consentgate"
	"github.com/handoff-health/handoff/services/idempotency"
	"github.com/handoff-health/handoff/services/outbox"
	"github.com/handoff-health/handoff/services/pgdb"
)

// Schema is the PostgreSQL schema the service owns.
const Schema = "families"

//go:embed migrations/*.sql
var migrations embed.FS

// Migrations are the service's migrations, shared tables first.
func Migrations() []pgdb.Source {
	return []pgdb.Source{
		{Name: "common", FS: pgdb.Common, Dir: "common"},
		{Name: "families", FS: migrations, Dir: "migrations"},
	}
}

// Config tunes the service.
type Config struct {
	// MaxSafetyScreenAge is how old a safety screen may be before it counts
	// as missing. Default 90 days.
	MaxSafetyScreenAge time.Duration
	// Now is the clock; tests replace it.
	Now func() time.Time
}

// Server implements familiesv1.FamiliesServiceServer.
type Server struct {
	familiesv1.UnimplementedFamiliesServiceServer
	pool *pgdb.DB
	cfg  Config
}

// New returns a server over pool, whose search path is the service's schema.
// New returns a server whose queries run through db, as the application
// role and scoped to the caller's clinic.
func New(pool *pgdb.DB, cfg Config) *Server {
	if cfg.MaxSafetyScreenAge == 0 {
		cfg.MaxSafetyScreenAge = 90 * 24 * time.Hour
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Server{pool: pool, cfg: cfg}
}

const svc = "/handoff.families.v1.FamiliesService/"

// unseenChange sets a family row's version and update time ($3) for a
// change outside systems do not see (urgency, screens, entering
// treatment): their view keeps its own version and update time
// (migration 0003), so that its etag reveals nothing of the change.
const unseenChange = `update_time = greatest($3, update_time + interval '1 microsecond'), version = version + 1,
	shared_version = COALESCE(shared_version, version), shared_update_time = COALESCE(shared_update_time, update_time),
	shared_checked = version + 1`

// familyDoc holds the client-owned nested fields stored as JSON.
var docJSON = protojson.MarshalOptions{UseProtoNames: true}

func parseFamily(name string) (clinic, family string, err error) {
	ids, err := aip.Parse(name, "clinics", "families")
	if err != nil {
		return "", "", apperr.Field("name", "%v", err)
	}
	return ids[0], ids[1], nil
}

func parseClinic(parent string) (string, error) {
	ids, err := aip.Parse(parent, "clinics")
	if err != nil {
		return "", apperr.Field("parent", "%v", err)
	}
	return ids[0], nil
}

func familyName(clinic, id string) string { return aip.Name("clinics", clinic, "families", id) }

// CreateFamily implements the API.
func (s *Server) CreateFamily(ctx context.Context, req *familiesv1.CreateFamilyRequest) (*familiesv1.Family, error) {
	clinic, err := parseClinic(req.GetParent())
	if err != nil {
		return nil, err
	}
	if err := auth.CheckClinic(ctx, clinic, req.GetParent()); err != nil {
		return nil, err
	}
	f := proto.Clone(req.GetFamily()).(*familiesv1.Family)
	var vs apperr.Violations
	checkFamily(&vs, "family", f, true, nil, s.cfg.Now())
	checkCoverage(&vs, "family", f)
	if f.GetState() == familiesv1.FamilyState_FAMILY_STATE_CLOSED {
		// Closing is announced (family.closed) on an update only, for the
		// worker to stop what runs; a family made closed is a mistake.
		vs.Add("family.state", "a family is created ACTIVE (or ENGAGED_IN_TREATMENT); close it when the clinic stops working with it")
	}
	now := s.cfg.Now()
	if f.GetFirstContactTime() != nil && f.GetFirstContactTime().AsTime().After(now.Add(clockSkew)) {
		// Days to treatment count from it, and it cannot be changed later.
		vs.Add("family.first_contact_time", "must not be in the future")
	} else if f.GetFirstContactTime() != nil {
		tooEarly(&vs, "family.first_contact_time", f.GetFirstContactTime().AsTime())
	}
	if err := vs.Err(); err != nil {
		return nil, err
	}
	assignMemberIDs(f)
	if f.GetFirstContactTime() == nil || f.GetFirstContactTime().AsTime().After(now) {
		// A time up to clockSkew ahead (another clock) counts from now,
		// as the family's other reported times do: it cannot be changed
		// later, and stored ahead it would come after the family itself.
		f.FirstContactTime = timestamppb.New(now)
	}
	state := f.GetState()
	if state == familiesv1.FamilyState_FAMILY_STATE_UNSPECIFIED {
		state = familiesv1.FamilyState_FAMILY_STATE_ACTIVE
	}
	return idempotency.InTx(ctx, s.pool, clinic, svc+"CreateFamily", req.GetRequestId(), req, newFamily,
		func(tx pgx.Tx) (*familiesv1.Family, error) {
			id := aip.NewID()
			doc, err := encodeDoc(f)
			if err != nil {
				return nil, err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO families (clinic, id, doc, counselor, state, first_contact_time, create_time, update_time)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $7)`,
				clinic, id, doc, f.GetCounselor(), int16(state), f.GetFirstContactTime().AsTime(), now); err != nil {
				return nil, fmt.Errorf("insert family: %w", err)
			}
			out, err := s.readFamily(ctx, tx, clinic, id)
			if err != nil {
				return nil, err
			}
			return out, emit(ctx, tx, clinic, "family.created", out.GetName(), out)
		})
}

// GetFamily implements the API.
func (s *Server) GetFamily(ctx context.Context, req *familiesv1.GetFamilyRequest) (*familiesv1.Family, error) {
	clinic, id, err := parseFamily(req.GetName())
	if err != nil {
		return nil, err
	}
	if err := auth.CheckClinic(ctx, clinic, req.GetName()); err != nil {
		return nil, err
	}
	f, err := s.readFamily(ctx, s.pool, clinic, id)
	if err != nil {
		return nil, consentgate.Unseen(ctx, req.GetName(), err)
	}
	// An outside system's read is a disclosure: consent first.
	if err := s.discloseToCaller(ctx, child{clinic: clinic, family: id}, familiesv1.InformationKind_INFORMATION_KIND_IDENTITY, f.GetName()); err != nil {
		return nil, err
	}
	return familyForCaller(ctx, f), nil
}

var familyFilter = map[string]aip.FilterField{
	"state":     {Column: "f.state", Kind: aip.Enum, Enum: aip.EnumLookup(familiesv1.FamilyState_value, "FAMILY_STATE_")},
	"counselor": {Column: "f.counselor", Kind: aip.String},
	"urgent":    {Column: "f.urgent", Kind: aip.Bool},
	// For FHIR _lastUpdated searches, of one patient too: a family is read
	// (for the EHR, disclosed) only if it matches.
	"update_time": {Column: "f.update_time", Kind: aip.Time},
	"id":          {Column: "f.id", Kind: aip.String},
	// For FHIR RelatedPerson searches: a family with no members has none
	// to show, and is then not read (for the EHR, not disclosed).
	"has_members": {Column: "(jsonb_array_length(COALESCE(f.doc->'members', '[]'::jsonb)) > 0)", Kind: aip.Bool},
}

// sharedUpdateTime is when what outside systems see of a family last
// changed (shared_update_time, or update_time on rows from before it), as
// the index families_shared_updated holds it. A CASE, not COALESCE: under
// row security PostgreSQL uses a condition as an index's only if it cannot
// leak rows, and it counts COALESCE as one that might.
const sharedUpdateTime = `(CASE WHEN f.shared_update_time IS NULL THEN f.update_time ELSE f.shared_update_time END)`

// familyFields are the fields the caller's list of families filters on.
func familyFields(ctx context.Context) map[string]aip.FilterField {
	fields := familyFilter
	if familyView(ctx) != viewWhole {
		// familyForCaller leaves urgency out for these callers; filtering
		// on it would tell it. (The worker, which sees it, lists none.)
		fields = aip.Without(familyFilter, "urgent")
	}
	if familyView(ctx) == viewCalendar {
		// Nor on what the calendar reader's view leaves out.
		fields = map[string]aip.FilterField{"counselor": familyFilter["counselor"], "id": familyFilter["id"]}
	}
	if familyView(ctx) == viewEHR {
		// The EHR filters on the state it sees (outsideState): a family in
		// treatment is ACTIVE, and ENGAGED_IN_TREATMENT matches none.
		st := fields["state"]
		st.Column = fmt.Sprintf("(CASE WHEN f.state = %d THEN %d ELSE f.state END)",
			familiesv1.FamilyState_FAMILY_STATE_ENGAGED_IN_TREATMENT, familiesv1.FamilyState_FAMILY_STATE_ACTIVE)
		fields = maps.Clone(fields)
		fields["state"] = st
		// And on the update time of what it sees: the family's own moves
		// with changes the view leaves out (sharedUpdateTime).
		ut := fields["update_time"]
		ut.Column = sharedUpdateTime
		fields["update_time"] = ut
	}
	return fields
}

// listFamilies is ListFamilies' statement and its arguments: a page of
// size (and one more) of the clinic's families after the id after that
// filter matches, by id. An outside system sees only the families whose
// consent covers it, filtered in SQL so pages stay full and tokens never
// point past a hidden family.
func (s *Server) listFamilies(ctx context.Context, clinic, after string, size int, filter aip.Filter) (string, []any) {
	scope, args := `f.clinic = $1 AND f.id > $2`, []any{clinic, after, size + 1}
	if p, out := outsider(ctx); out {
		scope += ` AND EXISTS (` + coveringConsent(coverArgs{"f.clinic", "f.id", "''", "$4", "$5", "$6", "$7::timestamptz", "true"}) + `)`
		args = append(args, p.Subject, int16(familiesv1.InformationKind_INFORMATION_KIND_IDENTITY),
			int16(familiesv1.Purpose_PURPOSE_TREATMENT), s.cfg.Now())
	}
	where, fargs := filter.SQL(len(args) + 1)
	return familySelect + ` WHERE ` + scope + ` AND ` + where + ` ORDER BY f.id LIMIT $3`, append(args, fargs...)
}

// ListFamilies implements the API.
func (s *Server) ListFamilies(ctx context.Context, req *familiesv1.ListFamiliesRequest) (*familiesv1.ListFamiliesResponse, error) {
	clinic, err := parseClinic(req.GetParent())
	if err != nil {
		return nil, err
	}
	if err := auth.CheckClinic(ctx, clinic, req.GetParent()); err != nil {
		return nil, err
	}
	filter, after, q, err := aip.ListArgs("families", req.GetParent(), req.GetFilter(), req.GetPageToken(), familyFields(ctx))
	if err != nil {
		return nil, err
	}
	// The calendar reader serves every clinic, and lists one counselor's
	// families at a time, for their feed: a leaked token of its must not
	// page out every clinic's families and caseloads.
	if familyView(ctx) == viewCalendar {
		if _, ok := filter.Equals("counselor"); !ok {
			return nil, apperr.PermissionDenied("the calendar reader lists families only with counselor = \"...\" in the filter")
		}
	}
	size := aip.PageSize(req.GetPageSize())
	p, out := outsider(ctx)
	query, args := s.listFamilies(ctx, clinic, after, size, filter)
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("list families: %w", err)
	}
	fams, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (*familiesv1.Family, error) { return s.scanFamily(ctx, clinic, r) })
	if err != nil {
		return nil, fmt.Errorf("list families: %w", err)
	}
	resp := &familiesv1.ListFamiliesResponse{Families: fams}
	if len(fams) > size {
		resp.Families = fams[:size]
		_, last, _ := parseFamily(fams[size-1].GetName())
		resp.NextPageToken = aip.EncodePageToken(last, q)
	}
	if out && len(resp.Families) > 0 {
		ids := make([]string, len(resp.Families))
		for i, f := range resp.Families {
			_, ids[i], _ = parseFamily(f.GetName())
		}
		covered, err := s.discloseFamilies(ctx, clinic, ids, p.Subject)
		if err != nil {
			return nil, err
		}
		resp.Families = slices.DeleteFunc(resp.Families, func(f *familiesv1.Family) bool { return !covered[aip.ID(f.GetName())] })
		if len(resp.Families) > 0 {
			consentgate.Notify(ctx)
		}
		// Nor does the token name a family left out.
		lastKept := ""
		if n := len(resp.Families); n > 0 {
			lastKept = resp.Families[n-1].GetName()
		}
		if resp.NextPageToken, err = consentgate.RekeyPage(resp.NextPageToken, len(ids), len(resp.Families), ids[len(ids)-1], lastKept); err != nil {
			return nil, err
		}
	}
	for i, f := range resp.Families {
		resp.Families[i] = familyForCaller(ctx, f)
	}
	return resp, nil
}

// minBirthYear is the earliest year of birth a loved one may have.
const minBirthYear = 1900

var familyUpdatable = []string{"loved_one", "members", "coverage", "counselor", "state"}

// UpdateFamily implements the API.
func (s *Server) UpdateFamily(ctx context.Context, req *familiesv1.UpdateFamilyRequest) (*familiesv1.Family, error) {
	name := req.GetFamily().GetName()
	ids, err := aip.Parse(name, "clinics", "families")
	if err != nil {
		// The body's name, not a request field of its own.
		return nil, apperr.Field("family.name", "%v", err)
	}
	clinic, id := ids[0], ids[1]
	if err := auth.CheckClinic(ctx, clinic, name); err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.pool, clinic, svc+"UpdateFamily", req.GetRequestId(), req, newFamily,
		func(tx pgx.Tx) (*familiesv1.Family, error) {
			cur, err := s.lockFamily(ctx, tx, clinic, id, req.GetFamily().GetEtag())
			if err != nil {
				return nil, err
			}
			next := proto.Clone(cur).(*familiesv1.Family)
			if err := aip.ApplyMask(next, req.GetFamily(), req.GetUpdateMask().GetPaths(), familyUpdatable); err != nil {
				return nil, apperr.Field("update_mask", "%v", err)
			}
			var vs apperr.Violations
			checkFamily(&vs, "family", next, true, cur, s.cfg.Now())
			if err := s.retiredMembers(ctx, tx, clinic, id, cur, next, &vs); err != nil {
				return nil, err
			}
			if !proto.Equal(next.GetCoverage(), cur.GetCoverage()) {
				checkCoverage(&vs, "family", next)
			}
			if next.GetState() == familiesv1.FamilyState_FAMILY_STATE_UNSPECIFIED {
				vs.Add("family.state", "must be set")
			}
			if err := vs.Err(); err != nil {
				return nil, err
			}
			// A closed case is opened again (ACTIVE) before anything else:
			// straight to ENGAGED_IN_TREATMENT would pass over the refusal
			// RecordTreatmentEntry gives a closed family.
			closed, engaged := familiesv1.FamilyState_FAMILY_STATE_CLOSED, familiesv1.FamilyState_FAMILY_STATE_ENGAGED_IN_TREATMENT
			if cur.GetState() == closed && next.GetState() == engaged {
				return nil, apperr.InvalidTransition(cur.GetName(), "CLOSED", "ENGAGED_IN_TREATMENT")
			}
			assignMemberIDs(next)
			changed, set, err := docChanges(cur, next)
			if err != nil {
				return nil, err
			}
			// Only the top-level parts of the document that change are
			// written: a part a newer release added (read here during a
			// rollout, or after a rollback, and dropped in decoding) is kept
			// by an update of the others. A field a newer release added
			// inside a part that changes (a member's) is lost with the
			// rewrite: such a field needs its release to lead the rollout.
			// What outsiders see moves its own counter by one only if this
			// changes it; see migration 0003.
			if _, err := tx.Exec(ctx, `UPDATE families SET doc = (doc - $8::text[]) || $3::jsonb, counselor = $4, state = $5,
				update_time = greatest($6, update_time + interval '1 microsecond'), version = version + 1,
				shared_version = COALESCE(shared_version, version) + CASE WHEN $7 THEN 1 ELSE 0 END,
				shared_update_time = CASE WHEN $7 THEN greatest($6, update_time + interval '1 microsecond') ELSE COALESCE(shared_update_time, update_time) END,
				shared_checked = version + 1
				WHERE clinic = $1 AND id = $2`,
				clinic, id, set, next.GetCounselor(), int16(next.GetState()), s.cfg.Now(), sharedChanged(cur, next), changed); err != nil {
				return nil, fmt.Errorf("update family: %w", err)
			}
			out, err := s.readFamily(ctx, tx, clinic, id)
			if err != nil {
				return nil, err
			}
			if err := emit(ctx, tx, clinic, "family.updated", out.GetName(), out); err != nil {
				return nil, err
			}
			if contactWithdrawn(cur, out) {
				// Reminders already made for that person must not go out:
				// the worker cancels them on this event.
				// The name alone: the worker reads the family as it is then,
				// and the outbox keeps no second copy of its details.
				if err := emit(ctx, tx, clinic, "family.contact_withdrawn", out.GetName(), &familiesv1.Family{Name: out.GetName()}); err != nil {
					return nil, err
				}
			}
			// A family moved to CLOSED is announced (family.closed) by the
			// database itself: see migration 0009.
			return out, nil
		})
}

// RecordTreatmentEntry implements the API.
func (s *Server) RecordTreatmentEntry(ctx context.Context, req *familiesv1.RecordTreatmentEntryRequest) (*familiesv1.Family, error) {
	clinic, id, err := parseFamily(req.GetName())
	if err != nil {
		return nil, err // a violation of name already
	}
	if err := auth.CheckClinic(ctx, clinic, req.GetName()); err != nil {
		return nil, err
	}
	out, err := idempotency.InTx(ctx, s.pool, clinic, svc+"RecordTreatmentEntry", req.GetRequestId(), req, newFamily,
		func(tx pgx.Tx) (*familiesv1.Family, error) {
			// The state alone, changed in the statement that locks the row,
			// and read once after: what an outside system sees does not
			// move (it sees ACTIVE either way, see outsideState).
			engaged, closed := familiesv1.FamilyState_FAMILY_STATE_ENGAGED_IN_TREATMENT, familiesv1.FamilyState_FAMILY_STATE_CLOSED
			tag, err := tx.Exec(ctx, `UPDATE families SET state = $4, `+unseenChange+`
				WHERE clinic = $1 AND id = $2 AND state NOT IN ($4, $5)`, clinic, id, s.cfg.Now(), int16(engaged), int16(closed))
			if err != nil {
				return nil, fmt.Errorf("record treatment entry: %w", err)
			}
			out, err := s.readFamily(ctx, tx, clinic, id)
			if err != nil {
				return nil, err
			}
			if tag.RowsAffected() == 0 {
				if out.GetState() == closed {
					return nil, apperr.InvalidTransition(out.GetName(), "CLOSED", "ENGAGED_IN_TREATMENT")
				}
				return out, nil // a second referral completed: nothing changes
			}
			return out, emit(ctx, tx, clinic, "family.updated", out.GetName(), out)
		})
	if err != nil {
		return nil, err
	}
	return familyForCaller(ctx, out), nil
}

// contactWithdrawn reports whether someone the clinic could contact before
// the change no longer may: a member removed or no longer consenting, or
// the loved one no longer to be contacted directly.
func contactWithdrawn(before, after *familiesv1.Family) bool {
	if before.GetLovedOne().GetMayContactDirectly() && !after.GetLovedOne().GetMayContactDirectly() {
		return true
	}
	still := map[string]bool{}
	for _, m := range after.GetMembers() {
		still[m.GetId()] = m.GetConsentToContact()
	}
	for _, m := range before.GetMembers() {
		if m.GetConsentToContact() && !still[m.GetId()] {
			return true
		}
	}
	return false
}

// DeleteFamily implements the API.
func (s *Server) DeleteFamily(ctx context.Context, req *familiesv1.DeleteFamilyRequest) (*emptypb.Empty, error) {
	clinic, id, err := parseFamily(req.GetName())
	if err != nil {
		return nil, err
	}
	if err := auth.CheckClinic(ctx, clinic, req.GetName()); err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.pool, clinic, svc+"DeleteFamily", req.GetRequestId(), req, newEmpty,
		func(tx pgx.Tx) (*emptypb.Empty, error) {
			if _, err := s.lockFamily(ctx, tx, clinic, id, req.GetEtag()); err != nil {
				return nil, err
			}
			if _, err := tx.Exec(ctx, `DELETE FROM families WHERE clinic = $1 AND id = $2`, clinic, id); err != nil {
				return nil, fmt.Errorf("delete family: %w", err)
			}
			// The stored answers of earlier calls are copies of the family
			// (its members, their contacts): a retry gets NOT_FOUND. Its
			// consents and the accounting of its disclosures outlive it
			// (42 CFR 2.31, 2.24), and so do the answers about them.
			if err := idempotency.ForgetResource(ctx, tx, clinic, familyName(clinic, id), "consents", "disclosures"); err != nil {
				return nil, err
			}
			return &emptypb.Empty{}, emit(ctx, tx, clinic, "family.deleted", req.GetName(), &familiesv1.Family{Name: req.GetName()})
		})
}

func newFamily() *familiesv1.Family { return &familiesv1.Family{} }
func newEmpty() *emptypb.Empty      { return &emptypb.Empty{} }

const familySelect = `SELECT f.id, f.doc, f.counselor, f.state, f.urgent, f.first_contact_time,
	f.create_time, f.update_time, f.version, COALESCE(f.shared_update_time, f.update_time), COALESCE(f.shared_version, f.version),
	s.id, s.result, s.safety_plan, s.notes, s.screened_by, s.screen_time, s.create_time, s.counts_from
	FROM families f
	LEFT JOIN LATERAL ` + LatestScreen + ` s ON true`

// LatestScreen is the safety screen that counts for family f, with the time
// it counts from (counts_from), which ranks the screens and ages the one
// that counts: when it was done, except that a high risk counts from when
// it was recorded if that is later. A high risk entered with an earlier
// time (the call it came from, or a device whose clock is slow) is thus
// not hidden behind a no risk recorded before it, nor shown as an expired
// screen when it was done long ago but entered now: only a screen done
// after it was recorded takes its place.
const LatestScreen = `(SELECT s.*, ` + screenCountsFrom + ` AS counts_from
	FROM safety_screens s WHERE s.clinic = f.clinic AND s.family_id = f.id ORDER BY counts_from DESC, s.id DESC LIMIT 1)`

// screenCountsFrom is the time screen s counts from (see LatestScreen), as
// the index safety_screens_counts_from (migration 0004) spells it.
const screenCountsFrom = `CASE WHEN s.result = 3 THEN greatest(s.screen_time, s.create_time) ELSE s.screen_time END`

func (s *Server) readFamily(ctx context.Context, q pgdb.Querier, clinic, id string) (*familiesv1.Family, error) {
	rows, err := q.Query(ctx, familySelect+` WHERE f.clinic = $1 AND f.id = $2`, clinic, id)
	if err != nil {
		return nil, fmt.Errorf("read family: %w", err)
	}
	f, err := pgx.CollectExactlyOneRow(rows, func(r pgx.CollectableRow) (*familiesv1.Family, error) { return s.scanFamily(ctx, clinic, r) })
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, apperr.NotFound(familyName(clinic, id))
	}
	if err != nil {
		return nil, fmt.Errorf("read family: %w", err)
	}
	return f, nil
}

// retiredMembers refuses, on vs, a member of next that takes the id of one
// the family no longer has. The database keeps those ids as members are
// removed (migration 0008). The family row is locked (cur is as it is); an
// update whose members all stand in cur (most) costs no read.
func (s *Server) retiredMembers(ctx context.Context, tx pgx.Tx, clinic, id string, cur, next *familiesv1.Family, vs *apperr.Violations) error {
	known := map[string]bool{}
	for _, m := range cur.GetMembers() {
		known[m.GetId()] = true
	}
	if !slices.ContainsFunc(next.GetMembers(), func(m *familiesv1.Member) bool { return m.GetId() != "" && !known[m.GetId()] }) {
		return nil
	}
	var retired []string
	if err := tx.QueryRow(ctx, `SELECT retired_member_ids FROM families WHERE clinic = $1 AND id = $2`, clinic, id).Scan(&retired); err != nil {
		return fmt.Errorf("read retired member ids: %w", err)
	}
	for i, m := range next.GetMembers() {
		if slices.Contains(retired, m.GetId()) {
			vs.Add(fmt.Sprintf("family.members[%d].id", i),
				"%q was a member this family no longer has, and names that person's consents and records: leave the id empty for a new member", m.GetId())
		}
	}
	return nil
}

// lockFamily reads the family for update and checks the caller's etag.
func (s *Server) lockFamily(ctx context.Context, tx pgx.Tx, clinic, id, etag string) (*familiesv1.Family, error) {
	var version int64
	err := tx.QueryRow(ctx, `SELECT version FROM families WHERE clinic = $1 AND id = $2 FOR UPDATE`, clinic, id).Scan(&version)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, apperr.NotFound(familyName(clinic, id))
	}
	if err != nil {
		return nil, fmt.Errorf("lock family: %w", err)
	}
	if etag != "" {
		if v, ok := aip.ParseEtag(etag); !ok || v != version {
			return nil, apperr.EtagMismatch(familyName(clinic, id))
		}
	}
	return s.readFamily(ctx, tx, clinic, id)
}

func (s *Server) scanFamily(ctx context.Context, clinic string, r pgx.CollectableRow) (*familiesv1.Family, error) {
	var (
		id, counselor                  string
		doc                            []byte
		state                          int16
		urgent                         bool
		firstContact, created, updated time.Time
		sharedUpdated                  time.Time
		version, sharedVersion         int64
		ssID, ssNotes, ssBy            *string
		ssResult                       *int16
		ssPlan                         *bool
		ssTime, ssCreated, ssCounts    *time.Time
	)
	if err := r.Scan(&id, &doc, &counselor, &state, &urgent, &firstContact, &created, &updated, &version,
		&sharedUpdated, &sharedVersion, &ssID, &ssResult, &ssPlan, &ssNotes, &ssBy, &ssTime, &ssCreated, &ssCounts); err != nil {
		return nil, err
	}
	f := &familiesv1.Family{}
	// Lenient: a field a newer release added (read during a rollout,
	// or after a rollback) must not make the row unreadable.
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(doc, f); err != nil {
		return nil, fmt.Errorf("decode family %s: %w", id, err)
	}
	f.Name = familyName(clinic, id)
	f.Counselor = counselor
	f.State = familiesv1.FamilyState(state)
	f.Urgent = urgent
	f.FirstContactTime = timestamppb.New(firstContact)
	f.CreateTime = timestamppb.New(created)
	f.UpdateTime = timestamppb.New(updated)
	f.Etag = aip.Etag(version)
	if familyView(ctx) == viewEHR {
		// The version of what it sees (see sharedChanged).
		f.UpdateTime = timestamppb.New(sharedUpdated)
		f.Etag = aip.Etag(sharedVersion)
	}
	f.SafetyScreenStatus = familiesv1.SafetyScreenStatus_SAFETY_SCREEN_STATUS_MISSING
	if ssID != nil {
		f.LatestSafetyScreen = &familiesv1.SafetyScreen{
			Name:              aip.Name(f.Name, "safetyScreens", *ssID),
			Result:            familiesv1.SafetyRisk(*ssResult),
			SafetyPlanInPlace: *ssPlan,
			Notes:             *ssNotes,
			ScreenedBy:        *ssBy,
			ScreenTime:        timestamppb.New(*ssTime),
			CreateTime:        timestamppb.New(*ssCreated),
		}
		f.SafetyScreenStatus = s.screenStatus(*ssCounts, familiesv1.SafetyRisk(*ssResult))
	}
	return f, nil
}

func (s *Server) screenStatus(screened time.Time, result familiesv1.SafetyRisk) familiesv1.SafetyScreenStatus {
	return s.screenStatusAt(s.cfg.Now(), screened, result)
}

// screenStatusAt is the status a screen that counts from screened gives at
// time at.
func (s *Server) screenStatusAt(at, screened time.Time, result familiesv1.SafetyRisk) familiesv1.SafetyScreenStatus {
	switch {
	case at.Sub(screened) > s.cfg.MaxSafetyScreenAge:
		return familiesv1.SafetyScreenStatus_SAFETY_SCREEN_STATUS_EXPIRED
	case result == familiesv1.SafetyRisk_SAFETY_RISK_HIGH_RISK:
		return familiesv1.SafetyScreenStatus_SAFETY_SCREEN_STATUS_HIGH_RISK
	default:
		return familiesv1.SafetyScreenStatus_SAFETY_SCREEN_STATUS_CURRENT
	}
}

func encodeDoc(f *familiesv1.Family) ([]byte, error) {
	b, err := docJSON.Marshal(&familiesv1.Family{LovedOne: f.GetLovedOne(), Members: f.GetMembers(), Coverage: f.GetCoverage()})
	if err != nil {
		return nil, fmt.Errorf("encode family: %w", err)
	}
	return b, nil
}

// docChanges returns the top-level keys of the stored document that next
// changes from cur, and the document of their new values (an emptied one
// is absent from it, and removed with the others).
func docChanges(cur, next *familiesv1.Family) ([]string, []byte, error) {
	changed := []string{}
	part := &familiesv1.Family{}
	if !proto.Equal(cur.GetLovedOne(), next.GetLovedOne()) {
		changed, part.LovedOne = append(changed, "loved_one"), next.GetLovedOne()
	}
	if !slices.EqualFunc(cur.GetMembers(), next.GetMembers(), func(a, b *familiesv1.Member) bool { return proto.Equal(a, b) }) {
		changed, part.Members = append(changed, "members"), next.GetMembers()
	}
	if !proto.Equal(cur.GetCoverage(), next.GetCoverage()) {
		changed, part.Coverage = append(changed, "coverage"), next.GetCoverage()
	}
	b, err := encodeDoc(part)
	return changed, b, err
}

func assignMemberIDs(f *familiesv1.Family) {
	for _, m := range f.GetMembers() {
		if m.GetId() == "" {
			m.Id = aip.NewID()
		}
		if m.GetRole() == familiesv1.MemberRole_MEMBER_ROLE_UNSPECIFIED {
			m.Role = familiesv1.MemberRole_MEMBER_ROLE_SUPPORT
		}
	}
}

// checkFamily checks what protovalidate cannot: required fields, member ids
// that are unique, preferred channels that exist, and time zones that resolve.
// before is the stored family an update changes (nil on create): a rule
// added since a member was stored applies to that member once it changes,
// so that an unrelated update is not refused for it.
func checkFamily(vs *apperr.Violations, path string, f *familiesv1.Family, create bool, before *familiesv1.Family, now time.Time) {
	stored := map[string]*familiesv1.Member{}
	for _, m := range before.GetMembers() {
		stored[m.GetId()] = m
	}
	// A name of spaces alone is no name: messages and the EHR's Patient
	// would carry a blank. Checked when new or changed, so that a name
	// stored before does not block an unrelated update.
	if n := f.GetLovedOne().GetGivenName(); (before == nil || n != before.GetLovedOne().GetGivenName()) && strings.TrimSpace(n) == "" {
		vs.Add(path+".loved_one.given_name", "is required, and not blank")
	}
	if create {
		if f.GetCounselor() == "" {
			vs.Add(path+".counselor", "is required")
		}
	}
	// A zone stored before a rule refused it ("Local") passes until it
	// changes: an update must never be refused for it, least of all one
	// that withdraws consent to contact.
	if z := f.GetLovedOne().GetTimeZone(); z != before.GetLovedOne().GetTimeZone() {
		checkZone(vs, path+".loved_one.time_zone", z)
	}
	if bd := f.GetLovedOne().GetBirthDate(); bd != "" && bd != before.GetLovedOne().GetBirthDate() {
		// The pattern admits February 30th; FHIR and the EHR do not.
		// The value is not repeated back: a date of birth identifies.
		if d, err := time.Parse(time.DateOnly, bd); err != nil {
			vs.Add(path+".loved_one.birth_date", "is not a date (YYYY-MM-DD)")
		} else if d.Year() < minBirthYear {
			// Year 0000 parses, and FHIR's date, which the EHR reads,
			// has no year before 0001; before 1900 is a mistake anyway.
			vs.Add(path+".loved_one.birth_date", "must be in %d or later", minBirthYear)
		} else if d.After(now.Add(24 * time.Hour)) {
			// A day's grace: the date is in the loved one's own zone.
			vs.Add(path+".loved_one.birth_date", "must not be in the future")
		}
	}
	checkChannels(vs, path+".loved_one.contact_channels", f.GetLovedOne().GetContactChannels(), before.GetLovedOne().GetContactChannels())
	storedChannels := map[string][]*familiesv1.ContactChannel{}
	for _, m := range before.GetMembers() {
		storedChannels[m.GetId()] = m.GetContactChannels()
	}
	seen := map[string]bool{}
	for i, m := range f.GetMembers() {
		p := fmt.Sprintf("%s.members[%d]", path, i)
		var was []*familiesv1.ContactChannel
		if m.GetId() != "" {
			was = storedChannels[m.GetId()]
		}
		checkChannels(vs, p+".contact_channels", m.GetContactChannels(), was)
		if was, ok := stored[m.GetId()]; (m.GetId() == "" || !ok || was.GetGivenName() != m.GetGivenName()) && strings.TrimSpace(m.GetGivenName()) == "" {
			vs.Add(p+".given_name", "is required, and not blank")
		}
		if m.GetId() != "" {
			if seen[m.GetId()] {
				vs.Add(p+".id", "duplicate member id %q", m.GetId())
			}
			seen[m.GetId()] = true
		}
		if was, ok := stored[m.GetId()]; m.GetId() == "" || !ok || was.GetTimeZone() != m.GetTimeZone() {
			checkZone(vs, p+".time_zone", m.GetTimeZone())
		}
		// Equal ends would be read as no quiet hours at all, the opposite
		// of what a member who asked for all-day quiet wants.
		if q, was := m.GetQuietHours(), stored[m.GetId()].GetQuietHours(); q != nil && q.GetStart() != "" && q.GetStart() == q.GetEnd() &&
			(m.GetId() == "" || !proto.Equal(q, was)) {
			vs.Add(p+".quiet_hours.end", "must differ from start (equal ends would mean no quiet hours)")
		}
		// Quiet hours are read in the member's zone; without one they would
		// fall in UTC, hours off where the member sleeps. Checked when the
		// hours or the zone change, so a member stored so before passes.
		if q, was := m.GetQuietHours(), stored[m.GetId()]; q != nil && m.GetTimeZone() == "" &&
			(m.GetId() == "" || was == nil || !proto.Equal(q, was.GetQuietHours()) || was.GetTimeZone() != "") {
			vs.Add(p+".time_zone", "is required with quiet_hours, which are read in the member's own time zone")
		}
		if pc := m.GetPreferredChannel(); pc != familiesv1.ChannelKind_CHANNEL_KIND_UNSPECIFIED {
			found := false
			for _, c := range m.GetContactChannels() {
				found = found || c.GetKind() == pc
			}
			if !found {
				vs.Add(p+".preferred_channel", "must be one of the member's contact_channels")
			}
		}
	}
}

// e164 is a phone number in E.164 form: a plus, then up to 15 digits.
var e164 = regexp.MustCompile(`^\+[1-9][0-9]{6,14}$`)

// checkChannels checks that each channel's value fits its kind: reminders
// go out to it, and the EHR reads it as a FHIR telecom. Channels stored
// before (stored) pass as they are, so an old record does not block an
// unrelated update.
func checkChannels(vs *apperr.Violations, path string, channels, stored []*familiesv1.ContactChannel) {
	for i, c := range channels {
		if slices.ContainsFunc(stored, func(s *familiesv1.ContactChannel) bool { return proto.Equal(s, c) }) {
			continue
		}
		v := c.GetValue()
		switch c.GetKind() {
		case familiesv1.ChannelKind_CHANNEL_KIND_SMS, familiesv1.ChannelKind_CHANNEL_KIND_PHONE:
			if !e164.MatchString(v) {
				vs.Add(fmt.Sprintf("%s[%d].value", path, i), "must be a phone number in E.164 form, such as +15551234567")
			}
		case familiesv1.ChannelKind_CHANNEL_KIND_EMAIL:
			if a, err := mail.ParseAddress(v); err != nil || a.Address != v {
				vs.Add(fmt.Sprintf("%s[%d].value", path, i), "must be an e-mail address alone, such as ana@example.org")
			}
		}
	}
}

// checkCoverage refuses coverage given without its kind, which matching
// programs by payment needs.
func checkCoverage(vs *apperr.Violations, path string, f *familiesv1.Family) {
	if f.GetCoverage() != nil && f.GetCoverage().GetKind() == familiesv1.CoverageKind_COVERAGE_KIND_UNSPECIFIED {
		vs.Add(path+".coverage.kind", "is required when coverage is given")
	}
}

func checkZone(vs *apperr.Violations, field, zone string) {
	if zone == "" {
		return
	}
	if !aip.TimeZone(zone) {
		vs.Add(field, "unknown IANA time zone %q", zone)
	}
}

// emit writes an outbox event for a change to resource. The payload is a
// message of payload's type holding its name and create time alone: every
// consumer reads the record from the service (the workflows, the webhook
// sink, which sends identifiers only for this service's records), and an
// outbox row outlives the record by days after delivery, or longer when
// its lane is held up, so a copy of members' contacts or a screen's notes
// there would outlive DeleteFamily too. The create time is when an
// overdose was recorded, which its workflow counts from.
func emit(ctx context.Context, tx pgx.Tx, clinic, event, resource string, payload proto.Message) error {
	return outbox.Write(ctx, tx, outbox.Event{Clinic: clinic, Type: "handoff.families.v1." + event, Resource: resource, Payload: nameOnly(payload)})
}

// nameOnly is a new message of m's type with m's name and create time
// alone.
func nameOnly(m proto.Message) proto.Message {
	src := m.ProtoReflect()
	out := src.New()
	for _, f := range []protoreflect.Name{"name", "create_time"} {
		if fd := src.Descriptor().Fields().ByName(f); fd != nil && src.Has(fd) {
			out.Set(fd, src.Get(fd))
		}
	}
	return out.Interface()
}
