package interventions

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/genproto/googleapis/api/httpbody"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/audit"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/grpcserver"
	"github.com/handoff-health/handoff/services/idempotency"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/referrals/intake"
)

// FeedPath is where the gateway serves a feed: FeedPath + name + ".ics".
const FeedPath = "/calendar/v1/"

// feedWindow is how far back a feed reaches: calendars keep a year of past
// meetings, and the feed stays small.
const feedWindow = 366 * 24 * time.Hour

// feedLimit bounds one feed's events, meetings and intakes together: the
// most names the read's audit record holds, so that the trail names every
// record the calendar service was given.
const feedLimit = audit.MaxRecords

const feedSelect = `SELECT id, owner, create_time, last_read_time FROM calendar_feeds`

// feedIdle is how long a feed may go unread before it stops working.
// Calendar apps read their feeds every few hours, so only an abandoned
// feed lapses: a phone lost, a subscription forgotten, a counselor gone
// whose feeds nobody revoked.
const feedIdle = 90 * 24 * time.Hour

// feedLifetime is how long a feed works at most, read or not. A feed in
// use never idles out: a counselor gone from the clinic, whose phone still
// reads the feed, would otherwise see the meetings still assigned to them
// for as long as nobody revoked it. A counselor still here makes a new one.
const feedLifetime = 365 * 24 * time.Hour

// liveFeed is feedExpiry in SQL: a feed not revoked whose creation is within
// feedLifetime of $3 and whose last use (its read, or its creation) is
// within feedIdle of it, $3 and $4 being now less each. The two must say
// the same, or the cap would count feeds the reader has ended.
const liveFeed = `revoke_time IS NULL AND create_time > $3 AND GREATEST(create_time, COALESCE(last_read_time, create_time)) > $4`

// MaxFeedsPerOwner is how many live calendar feeds one owner may hold in a
// clinic: one for each calendar app and device, with room to spare.
const MaxFeedsPerOwner = 20

// feedReadStep is how stale the recorded last read may get before a read
// writes it again: the expiry needs no finer a clock, and a read need not
// be a write.
const feedReadStep = time.Hour

// feedExpiry is when a feed created at created and last read at read
// (zero if never) stops working: feedIdle after the later of the two, and
// feedLifetime after its creation at the latest.
func feedExpiry(created, read time.Time) time.Time {
	idle := created.Add(feedIdle)
	if read.After(created) {
		idle = read.Add(feedIdle)
	}
	if end := created.Add(feedLifetime); end.Before(idle) {
		return end
	}
	return idle
}

func feedName(clinic, id string) string { return aip.Name("clinics", clinic, "calendarFeeds", id) }

func scanFeed(clinic string) pgx.RowToFunc[*interventionsv1.CalendarFeed] {
	return func(r pgx.CollectableRow) (*interventionsv1.CalendarFeed, error) {
		var id, owner string
		var created time.Time
		var read *time.Time
		if err := r.Scan(&id, &owner, &created, &read); err != nil {
			return nil, err
		}
		f := &interventionsv1.CalendarFeed{Name: feedName(clinic, id), Owner: owner, CreateTime: timestamppb.New(created)}
		var last time.Time
		if read != nil {
			last = *read
			f.LastReadTime = timestamppb.New(last)
		}
		f.ExpireTime = timestamppb.New(feedExpiry(created, last))
		return f, nil
	}
}

func newFeed() *interventionsv1.CalendarFeed { return &interventionsv1.CalendarFeed{} }

// newFeedToken returns a fresh secret and the hash that is kept of it.
func newFeedToken() (string, []byte, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", nil, fmt.Errorf("feed token: %w", err)
	}
	token := base64.RawURLEncoding.EncodeToString(b)
	h := sha256.Sum256([]byte(token))
	return token, h[:], nil
}

// CreateCalendarFeed implements the API. The token is returned once and
// kept only as a hash, so the idempotency record stores the feed without
// it: a retry gets the same feed with a new token, and the first one stops
// working (its answer may never have arrived).
func (s *Server) CreateCalendarFeed(ctx context.Context, req *interventionsv1.CreateCalendarFeedRequest) (*interventionsv1.CalendarFeed, error) {
	clinic, err := parentClinic(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	owner := auth.Actor(ctx)
	token, hash, err := newFeedToken()
	if err != nil {
		return nil, err
	}
	var out *interventionsv1.CalendarFeed
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		fresh := false
		feed, err := idempotency.Do(ctx, tx, clinic, svc+"CreateCalendarFeed", req.GetRequestId(), req, newFeed,
			func() (*interventionsv1.CalendarFeed, error) {
				fresh = true
				// Live feeds are bearer secrets to a counselor's schedule:
				// a loop of creates must not mint them without end. Counted
				// under a lock of the owner's, so that creates at once
				// cannot all pass.
				if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('calendar-feeds/' || $1 || '/' || $2, 0))`, clinic, owner); err != nil {
					return nil, fmt.Errorf("lock the owner's calendar feeds: %w", err)
				}
				now := s.cfg.Now()
				var live int
				if err := tx.QueryRow(ctx, `SELECT count(*) FROM calendar_feeds WHERE clinic = $1 AND owner = $2 AND `+liveFeed,
					clinic, owner, now.Add(-feedLifetime), now.Add(-feedIdle)).Scan(&live); err != nil {
					return nil, fmt.Errorf("count the owner's calendar feeds: %w", err)
				}
				if live >= MaxFeedsPerOwner {
					return nil, apperr.QuotaExceeded("calendar feeds of "+owner,
						fmt.Sprintf("you hold %d live calendar feeds in clinics/%s, the most one owner may: revoke one you no longer use first", live, clinic))
				}
				id := aip.NewID()
				// The audit record names the feed, and goes with its insert.
				pgdb.StampNames(tx, feedName(clinic, id))
				rows, err := tx.Query(ctx, `INSERT INTO calendar_feeds (clinic, id, owner, token_hash, create_time)
					VALUES ($1, $2, $3, $4, $5) RETURNING id, owner, create_time, last_read_time`, clinic, id, owner, hash, now)
				return pgdb.One(rows, err, "calendar feed", scanFeed(clinic))
			})
		if err != nil {
			return err
		}
		if !fresh {
			ids, err := aip.Parse(feed.GetName(), "clinics", "calendarFeeds")
			if err != nil {
				return fmt.Errorf("stored calendar feed: %w", err)
			}
			// Not a feed revoked since: its token stays ended. The token
			// replaced reads the calendar that says the feed ended, as a
			// revoked one does: its answer may have reached a calendar
			// app, which on an error would keep showing what it read.
			tag, err := tx.Exec(ctx, `UPDATE calendar_feeds SET replaced_token_hashes = (token_hash || replaced_token_hashes)[1:8], token_hash = $3
				WHERE clinic = $1 AND id = $2 AND revoke_time IS NULL`, clinic, ids[1], hash)
			if err != nil {
				return fmt.Errorf("renew calendar feed token: %w", err)
			}
			if tag.RowsAffected() == 0 {
				return apperr.NotFound(feed.GetName()) // revoked since the first attempt
			}
		}
		out = proto.Clone(feed).(*interventionsv1.CalendarFeed)
		out.Url = FeedPath + out.GetName() + ".ics?token=" + token
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// feedFilter is what ListCalendarFeeds filters on.
var feedFilter = map[string]aip.FilterField{
	"owner": {Column: "owner", Kind: aip.String},
}

// ListCalendarFeeds implements the API: a counselor's own feeds; for a
// clinic administrator every feed of the clinic (to find and revoke those
// of a counselor who left), optionally `owner = "..."`. Never with their
// url or token.
func (s *Server) ListCalendarFeeds(ctx context.Context, req *interventionsv1.ListCalendarFeedsRequest) (*interventionsv1.ListCalendarFeedsResponse, error) {
	clinic, err := parentClinic(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	p, _ := auth.FromContext(ctx)
	items, next, err := pgdb.ListPage(ctx, s.pool, "calendar feeds", feedSelect, `clinic = $1 AND ($3 OR owner = $2) AND revoke_time IS NULL`,
		[]any{clinic, auth.Actor(ctx), p.Has(auth.RoleClinicAdmin)}, req, feedFilter, scanFeed(clinic),
		func(f *interventionsv1.CalendarFeed) string { return f.GetName() })
	if err != nil {
		return nil, err
	}
	return &interventionsv1.ListCalendarFeedsResponse{CalendarFeeds: items, NextPageToken: next}, nil
}

// DeleteCalendarFeed implements the API: the owner or a clinic
// administrator revokes a feed. Anyone else is told it does not exist.
// The feed is kept, revoked (see feedOwner): a calendar app that reads it
// again is told it ended, and drops the meetings it shows.
func (s *Server) DeleteCalendarFeed(ctx context.Context, req *interventionsv1.DeleteCalendarFeedRequest) (*emptypb.Empty, error) {
	r, err := authorized(ctx, "name", req.GetName(), "calendarFeeds")
	if err != nil {
		return nil, err
	}
	p, _ := auth.FromContext(ctx)
	return idempotency.InTx(ctx, s.pool, r.clinic, svc+"DeleteCalendarFeed", req.GetRequestId(), req,
		func() *emptypb.Empty { return &emptypb.Empty{} },
		func(tx pgx.Tx) (*emptypb.Empty, error) {
			tag, err := tx.Exec(ctx, `UPDATE calendar_feeds SET revoke_time = $5, ended_token_hash = token_hash, token_hash = ''::bytea
				WHERE clinic = $1 AND id = $2 AND revoke_time IS NULL AND (owner = $3 OR $4)`,
				r.clinic, r.id, p.Subject, p.Has(auth.RoleClinicAdmin), s.cfg.Now())
			if err != nil {
				return nil, fmt.Errorf("delete calendar feed: %w", err)
			}
			if tag.RowsAffected() == 0 {
				return nil, apperr.NotFound(req.GetName())
			}
			return &emptypb.Empty{}, nil
		})
}

// Credentials are the request credentials this service's methods accept
// instead of a bearer token (see grpcserver.Config.Credentials).
func (s *Server) Credentials() map[string]grpcserver.Credential {
	return map[string]grpcserver.Credential{svc + "ExportCalendarFeed": s.feedCredential}
}

// feedCredential lets a calendar app in with a feed's name and token, as
// the feed's owner in the calendar_feed role. Every failure is the same
// NOT_FOUND, so a guess learns nothing.
func (s *Server) feedCredential(ctx context.Context, req any) (auth.Principal, error) {
	r, _ := req.(*interventionsv1.ExportCalendarFeedRequest)
	ids, err := aip.Parse(r.GetName(), "clinics", "calendarFeeds")
	if err != nil {
		return auth.Principal{}, apperr.NotFound("calendar feed")
	}
	feed, err := s.feedOwner(pgdb.WithClinic(ctx, ids[0]), ref{ids[0], ids[1]}, r.GetToken())
	if errors.Is(err, errFeedEnded) {
		// Let in to be told so, as the owner: the answer holds no meeting.
		err = nil
	}
	if err != nil {
		return auth.Principal{}, err
	}
	return auth.Principal{Subject: feed.owner, Clinic: ids[0], Roles: []auth.Role{auth.RoleCalendarFeed}}, nil
}

// errFeedEnded is feedOwner's answer for the token of a feed revoked or
// lapsed.
var errFeedEnded = errors.New("calendar feed ended")

// feedState is what a feed's reader is checked against.
type feedState struct {
	owner             string
	created, lastRead time.Time // lastRead zero if never
}

// feedOwner returns the feed r if token is its token and the feed has not
// lapsed (feedExpiry), or errFeedEnded, with the feed, if it is the token
// of the feed revoked or lapsed. Any other failure is NOT_FOUND, so the
// answer tells a guess nothing.
func (s *Server) feedOwner(ctx context.Context, r ref, token string) (feedState, error) {
	var f feedState
	var hash, ended []byte
	var replaced [][]byte
	var read, revoked *time.Time
	err := s.pool.QueryRow(ctx, `SELECT owner, token_hash, ended_token_hash, replaced_token_hashes, create_time, last_read_time, revoke_time
		FROM calendar_feeds WHERE clinic = $1 AND id = $2`,
		r.clinic, r.id).Scan(&f.owner, &hash, &ended, &replaced, &f.created, &read, &revoked)
	if err == pgx.ErrNoRows {
		return feedState{}, apperr.NotFound("calendar feed")
	}
	if err != nil {
		return feedState{}, fmt.Errorf("read calendar feed: %w", err)
	}
	if read != nil {
		f.lastRead = *read
	}
	if token == "" {
		return feedState{}, apperr.NotFound("calendar feed")
	}
	given := sha256.Sum256([]byte(token))
	current := subtle.ConstantTimeCompare(given[:], hash) == 1
	gone := subtle.ConstantTimeCompare(given[:], ended) == 1
	for _, h := range replaced {
		// A token a retried create replaced (its answer may have reached
		// a calendar app): ended, as a revoked one is.
		if subtle.ConstantTimeCompare(given[:], h) == 1 {
			gone = true
		}
	}
	if gone || current && revoked != nil {
		// Revoked. A token_hash set again after the revocation (a
		// replica a release behind answering a retry of the feed's
		// create) does not bring the feed back.
		return f, errFeedEnded
	}
	if !current {
		return feedState{}, apperr.NotFound("calendar feed")
	}
	if !s.cfg.Now().Before(feedExpiry(f.created, f.lastRead)) {
		return f, errFeedEnded
	}
	return f, nil
}

// feedRead records that the feed r was read, unless the last read
// recorded (lastRead) is within feedReadStep: most reads then cost no
// write and no round trip. The condition is repeated in SQL for reads
// that race.
func (s *Server) feedRead(ctx context.Context, r ref, lastRead time.Time) error {
	now := s.cfg.Now()
	if now.Sub(lastRead) < feedReadStep {
		return nil
	}
	// In a transaction, which writes the call's audit record with the
	// change (pgdb.Stamp): a change never commits without its record. The
	// record names what the export noted before (audit.Disclose).
	if err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE calendar_feeds SET last_read_time = $3
			WHERE clinic = $1 AND id = $2 AND (last_read_time IS NULL OR last_read_time <= $4)`,
			r.clinic, r.id, now, now.Add(-feedReadStep))
		return err
	}); err != nil {
		return fmt.Errorf("record calendar feed read: %w", err)
	}
	return nil
}

// ExportCalendarFeed implements the API: the owner's meetings as
// iCalendar. The token is checked again here, so that the export never
// rests on the caller's role alone.
func (s *Server) ExportCalendarFeed(ctx context.Context, req *interventionsv1.ExportCalendarFeedRequest) (*httpbody.HttpBody, error) {
	r, err := authorized(ctx, "name", req.GetName(), "calendarFeeds")
	if err != nil {
		return nil, err
	}
	feed, err := s.feedOwner(ctx, r, req.GetToken())
	if errors.Is(err, errFeedEnded) {
		// Its meetings are not shown. An empty calendar, not an error:
		// on an error calendar apps keep showing what they last read, a
		// meeting moved or called off since at its old time, for as long
		// as the phone stays subscribed; an answer without the meetings
		// makes them drop them, and the notice says why.
		return calendarBody([]calendarEvent{feedNotice(r.id, s.cfg.Now(), time.Time{})}), nil
	}
	if err != nil {
		return nil, err
	}
	// A cancelled meeting shows (so that calendars drop it) if it was ever
	// scheduled; one cancelled as a draft never reached a calendar. Past
	// feedLimit the oldest are left out, not the meetings to come: a
	// calendar deletes what a feed stops showing.
	// The version and time of what outside systems see (see sharedChanged):
	// the intervention's own move with a check-in, which follows only a
	// meeting that ended without a yes, and the calendar service holding
	// the feed is an outside system.
	rows, err := s.pool.Query(ctx, `SELECT id, start_time, end_time, state, create_time,
		`+sharedUpdateTime+`, `+sharedVersion+`
		FROM interventions WHERE clinic = $1 AND counselor = $2 AND state = ANY($3) AND start_time IS NOT NULL
		AND (published OR state <> $6) AND end_time >= $4 ORDER BY start_time DESC, id DESC LIMIT $5`, r.clinic, feed.owner,
		[]int16{int16(scheduled), int16(completed), int16(cancelled)}, s.cfg.Now().Add(-feedWindow), feedLimit, int16(cancelled))
	if err != nil {
		return nil, fmt.Errorf("read feed interventions: %w", err)
	}
	events, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (calendarEvent, error) {
		var (
			id               string
			state            int16
			version          int64
			e                calendarEvent
			created, updated time.Time
		)
		if err := row.Scan(&id, &e.start, &e.end, &state, &created, &updated, &version); err != nil {
			return e, err
		}
		name := interventionName(r.clinic, id)
		e.uid, e.resource, e.summary = id+"@handoff", name, "Family intervention"
		e.created, e.modified, e.sequence = created, updated, version
		e.cancelled = istate(state) == cancelled
		return e, nil
	})
	if err != nil {
		return nil, fmt.Errorf("read feed interventions: %w", err)
	}
	slices.Reverse(events) // oldest first, as before
	intakes, err := s.intakeEvents(ctx, r.clinic, feed.owner, s.cfg.Now().Add(-feedWindow))
	if err != nil {
		return nil, err
	}
	events = append(events, intakes...)
	events = newest(events, feedLimit)
	for _, e := range events {
		// The trail names each meeting and intake the calendar service
		// was given, as a list's names what it showed.
		if e.resource != "" {
			audit.Disclose(ctx, e.resource)
		}
	}
	if err := s.feedRead(ctx, r, feed.lastRead); err != nil {
		return nil, err
	}
	// Read now, the feed works until feedExpiry(created, now): near that
	// (its year ending), the calendar says so while the owner can still
	// make a new one, not once the meetings are gone.
	if end := feedExpiry(feed.created, s.cfg.Now()); end.Sub(s.cfg.Now()) <= feedWarning {
		events = append(events, feedNotice(r.id, s.cfg.Now(), end))
	}
	return calendarBody(events), nil
}

func calendarBody(events []calendarEvent) *httpbody.HttpBody {
	return &httpbody.HttpBody{ContentType: "text/calendar; charset=utf-8", Data: []byte(renderCalendar(events))}
}

// feedWarning is how long before a feed stops working its calendar says
// that it will.
const feedWarning = 14 * 24 * time.Hour

// feedNotice is the event by which a feed's calendar tells its reader
// that the feed ends at end, or (end zero) that it has ended: an all-day
// event on the day it is read (in UTC), which moves on each day, so that
// the calendar shows it where its reader looks.
func feedNotice(feed string, now, end time.Time) calendarEvent {
	day := now.UTC().Truncate(24 * time.Hour)
	e := calendarEvent{start: day, end: day.Add(24 * time.Hour), allDay: true, created: day, modified: day,
		// Moved every day: the later, the greater.
		sequence: day.Unix() / (24 * 60 * 60)}
	if end.IsZero() {
		e.uid, e.summary = feed+".ended@handoff", "Handoff calendar feed ended"
		e.note = "This calendar feed address was revoked, replaced or has lapsed, so it shows no meetings. " +
			"Make a new feed in Handoff, subscribe to it, and remove this calendar."
		return e
	}
	date := end.UTC().Format("2 January 2006")
	e.uid, e.summary = feed+".ending@handoff", "Handoff calendar feed ends "+date
	e.note = "This calendar feed stops showing meetings on " + date + " (UTC), a year after it was made. " +
		"Make a new feed in Handoff before then and subscribe to it."
	return e
}

// intakeDuration is how long an intake appointment shows in a calendar:
// as long as FHIR's Appointment says it lasts.
const intakeDuration = intake.Length

// intakeEvents returns the intake appointments of the families the owner
// counsels, read through the families and referrals APIs as the calendar
// reader. A failure fails the whole feed: a feed without them would make
// calendars delete the appointments until the next read.
func (s *Server) intakeEvents(ctx context.Context, clinic, owner string, since time.Time) ([]calendarEvent, error) {
	if s.cfg.CalendarFamilies == nil || s.cfg.CalendarReferrals == nil {
		return nil, nil
	}
	parent := aip.Name("clinics", clinic)
	families := map[string]bool{}
	for token := ""; ; {
		page, err := s.cfg.CalendarFamilies.ListFamilies(ctx, &familiesv1.ListFamiliesRequest{Parent: parent,
			Filter: fmt.Sprintf("counselor = %q", owner), PageSize: 1000, PageToken: token})
		if err != nil {
			// Wrapped: the interceptor answers for the other service's
			// status (fromDependency), so an outage of it reads as one.
			return nil, fmt.Errorf("list the counselor's families: %w", err)
		}
		for _, f := range page.GetFamilies() {
			families[f.GetName()] = true
		}
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	if len(families) == 0 {
		return nil, nil
	}
	// The clinic's intake appointments in the window, a page at a time,
	// kept for the owner's families: one query, not one per family.
	filter := fmt.Sprintf("intake_time >= %q", since.Add(-intakeDuration).UTC().Format(time.RFC3339Nano))
	var events []calendarEvent
	for token := ""; ; {
		page, err := s.cfg.CalendarReferrals.ListReferrals(ctx, &referralsv1.ListReferralsRequest{Parent: parent,
			Filter: filter, PageSize: 1000, PageToken: token})
		if err != nil {
			return nil, fmt.Errorf("list intake appointments: %w", err)
		}
		for _, ref := range page.GetReferrals() {
			if !families[ref.GetFamily()] {
				continue
			}
			if e, ok := intakeEvent(ref, since); ok {
				events = append(events, e)
			}
		}
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	return events, nil
}

// intakeEvent is a referral's intake appointment as an event, if it has
// one that ends after since. Its UID is the referral's: a rebooked
// appointment moves the same event.
func intakeEvent(ref *referralsv1.Referral, since time.Time) (calendarEvent, bool) {
	appt := ref.GetIntakeAppointment()
	if appt.GetStartTime() == nil {
		return calendarEvent{}, false
	}
	start := appt.GetStartTime().AsTime()
	if start.Add(intakeDuration).Before(since) {
		return calendarEvent{}, false
	}
	version, _ := aip.ParseEtag(ref.GetEtag())
	return calendarEvent{
		uid: aip.ID(ref.GetName()) + "@handoff", resource: ref.GetName(), summary: "Intake appointment",
		start: start, end: start.Add(intakeDuration),
		created: ref.GetCreateTime().AsTime(), modified: ref.GetUpdateTime().AsTime(), sequence: version,
		// On hold, the booked time will not happen; a rebooking moves
		// the event to its new time. Admitted without it, the person will
		// not come to it either (as FHIR's Appointment says).
		cancelled: intake.Hidden(ref.GetState(), ref),
	}, true
}

// newest keeps the limit events that start last. Past the limit the
// oldest go, meetings and intakes alike (the intakes come in the
// referrals' order, after the meetings): a calendar deletes what a feed
// stops showing, and the past is what it can spare.
func newest(events []calendarEvent, limit int) []calendarEvent {
	if len(events) <= limit {
		return events
	}
	slices.SortStableFunc(events, func(a, b calendarEvent) int { return a.start.Compare(b.start) })
	return events[len(events)-limit:]
}
