package webhooks

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	webhooksv1 "github.com/handoff-health/handoff/gen/go/handoff/webhooks/v1"
	"github.com/handoff-health/handoff/services/consentgate"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/telemetry"
)

// Notice is the statement every disclosure of Part 2 records carries
// (42 CFR 2.32); FULL notifications include it beside the data.
const Notice = "42 CFR part 2 prohibits unauthorized use or disclosure of these records."

// SenderConfig configures the sender.
type SenderConfig struct {
	// DB is the webhooks schema.
	DB *pgdb.DB
	// Families checks consent and records each FULL notification in the
	// family's accounting of disclosures. Its connection carries the
	// sender's own service token (role webhook_sender).
	Families familiesv1.FamiliesServiceClient
	Log      *slog.Logger
	// MaxAttempts is how many attempts a delivery gets before it is dead
	// (default DefaultMaxAttempts).
	MaxAttempts int
	// BaseBackoff is the wait after the first failure; it doubles with
	// each further failure, with jitter, up to MaxBackoff (defaults 5 s
	// and 1 h).
	BaseBackoff, MaxBackoff time.Duration
	// RefusedFor is how long a receiver's refusals (400, 401, 403, 404)
	// must have gone on, from the first of them in a row, before the
	// refusedAttempts-th in a row dead-letters it (default 15 min): a
	// receiver being deployed may refuse for minutes, and every delivery
	// first tried meanwhile would die and wait for a replay by hand.
	RefusedFor time.Duration
	// Timeout bounds one HTTP attempt (default 10 s).
	Timeout time.Duration
	// Interval is how often the sender looks for due deliveries when idle
	// (default 500 ms).
	Interval time.Duration
	// Parallel is how many notifications are in flight at once (default 8).
	// A round claims no more deliveries than that, so every claimed
	// delivery is sent at once, well within its lease.
	Parallel int
	// AllowPrivate lets the sender connect to loopback, private and
	// link-local addresses (development and tests).
	AllowPrivate bool
	// Secrets opens the signing secrets the service sealed (the same keys
	// as Config.Secrets), and Run seals again under its current key those
	// sealed under a previous one (Reseal).
	Secrets *SecretBox
}

// Sender POSTs due deliveries: at least once, in order per subscription
// and resource, signed, retried with backoff and dead-lettered after
// MaxAttempts. Several senders may run against one schema: a delivery is
// leased to one of them while it is in flight.
type Sender struct {
	cfg    SenderConfig
	client *http.Client

	mu       sync.Mutex // guards pruned and resealed
	pruned   time.Time
	resealed time.Time

	// The sends under way, so that Run claims only as many as there are
	// free slots, and a subscription only as many as its share leaves:
	// a round that waited for its slowest send let one receiver that
	// hangs hold back every clinic's notifications.
	fmu      sync.Mutex
	inFlight map[string]int // by subscription id
	total    int
	ended    chan struct{} // a send ended
	sends    sync.WaitGroup
	// The stall breaker: a share per subscription still lets a few
	// receivers that hang take every slot. posting holds when each POST
	// under way began; slow, by subscription id, when a POST to it last
	// took stallAfter or longer with no quick answer since. A slow
	// subscription gets one send at a time, and the slow ones together a
	// quarter of the slots.
	posting map[*pending]time.Time
	slow    map[string]time.Time
}

// DefaultMaxAttempts, with the default backoff (5 s doubling, at most an
// hour), keeps retrying for 5 to 10 hours: a receiver down for an
// afternoon's maintenance gets its notifications, not a pile of dead
// letters to replay one by one.
const DefaultMaxAttempts = 20

// NewSender returns a sender with cfg's defaults filled in.
func NewSender(cfg SenderConfig) *Sender {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.BaseBackoff <= 0 {
		cfg.BaseBackoff = 5 * time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = time.Hour
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.RefusedFor <= 0 {
		cfg.RefusedFor = 15 * time.Minute
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 500 * time.Millisecond
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = 8
	}
	dialer := &net.Dialer{Timeout: cfg.Timeout}
	if !cfg.AllowPrivate {
		dialer.Control = dialControl
	}
	transport := &http.Transport{
		// No proxy from the environment: the address check must see the
		// receiver's own address.
		Proxy:                 nil,
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   cfg.Timeout,
		ResponseHeaderTimeout: cfg.Timeout,
		MaxIdleConnsPerHost:   2,
		IdleConnTimeout:       90 * time.Second,
	}
	return &Sender{cfg: cfg, client: &http.Client{
		Transport: transport,
		// Each attempt's time is bounded by post (attemptClock), which
		// leaves out the disclosure's record made as the connection
		// comes: a client timeout would count it against the receiver.
		// Dial, TLS and the answer's headers keep their own bounds.
		// A redirect could lead anywhere, past the address check: a 3xx is
		// a failed attempt.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// Run sends until ctx ends, keeping up to Parallel sends under way: it
// claims more once half the slots are free again (an ended send may also
// free the next delivery of its resource), or every Interval. It returns
// once the sends under way have ended too.
func (s *Sender) Run(ctx context.Context) {
	s.observe()
	defer s.sends.Wait()
	ended := s.endedChan()
	for {
		s.resealIfDue(ctx)
		if err := s.fill(ctx); err != nil && ctx.Err() == nil {
			s.cfg.Log.Warn("webhook sending paused", "error", telemetry.LogSafe(err))
		}
		tick := time.NewTimer(s.cfg.Interval)
	wait:
		for {
			select {
			case <-ctx.Done():
				tick.Stop()
				return
			case <-ended:
				// Not a claim for each send that ends: a claim ranks every
				// due delivery, and a backlog would pay that per send.
				if s.free() >= max(1, s.cfg.Parallel/2) {
					break wait
				}
			case <-tick.C:
				break wait
			}
		}
		tick.Stop()
	}
}

// free is how many slots no send holds.
func (s *Sender) free() int {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	return s.cfg.Parallel - s.total
}

// fill claims as many due deliveries as there are free slots and starts
// sending them, each reporting its own failure.
func (s *Sender) fill(ctx context.Context) error {
	batch, err := s.claimFree(ctx)
	for _, p := range batch {
		s.start(ctx, p, func(err error) {
			if err != nil && ctx.Err() == nil {
				s.cfg.Log.Warn("webhook send not recorded", "delivery", p.name(), "error", telemetry.LogSafe(err))
			}
		})
	}
	if perr := s.prune(ctx, time.Now()); perr != nil && err == nil {
		err = perr
	}
	return err
}

func (s *Sender) endedChan() chan struct{} {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	if s.ended == nil {
		s.ended = make(chan struct{}, 1)
	}
	return s.ended
}

// claimFree claims up to the free slots, each subscription's share less
// what it has under way, and a slow subscription's less (see shares).
func (s *Sender) claimFree(ctx context.Context) ([]*pending, error) {
	s.fmu.Lock()
	free := s.cfg.Parallel - s.total
	if free <= 0 {
		s.fmu.Unlock()
		return nil, nil
	}
	sh := s.shares(time.Now())
	s.fmu.Unlock()
	return s.claim(ctx, free, sh)
}

// perSubscription is how many sends one subscription may have under way.
func (s *Sender) perSubscription() int { return max(1, s.cfg.Parallel/2) }

// stallAfter is how long a POST may take before its subscription counts as
// slow: half the timeout, so that one caught mid-hang counts already.
func (s *Sender) stallAfter() time.Duration { return s.cfg.Timeout / 2 }

// forgetSlow is how long a subscription stays slow without a send to it:
// twice the longest backoff of its deliveries, so that a receiver whose
// deliveries all wait out a backoff is still slow when they come due.
func (s *Sender) forgetSlow() time.Duration { return 2 * s.cfg.MaxBackoff }

// share is what a claim may take: busy, by subscription id, counts as
// under way (the sends truly under way, and for a slow subscription as
// many as leave it one send at a time); of the slow subscriptions, those
// with nothing under way, only probes between them may get one. The claim
// gives the probes to the slow subscriptions with deliveries due, oldest
// due first: a slow one with nothing due takes none from the others.
type share struct {
	busy   map[string]int
	slow   []string
	probes int
}

// shares returns the share of the next claim. A subscription is slow if
// its last POST hung, or one under way has for stallAfter. A slow receiver
// is probed, one send at a time, while the slow ones together hold fewer
// than a quarter of the slots, and answers quickly again before it gets
// its full share back. Called with fmu held.
func (s *Sender) shares(now time.Time) share {
	sh := share{busy: make(map[string]int, len(s.inFlight)), slow: []string{}}
	for k, v := range s.inFlight {
		sh.busy[k] = v
	}
	slow := map[string]bool{}
	for id, since := range s.slow {
		if now.Sub(since) > s.forgetSlow() {
			delete(s.slow, id)
			continue
		}
		slow[id] = true
	}
	for p, began := range s.posting {
		if now.Sub(began) >= s.stallAfter() {
			slow[p.subscription] = true
		}
	}
	held := 0
	per := s.perSubscription()
	for id := range slow {
		held += sh.busy[id]
		if sh.busy[id] == 0 {
			sh.busy[id] = per - 1 // one probe, if the cap allows
		} else {
			sh.busy[id] = per // one under way already
		}
		sh.slow = append(sh.slow, id)
	}
	slices.Sort(sh.slow)
	sh.probes = max(0, max(1, s.cfg.Parallel/4)-held)
	return sh
}

// posted records how long the POST that began at began took: a subscription
// is slow after one that took stallAfter or longer (answered or not), and
// no longer after one answered sooner. A POST that failed at once (refused
// connection) held no slot for long and changes nothing.
func (s *Sender) posted(p *pending, began time.Time, answered bool) {
	took := time.Since(began)
	s.fmu.Lock()
	defer s.fmu.Unlock()
	delete(s.posting, p)
	_, was := s.slow[p.subscription]
	switch {
	case took >= s.stallAfter():
		if s.slow == nil {
			s.slow = map[string]time.Time{}
		}
		s.slow[p.subscription] = time.Now()
		if !was {
			s.cfg.Log.Warn("webhook receiver slow: one notification at a time until it answers quickly",
				"subscription", subscriptionName(p.clinic, p.subscription), "took", took.Round(time.Millisecond).String())
		}
	case answered && was:
		delete(s.slow, p.subscription)
		s.cfg.Log.Info("webhook receiver answering quickly again", "subscription", subscriptionName(p.clinic, p.subscription))
	}
}

// start sends p in a goroutine of its own, counted under way until it
// ends; done then hears whether sending or recording it failed.
func (s *Sender) start(ctx context.Context, p *pending, done func(error)) {
	ended := s.endedChan()
	s.fmu.Lock()
	if s.inFlight == nil {
		s.inFlight = map[string]int{}
	}
	s.inFlight[p.subscription]++
	s.total++
	s.fmu.Unlock()
	s.sends.Add(1)
	go func() {
		defer s.sends.Done()
		err := s.send(ctx, p)
		s.fmu.Lock()
		if s.inFlight[p.subscription]--; s.inFlight[p.subscription] <= 0 {
			delete(s.inFlight, p.subscription)
		}
		s.total--
		s.fmu.Unlock()
		done(err)
		select {
		case ended <- struct{}{}:
		default:
		}
	}()
}

// pending is a claimed delivery with what sending it needs.
type pending struct {
	clinic, subscription, id string
	eventType, resource      string
	seq                      int64
	topic                    webhooksv1.Topic
	family                   string
	member                   string // whose record, when a member's own (migration 0015)
	memberKnown              bool   // false for a delivery enqueued before the member was kept
	payload                  []byte
	attempts, replays        int
	recordUnsure             bool // see errRecordUnsure
	created                  time.Time
	firstTry                 time.Time  // see migration 0013
	claims                   int64      // with attempts, the fence of this attempt's outcome (migration 0016)
	ownFailures              int        // tries failed on Handoff's side in a row (migration 0016)
	refusals                 int        // answers in a row that refused it (migration 0014)
	firstRefusal             *time.Time // the first of those refusals (migration 0020)
	// toRecord is the information of the data this attempt's body carries,
	// whose disclosure is recorded as the connection comes (recording);
	// unspecified for a body that carries none.
	toRecord           familiesv1.InformationKind
	url, secret, owner string
	previous           string // a rotated secret still in its grace
	audience           string
	full               bool
	// outsider: the owner is an outside system, whose notifications about
	// a family go only under a consent (see body).
	outsider bool
}

func (p *pending) name() string {
	return deliveryName(p.clinic, p.subscription, p.id)
}

// disclosureRequestID is the request id under which the delivery's
// disclosure is recorded: a hash, so that it cannot meet an id someone
// chose for a call of their own (the receiver learns the delivery's id).
func (p *pending) disclosureRequestID() string {
	h := sha256.Sum256(fmt.Appendf(nil, "webhook\x00%s\x00%s\x00%d", p.subscription, p.id, p.replays))
	return "webhook-" + hex.EncodeToString(h[:20])
}

// Once sends the deliveries that are due now and first in line for their
// subscription and resource, as many as there are free slots, waits for
// them, and returns how many it attempted. A claimed delivery never waits
// for a free slot while its lease runs out (another sender would claim it
// again and send it twice).
func (s *Sender) Once(ctx context.Context) (int, error) {
	batch, claimErr := s.claimFree(ctx)
	// A claim that failed after leasing some deliveries still sends those:
	// left alone they would wait out their lease and lose an attempt.
	var wg sync.WaitGroup
	var mu sync.Mutex
	firstErr := claimErr
	for _, p := range batch {
		wg.Add(1)
		s.start(ctx, p, func(err error) {
			defer wg.Done()
			if err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := s.prune(ctx, time.Now()); err != nil && firstErr == nil {
		firstErr = err
	}
	return len(batch), firstErr
}

// claim leases up to limit due deliveries that have no earlier PENDING
// delivery of the same subscription and resource, and counts the attempt
// now: a sender that dies mid-send leaves the lease to expire and the
// delivery to be sent again (at least once), never forgotten. The attempt
// number fences the outcome: a sender whose lease expired cannot overwrite
// the outcome of the one that claimed the delivery after it.
//
// The PENDING state is the literal 1 so that the partial indexes
// deliveries_due and deliveries_order match.
func (s *Sender) claim(ctx context.Context, limit int, sh share) ([]*pending, error) {
	ctx = pgdb.WithClinic(ctx, pgdb.SystemScope)
	// One send is up to four stretches of Timeout each (the consent check;
	// the connection; the disclosure's record as it comes, with the
	// attempt's clock stopped; the POST, its clock started again), plus the
	// reads and writes around them. A lease that ran out mid-send would let
	// another sender claim the delivery and send it twice.
	lease := 4*s.cfg.Timeout + 30*time.Second
	// A few per subscription at a time, those under way counted, so that
	// one receiver that hangs cannot hold every slot while others wait.
	perSubscription := s.perSubscription()
	busyIDs, busyN := make([]string, 0, len(sh.busy)), make([]int32, 0, len(sh.busy))
	for id, n := range sh.busy {
		busyIDs, busyN = append(busyIDs, id), append(busyN, int32(n))
	}
	rows, err := s.cfg.DB.Query(ctx, `WITH ranked AS (
			SELECT h.seq, h.subscription_id, h.next_attempt_time,
				row_number() OVER (PARTITION BY h.subscription_id ORDER BY h.next_attempt_time, h.seq) AS n
			FROM deliveries h
			WHERE h.state = 1 AND h.next_attempt_time <= now()
				AND NOT EXISTS (SELECT 1 FROM deliveries e
					WHERE e.subscription_id = h.subscription_id AND e.resource = h.resource
						AND e.state = 1 AND e.seq < h.seq)
				-- not while its receiver asked for a pause
				AND NOT EXISTS (SELECT 1 FROM subscriptions p
					WHERE p.clinic = h.clinic AND p.id = h.subscription_id AND p.paused_until > now())),
		-- within each subscription's share: its place in the turn counts
		-- its sends under way
		shared AS (
			SELECT r.seq, r.next_attempt_time, coalesce(r.subscription_id = ANY($6::text[]), false) AS slow,
				r.n + coalesce((SELECT b.n FROM unnest($4::text[], $5::int[]) b(id, n) WHERE b.id = r.subscription_id), 0) AS turn
			FROM ranked r),
		-- and the slow subscriptions' probes, to the oldest due first
		probed AS (
			SELECT x.seq, x.turn FROM (SELECT s.*, row_number() OVER (PARTITION BY s.slow ORDER BY s.next_attempt_time, s.seq) AS g
				FROM shared s WHERE s.turn <= $3) x
			WHERE NOT x.slow OR x.g <= $7),
		-- Subscriptions take turns, the oldest due first within a turn:
		-- one with a backlog, or with sends under way, does not hold
		-- every slot while another's notifications wait behind it.
		heads AS (
			SELECT h.clinic, h.subscription_id, h.id FROM deliveries h JOIN probed p ON p.seq = h.seq
			-- checked again on the locked row: another sender may have
			-- claimed it meanwhile
			WHERE h.state = 1 AND h.next_attempt_time <= now()
			ORDER BY p.turn, h.next_attempt_time, h.seq
			LIMIT $1
			FOR UPDATE OF h SKIP LOCKED)
		UPDATE deliveries d SET next_attempt_time = now() + $2::interval, attempts = d.attempts + 1, claims = d.claims + 1,
			first_try_time = coalesce(d.first_try_time, now())
		FROM heads, subscriptions s
		WHERE d.clinic = heads.clinic AND d.subscription_id = heads.subscription_id AND d.id = heads.id
			AND s.clinic = d.clinic AND s.id = d.subscription_id
		RETURNING d.clinic, d.subscription_id, d.id, d.seq, d.event_type, d.topic, d.resource, d.family, d.member_id, d.payload,
			d.attempts, d.claims, d.own_failures, d.replays, d.record_unsure, d.create_time, d.first_try_time, d.refusals, d.first_refusal_time,
			s.url, s.owner, s.payload, s.audience, s.outsider`,
		limit, lease, perSubscription, busyIDs, busyN, sh.slow, sh.probes)
	if err != nil {
		return nil, fmt.Errorf("webhooks: claim: %w", err)
	}
	defer rows.Close()
	var out []*pending
	for rows.Next() {
		p := &pending{}
		var topic, kind int16
		var member *string
		if err := rows.Scan(&p.clinic, &p.subscription, &p.id, &p.seq, &p.eventType, &topic, &p.resource, &p.family, &member, &p.payload,
			&p.attempts, &p.claims, &p.ownFailures, &p.replays, &p.recordUnsure, &p.created, &p.firstTry, &p.refusals, &p.firstRefusal, &p.url, &p.owner, &kind, &p.audience, &p.outsider); err != nil {
			return nil, fmt.Errorf("webhooks: claim: %w", err)
		}
		if member != nil {
			p.member, p.memberKnown = *member, true
		}
		p.topic = webhooksv1.Topic(topic)
		p.full = webhooksv1.PayloadKind(kind) == webhooksv1.PayloadKind_PAYLOAD_KIND_FULL && p.payload != nil
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("webhooks: claim: %w", err)
	}
	return out, nil
}

// ownRetry is the least wait after a try that failed on Handoff's side.
const ownRetry = 30 * time.Second

// ownWait is the wait after a try that failed on Handoff's side, the
// delivery's before failed so already in a row: the receivers' backoff,
// from twice ownRetry, whose equal jitter keeps it at least ownRetry and
// spreads it at the limit too.
func ownWait(before int, limit time.Duration, rnd func() float64) time.Duration {
	return Backoff(before+1, 2*ownRetry, limit, rnd)
}

// errOwnSide marks an attempt that failed before anything was sent, for a
// reason of Handoff's own.
var errOwnSide = errors.New("not sent: Handoff could not prepare it")

// errRefused marks an own-side failure that waiting will not cure: the
// families service refused the sender itself (its token, its role), so an
// operator must act. It is errOwnSide too: the receiver is not to blame.
var errRefused = fmt.Errorf("refused to the sender: %w", errOwnSide)

// errRecordUnsure marks an own-side failure of the call that records the
// disclosure: it may have been recorded, and a second call under its
// request id gets the stored answer (the families service checks the
// consent again before it gives one). The try is given back, as for any
// own-side failure. The delivery is still marked (record_unsure) for a
// sender of the release before, during a rolling update, which then
// checks the consent first on its next try; this release checks it before
// every record (body, then recording).
var errRecordUnsure = fmt.Errorf("the disclosure record's answer was lost: %w", errOwnSide)

// errWithheld marks a notification an outside system may not receive: no
// consent of the family covers it. It is withdrawn, not retried: a consent
// given later covers the notifications that follow it.
var errWithheld = errors.New("withheld: no consent of the family covers telling the subscriber")

// errUndecodable marks a FULL payload this sender cannot read: Handoff's
// failure, tried again (a newer sender reads it) until undecodableFor has
// passed since its first try, when it is dead (it would otherwise hold back
// its resource's later notifications for good).
var errUndecodable = fmt.Errorf("Handoff could not read the event: %w", errOwnSide)

// undecodableFor is far longer than a rolling deploy.
const undecodableFor = 24 * time.Hour

// errSecretUnreadable marks a delivery whose subscription's secret does not
// open with this sender's key: Handoff's failure, tried again and never a
// dead letter. A replica started with a wrong key, or one of the release
// before while the keys change in a single rollout (reseal.go), would
// otherwise make dead letters of every clinic's deliveries it claims; and
// a secret lost for good is mended by rotating it (the new one is sealed
// under the current key), after which the held deliveries go, in order.
var errSecretUnreadable = fmt.Errorf("signing secret unreadable with the configured key: %w", errOwnSide)

// settled bounds the write of an attempt's outcome, which goes on past the
// sender's shutdown (pgdb.Settle), in clinic's scope. An outcome left
// unwritten is sent again after the lease, and the receiver drops the
// repeat by its id.
func settled(ctx context.Context, clinic string) (context.Context, context.CancelFunc) {
	c, cancel := pgdb.Settle(ctx)
	return pgdb.WithClinic(c, clinic), cancel
}

// dead records p as a dead letter, fenced on its claim count. It keeps
// the payload, so that a replay can still send it in full.
func (s *Sender) dead(ctx context.Context, p *pending, reason string) error {
	rctx, cancel := settled(ctx, p.clinic)
	defer cancel()
	tag, err := s.cfg.DB.Exec(rctx, `UPDATE deliveries SET state = $4, last_error = $6, finish_time = now()
		WHERE clinic = $1 AND subscription_id = $2 AND id = $3 AND state = 1 AND claims = $5 AND attempts = $7`,
		p.clinic, p.subscription, p.id, stateDead, p.claims, reason, p.attempts)
	if err != nil {
		return fmt.Errorf("webhooks: record dead letter %s: %w", p.name(), err)
	}
	if tag.RowsAffected() == 0 {
		s.cfg.Log.Warn("webhook outcome superseded", "delivery", p.name(), "attempt", p.attempts)
		return nil
	}
	attempts.Add(rctx, 1, outcome("dead"))
	return nil
}

// send makes one attempt and records its outcome. The error is only for
// failures to record: a failed attempt is a normal outcome.
func (s *Sender) send(ctx context.Context, p *pending) error {
	log := s.cfg.Log.With("delivery", p.name(), "event_type", p.eventType)
	// The claim took a moment, in which the subscription may have been
	// deleted (its endpoint or secret leaked) or its secret rotated: what
	// was claimed must still be there to go, and is signed with the
	// secrets as they are now. Asked before the consent checks too, which
	// record the disclosure: one recorded for a delivery that never goes
	// would stand in the accounting of disclosures. The consent checks
	// take time: the connection's hook asks again (recording), before the
	// record and the first byte.
	due, err := s.current(ctx, p)
	var body []byte
	if err == nil && due {
		body, err = s.body(ctx, p)
	}
	if err == nil && !due {
		log.Info("webhook delivery gone before it was sent", "attempt", p.attempts)
		return nil
	}
	var status int
	if err == nil {
		status, err = s.post(ctx, p, body)
		if errors.Is(err, errGone) {
			log.Info("webhook delivery gone as its connection came: not sent", "attempt", p.attempts)
			return nil
		}
	}
	// Every outcome is fenced on the claim count, which nothing resets, and
	// the attempt count, which a sender of the release before raises alone
	// (during a rolling update): if this sender's lease expired and another
	// sender claimed the delivery since (after a replay too), the row has
	// a higher count and this sender's outcome changes nothing.
	rctx, cancel := settled(ctx, p.clinic)
	defer cancel()
	if err == nil {
		// Recorded even while shutting down: the receiver has it, and
		// leaving it to the lease would send it again.
		// A delivery withdrawn while it was on its way (the reminder was
		// handled meanwhile) went out all the same: it is recorded as
		// delivered, not as never sent.
		tag, uerr := s.cfg.DB.Exec(rctx, `UPDATE deliveries SET state = $4, deliver_time = now(), finish_time = now(), last_error = '', payload = NULL
			WHERE clinic = $1 AND subscription_id = $2 AND id = $3 AND state IN (1, 4) AND claims = $5 AND attempts = $6`,
			p.clinic, p.subscription, p.id, stateDelivered, p.claims, p.attempts)
		if uerr != nil {
			return fmt.Errorf("webhooks: record delivery %s: %w", p.name(), uerr)
		}
		if tag.RowsAffected() == 0 {
			log.Warn("webhook outcome superseded", "attempt", p.attempts)
			return nil
		}
		attempts.Add(rctx, 1, outcome("delivered"))
		log.Debug("webhook delivered", "status", status, "attempt", p.attempts)
		return nil
	}
	if ctx.Err() != nil {
		return nil // shutting down: the lease expires and the delivery is retried
	}
	if errors.Is(err, errWithheld) {
		tag, uerr := s.cfg.DB.Exec(rctx, `UPDATE deliveries SET state = $4, last_error = $6, payload = NULL, finish_time = now()
			WHERE clinic = $1 AND subscription_id = $2 AND id = $3 AND state = 1 AND claims = $5 AND attempts = $7`,
			p.clinic, p.subscription, p.id, stateWithdrawn, p.claims, errWithheld.Error(), p.attempts)
		if uerr != nil {
			return fmt.Errorf("webhooks: record withheld %s: %w", p.name(), uerr)
		}
		if tag.RowsAffected() > 0 {
			attempts.Add(rctx, 1, outcome("withheld"))
		}
		return nil
	}
	reason := describe(err)
	// The receiver said when it can take more (429 or 503 with
	// Retry-After): not before that, but no later than the longest backoff,
	// so that a receiver cannot hold back its notifications (and the later
	// ones of the same resource) for days with one header. Nor any other of
	// its notifications: each would be refused the same way, and use up an
	// attempt; so too when this one's last attempt makes it a dead letter.
	// Best effort: on a failure to record it, they are sent and refused as
	// before.
	var pause time.Duration
	if te := (throttledError{}); errors.As(err, &te) {
		pause = min(te.after, s.cfg.MaxBackoff)
		if _, perr := s.cfg.DB.Exec(rctx, `UPDATE subscriptions SET paused_until = now() + $3::interval
			WHERE clinic = $1 AND id = $2 AND (paused_until IS NULL OR paused_until < now() + $3::interval)`,
			p.clinic, p.subscription, pause); perr != nil {
			log.Warn("webhook receiver's pause not recorded", "error", telemetry.LogSafe(perr))
		}
	}
	// A failure on Handoff's side (the consent could not be checked) is not
	// the receiver's: it never makes a dead letter, only a later try; but
	// for an event no sender has read in a day. A receiver that answers the
	// endpoint is gone, or refuses what it is sent, is not tried for hours:
	// each try of a full notification sends the record again, and holds
	// back its resource's later notifications meanwhile.
	if (p.attempts >= s.cfg.MaxAttempts && !errors.Is(err, errOwnSide)) ||
		(errors.Is(err, errUndecodable) && time.Since(p.firstTry) > undecodableFor) ||
		refusedFor(err, p.refusals+1, p.firstRefusal != nil && time.Since(*p.firstRefusal) >= s.cfg.RefusedFor) {
		if err := s.dead(ctx, p, reason); err != nil {
			return err
		}
		log.Warn("webhook dead-lettered", "attempts", p.attempts, "reason", reason)
		return nil
	}
	wait := max(Backoff(p.attempts, s.cfg.BaseBackoff, s.cfg.MaxBackoff, rand.Float64), pause)
	giveBack := 0
	if errors.Is(err, errOwnSide) {
		// Nothing reached the receiver: the try is given back, so the
		// attempt's backoff does not grow. The wait does, with the tries
		// failed on this side in a row (from ownRetry, doubling, up to
		// MaxBackoff), spread at random: through an outage or a revoked
		// token, every pending delivery would otherwise ask the families
		// service again, and log, every 30 s in step, and all meet it at
		// once when it comes back.
		giveBack = 1
		wait = max(wait, ownWait(p.ownFailures, s.cfg.MaxBackoff, rand.Float64))
	}
	tag, uerr := s.cfg.DB.Exec(rctx, `UPDATE deliveries SET next_attempt_time = now() + $5::interval, last_error = $6,
		attempts = attempts - $7, record_unsure = record_unsure OR $8, refusals = CASE WHEN $9 THEN refusals + 1 WHEN $7 = 1 THEN refusals ELSE 0 END,
		first_refusal_time = CASE WHEN $9 AND refusals > 0 THEN coalesce(first_refusal_time, now()) WHEN $9 THEN now() END,
		own_failures = CASE WHEN $7 = 1 THEN own_failures + 1 ELSE 0 END
		WHERE clinic = $1 AND subscription_id = $2 AND id = $3 AND state = 1 AND claims = $4 AND attempts = $10`,
		p.clinic, p.subscription, p.id, p.claims, wait, reason, giveBack, errors.Is(err, errRecordUnsure), refusal(err), p.attempts)
	if uerr != nil {
		return fmt.Errorf("webhooks: record retry %s: %w", p.name(), uerr)
	}
	if tag.RowsAffected() == 0 {
		// Withdrawn on its way (the reminder was handled), or claimed
		// again by another sender: nothing will be retried here.
		log.Warn("webhook outcome superseded", "attempt", p.attempts)
		return nil
	}
	switch {
	case errors.Is(err, errSecretUnreadable):
		attempts.Add(rctx, 1, outcome("not_sent"))
		log.Error("webhook held: its signing secret does not open with this process's key; check HANDOFF_WEBHOOK_SECRET_KEY", "retry_in", wait.String())
	case errors.Is(err, errRefused):
		attempts.Add(rctx, 1, outcome("refused_to_sender"))
		log.Error("webhook held: the families service refuses the sender; check its token and role", "reason", reason, "retry_in", wait.String())
	case errors.Is(err, errOwnSide):
		attempts.Add(rctx, 1, outcome("not_sent"))
		log.Warn("webhook not sent", "reason", reason, "retry_in", wait.String())
	default:
		attempts.Add(rctx, 1, outcome("retry"))
		log.Info("webhook attempt failed", "attempt", p.attempts, "reason", reason, "retry_in", wait.String())
	}
	return nil
}

// Backoff is the wait after the attempt-th failed attempt: base doubled per
// earlier failure, capped at limit, with "equal jitter" (half of it fixed,
// half random) so that receivers coming back are not hit by every sender
// at once. rnd returns a number in [0, 1).
func Backoff(attempt int, base, limit time.Duration, rnd func() float64) time.Duration {
	d := base
	for i := 1; i < attempt && d < limit; i++ {
		d *= 2
	}
	if d > limit || d <= 0 {
		d = limit
	}
	return d/2 + time.Duration(rnd()*float64(d/2))
}

// notification is the JSON body of a POST. ID is the delivery id, equal to
// the (unsigned) Handoff-Webhook-Id header: receivers deduplicate on this
// signed copy. Sequence is the delivery's place in the order of enqueueing,
// which grows per subscription and resource: receivers keep the highest
// applied per resource and ignore older ones (a replayed dead letter).
type notification struct {
	ID       string          `json:"id"`
	Sequence int64           `json:"sequence"`
	Type     string          `json:"type"`
	Topic    string          `json:"topic"`
	Resource string          `json:"resource"`
	Time     string          `json:"time"`
	Data     json.RawMessage `json:"data,omitempty"`
	Notice   string          `json:"notice,omitempty"`
}

// body builds the notification. A FULL subscription gets the data only if
// the families service, asked anew for every attempt so that a revocation
// counts at once, confirms a consent to the kind of information the payload
// is (by its message type, not by the topic); post records the disclosure
// as the connection to the receiver comes (recording). A
// payload of any other type is never disclosed. An outside system (the
// EHR) hears of a family's record at all only under such a consent, as its
// reads through the API do: without one the notification is withheld
// (errWithheld), not sent with identifiers only.
func (s *Sender) body(ctx context.Context, p *pending) ([]byte, error) {
	p.toRecord = familiesv1.InformationKind_INFORMATION_KIND_UNSPECIFIED
	n := notification{
		ID: p.id, Sequence: p.seq, Type: p.eventType, Topic: strings.TrimPrefix(p.topic.String(), "TOPIC_"),
		Resource: p.resource, Time: p.created.UTC().Format(time.RFC3339Nano),
	}
	if p.full && p.family != "" {
		msg, err := decodePayload(p.payload)
		if err != nil {
			// Not the receiver's fault: most likely a sender older than the
			// one that enqueued it (a rolling deploy), which a newer one
			// will read.
			return nil, fmt.Errorf("%w: %w", errUndecodable, err)
		}
		if !p.memberKnown {
			// Enqueued before the member was kept: the payload says.
			if ref, ok := msg.(*referralsv1.Referral); ok {
				p.member = consentgate.ReferralPatient(ref).Member
			}
			p.memberKnown = true
		}
		msg, disclosable := viewFor(p.audience, msg)
		if info, ok := informationOf(msg); disclosable && ok {
			// Checked now, recorded only as the body goes (post): an
			// attempt that never reaches the receiver (its name does not
			// resolve, it refuses the connection, its certificate is bad)
			// disclosed nothing, and the accounting must not say it did.
			ok, err := s.disclose(ctx, p, info, false)
			if err != nil {
				return nil, err
			}
			if ok && s.cfg.Families != nil {
				data, err := protojson.Marshal(msg)
				if err != nil {
					return nil, fmt.Errorf("encode payload: %w", err)
				}
				n.Data, n.Notice = data, Notice
				p.toRecord = info
			} else if p.outsider && s.cfg.Families != nil {
				return nil, errWithheld
			}
		}
	}
	if n.Data == nil && p.outsider && p.family != "" && s.cfg.Families != nil {
		if !p.memberKnown && strings.HasPrefix(p.eventType, referralEvents) {
			// A referral's, enqueued before the member was kept and with
			// no payload to read it from: it may be a member's own, which
			// the loved one's consent does not cover. The EHR reads the
			// referral through the API, where its patient's consent is
			// asked.
			return nil, errWithheld
		}
		// Identifiers only, checked and not recorded: nothing of the record
		// goes, but that it changed is the family's to allow.
		ok, err := s.disclose(ctx, p, eventInformation(p.eventType), false)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, errWithheld
		}
	}
	if p.outsider && p.family == "" && s.cfg.Families != nil {
		// Every record an outside system subscribes to is a family's; the
		// sink names none when it could not read the payload (a type a
		// newer release wrote). No family, no consent to ask: withheld,
		// not sent on without one.
		return nil, errWithheld
	}
	if n.Data == nil {
		n.Type = idOnlyType(p.eventType)
	}
	b, err := json.Marshal(n)
	if err != nil {
		return nil, fmt.Errorf("encode notification: %w", err)
	}
	return b, nil
}

// idOnlyType is the type an identifiers-only notification carries: which
// kind of resource changed, not how. The event's own type names the
// transition (a referral completed, a no-show), and that is the
// patient's record too: without a consent that covers it, the receiver
// reads the resource through the API, where consent is checked and the
// disclosure recorded.
func idOnlyType(eventType string) string {
	i := strings.LastIndexByte(eventType, '.')
	if i < 0 {
		return eventType
	}
	return eventType[:i+1] + "changed"
}

// viewFor cuts msg to what the subscription's audience may read through
// the API, or reports false when it may read none of it: the EHR gets
// referrals whole and interventions as outside systems see them
// (consentgate.Appointment), the reminder automation reminders only.
func viewFor(audience string, msg proto.Message) (proto.Message, bool) {
	switch m := msg.(type) {
	case *referralsv1.Referral:
		return m, audience == audienceEHR
	case *interventionsv1.Intervention:
		if audience != audienceEHR {
			return m, false
		}
		// Without the version and update time: the event carries the
		// intervention's own, which move with changes the appointment
		// leaves out (a check-in after a refusal). The API gives the EHR
		// the version of what it sees.
		a := consentgate.Appointment(m)
		a.Etag, a.UpdateTime = "", nil
		return a, true
	case *interventionsv1.Reminder:
		if audience != audienceReminders {
			return m, false
		}
		// As the automation reads it through the API.
		return consentgate.Reminder(m), true
	}
	return msg, false
}

// disclose asks the families service to check consent and, with record,
// record the disclosure. It answers false when no consent covers it (none
// given, or revoked or expired since), so the notification goes out with
// identifiers only. A family deleted since keeps its consents (42 CFR
// 2.31), and they still answer. Consent is checked anew for every
// attempt, so that a revocation counts at once, but
// a delivery is recorded once however many attempts it takes (and once
// more for each replay of it as a dead letter, and again if the consent it
// was recorded under no longer covers it while another does): the
// record's request id is derived from the delivery's id and replays.
//
// body checks (validate_only) and post records, once a connection to the
// receiver stands and before any byte of the request goes (recording):
// from then on it may reach the receiver whatever its answer, and before
// then it cannot.
func (s *Sender) disclose(ctx context.Context, p *pending, info familiesv1.InformationKind, record bool) (bool, error) {
	if s.cfg.Families == nil {
		return false, nil
	}
	d := &familiesv1.Disclosure{
		Recipient: p.owner, Information: info, Purpose: familiesv1.Purpose_PURPOSE_TREATMENT,
		Resource: p.resource, Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_WEBHOOK, MemberId: p.member,
	}
	// A record under the same request id on a later attempt is answered
	// from the first attempt's record while the consent it names still
	// covers, and recorded anew under another that does.
	req := &familiesv1.CreateDisclosureRequest{Parent: p.family, Disclosure: d, ValidateOnly: true}
	if record {
		req = &familiesv1.CreateDisclosureRequest{Parent: p.family, Disclosure: d, RequestId: p.disclosureRequestID()}
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	_, err := s.cfg.Families.CreateDisclosure(cctx, req)
	cancel()
	switch status.Code(err) {
	case codes.OK:
		return true, nil
	case codes.FailedPrecondition, codes.NotFound:
		return false, nil
	// A method the families service lacks (a rollout half done) passes
	// with time, like an outage: it is left to the default below.
	case codes.Unauthenticated, codes.PermissionDenied:
		return false, fmt.Errorf("consent check: %s: %w", status.Code(err), errRefused)
	case codes.InvalidArgument:
		// This delivery's request, not the sender's token (a
		// subscriber whose id no disclosure can name): an attempt of
		// its own, so that it ends as a dead letter instead of holding
		// back its resource for good.
		return false, fmt.Errorf("consent check refused this delivery: %s", status.Convert(err).Message())
	default:
		if record {
			return false, fmt.Errorf("disclosure record: %s: %w", status.Code(err), errRecordUnsure)
		}
		return false, fmt.Errorf("consent check: %s: %w", status.Code(err), errOwnSide)
	}
}

// errLapsed marks a disclosure refused as its body was about to go: the
// consent checked for it ended in between. Nothing was sent; the next
// attempt checks again, and sends identifiers only or withholds it.
var errLapsed = fmt.Errorf("the consent ended as the notification was sent: %w", errOwnSide)

// errGone marks an attempt whose delivery went as its connection came: its
// subscription deleted (its endpoint or secret leaked), the delivery
// withdrawn, or claimed by another sender once this one's lease ran out.
// Nothing was sent, and there is nothing to record of it.
var errGone = errors.New("the delivery went as its connection came")

// recording checks, as the transport gets its connection for p's request
// (TLS included) and before it writes a byte, that the delivery is still
// this attempt's to send (current): connecting takes up to the attempt's
// timeout, in which an administrator may delete the subscription. It
// then records the disclosure of what body carries: an attempt that never
// reaches the receiver (its name does not resolve, it refuses the
// connection, its certificate is bad) disclosed nothing, and the
// accounting must not say it did. A failed check or record empties body,
// so that the request fails its Content-Length before anything leaves its
// buffer; recorded then reports whether the record was asked for, and
// the failure. The attempt's clock stops meanwhile: that time is not the
// receiver's. Once the check passes, sign signs the request again with the
// secrets just read: a rotation during the consent check or the
// connection's setup signs too, for a receiver that switched at once.
func (s *Sender) recording(ctx context.Context, p *pending, body *bytes.Reader, clock *attemptClock, sign func()) (_ context.Context, recorded func() (bool, error)) {
	var checked, asked bool
	var err error
	record := func() {
		if checked {
			return
		}
		checked = true
		if !clock.pause() {
			err = errAttemptTimeout
			body.Reset(nil)
			return
		}
		due, cerr := s.current(ctx, p)
		switch {
		case cerr != nil:
			err = cerr
		case !due:
			err = errGone
		case p.toRecord != familiesv1.InformationKind_INFORMATION_KIND_UNSPECIFIED:
			asked = true
			var ok bool
			if ok, err = s.disclose(ctx, p, p.toRecord, true); err == nil && !ok {
				err = errLapsed
			}
		}
		if err != nil {
			clock.skip()
			body.Reset(nil)
			return
		}
		sign()
		if asked {
			clock.restart()
		} else {
			// Only checked: the connection's time stays the receiver's.
			clock.resume()
		}
	}
	traced := httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { record() }})
	return traced, func() (bool, error) { return asked, err }
}

// attemptClock bounds one HTTP attempt to Timeout, as the client's own
// timeout would, but stops while the disclosure is recorded as the
// connection stands: a slow families service must not eat the receiver's
// time, and turn into a timeout blamed on it after the record was made.
type attemptClock struct {
	limit  time.Duration
	timer  *time.Timer
	began  time.Time // when the receiver's time began, for the stall check
	paused time.Time // when pause stopped it
	onBeg  func(time.Time)
	cancel context.CancelCauseFunc
}

func newAttemptClock(ctx context.Context, limit time.Duration, onBegin func(time.Time)) (context.Context, *attemptClock) {
	ctx, cancel := context.WithCancelCause(ctx)
	c := &attemptClock{limit: limit, cancel: cancel, onBeg: onBegin, began: time.Now()}
	c.timer = time.AfterFunc(limit, func() { cancel(errAttemptTimeout) })
	return ctx, c
}

// pause stops the clock; false if it had run out already. The attempt is
// not the receiver's meanwhile (onBegin hears a zero time).
func (c *attemptClock) pause() bool {
	if !c.timer.Stop() {
		return false
	}
	c.paused = time.Now()
	if c.onBeg != nil {
		c.onBeg(time.Time{})
	}
	return true
}

// skip moves the start of the receiver's time past the pause, for an
// attempt that ends in it: the time of the check or record that failed
// is not the receiver's.
func (c *attemptClock) skip() { c.began = c.began.Add(time.Since(c.paused)) }

// resume starts the clock again where pause stopped it: the time before
// the pause (connecting) stays the attempt's, the pause's does not.
func (c *attemptClock) resume() {
	used := c.paused.Sub(c.began)
	c.skip()
	if c.onBeg != nil {
		c.onBeg(c.began)
	}
	c.timer.Reset(c.limit - used)
}

// restart gives the attempt its whole time again, from now: after a
// disclosure record, which may have waited on the families service.
func (c *attemptClock) restart() {
	c.began = time.Now()
	if c.onBeg != nil {
		c.onBeg(c.began)
	}
	c.timer.Reset(c.limit)
}

// stop ends the attempt's clock and context.
func (c *attemptClock) stop() {
	c.timer.Stop()
	c.cancel(nil)
}

// errAttemptTimeout is an attempt that ran out of time: a timeout, as a
// net.Error, so that it is described as one.
var errAttemptTimeout error = attemptTimeout{}

type attemptTimeout struct{}

func (attemptTimeout) Error() string   { return "timeout" }
func (attemptTimeout) Timeout() bool   { return true }
func (attemptTimeout) Temporary() bool { return true }

// eventInformation is the kind of information an event's notification
// tells of: a referral's, REFERRALS; an intervention's or a reminder's,
// APPOINTMENTS (as informationOf, by the event when there is no payload).
func eventInformation(eventType string) familiesv1.InformationKind {
	if strings.HasPrefix(eventType, referralEvents) {
		return familiesv1.InformationKind_INFORMATION_KIND_REFERRALS
	}
	return familiesv1.InformationKind_INFORMATION_KIND_APPOINTMENTS
}

// decodePayload opens a stored event payload (a serialized Any).
func decodePayload(b []byte) (proto.Message, error) {
	a := &anypb.Any{}
	if err := proto.Unmarshal(b, a); err != nil {
		return nil, fmt.Errorf("decode payload: %w", err)
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		return nil, fmt.Errorf("decode payload: %w", err)
	}
	return m, nil
}

// refusedAttempts is how many answers in a row may refuse a delivery (400,
// 401, 403, 404: a wrong route, a lost secret) before it is a dead letter,
// once they have gone on for SenderConfig.RefusedFor.
const refusedAttempts = 3

// refusal reports whether err is a receiver's refusal of what it was sent,
// or the callback's name resolving to an address not public: as lasting
// as a wrong route, and no more likely to mend itself within the hours
// MaxAttempts would try it for.
func refusal(err error) bool {
	if errors.Is(err, errPrivate) {
		return true
	}
	var st httpStatusError
	if !errors.As(err, &st) {
		return false
	}
	switch st {
	case http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound:
		return true
	}
	return false
}

// refusedFor reports whether err ends the delivery, n being the refusals
// in a row counting err and long whether they went on for
// SenderConfig.RefusedFor: 410 Gone at once, a refusal the
// refusedAttempts-th in a row once long.
func refusedFor(err error, n int, long bool) bool {
	var st httpStatusError
	if errors.As(err, &st) && st == http.StatusGone {
		return true
	}
	return refusal(err) && n >= refusedAttempts && long
}

// current reports whether the delivery is still this attempt's to send,
// and reads the subscription's secrets as they are now into p: a secret
// rotated since the claim signs (the receiver that switched at once
// verifies it), and the one before signs beside it while in its grace.
func (s *Sender) current(ctx context.Context, p *pending) (bool, error) {
	var secret, previous string
	err := s.cfg.DB.QueryRow(pgdb.WithClinic(ctx, p.clinic), `SELECT s.secret,
			CASE WHEN s.previous_secret_expire_time > now() THEN s.previous_secret ELSE '' END
		FROM deliveries d JOIN subscriptions s ON s.clinic = d.clinic AND s.id = d.subscription_id
		WHERE d.clinic = $1 AND d.subscription_id = $2 AND d.id = $3 AND d.claims = $4 AND d.attempts = $5 AND d.state = 1`,
		p.clinic, p.subscription, p.id, p.claims, p.attempts).Scan(&secret, &previous)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%w: webhooks: check %s before sending: %w", errOwnSide, p.name(), err)
	}
	name := subscriptionName(p.clinic, p.subscription)
	if p.secret, err = s.cfg.Secrets.open(name, secret); err != nil {
		return false, errSecretUnreadable
	}
	p.previous = ""
	if previous != "" {
		// A rotated secret that does not open only loses its second
		// signature: the new one signs.
		if p.previous, err = s.cfg.Secrets.open(name, previous); err != nil {
			s.cfg.Log.Warn("webhook previous secret unreadable", "delivery", p.name())
			p.previous = ""
		}
	}
	return true, nil
}

// httpStatusError is a response outside 2xx.
type httpStatusError int

func (e httpStatusError) Error() string { return fmt.Sprintf("HTTP %d", int(e)) }

// post sends the signed notification and returns the response status.
func (s *Sender) post(ctx context.Context, p *pending, body []byte) (int, error) {
	content := bytes.NewReader(body)
	ctx, clock := newAttemptClock(ctx, s.cfg.Timeout, func(at time.Time) {
		s.fmu.Lock()
		if at.IsZero() {
			delete(s.posting, p) // paused: not the receiver's time
		} else {
			s.posting[p] = at
		}
		s.fmu.Unlock()
	})
	defer clock.stop()
	// Signed as the request is built, and again as its connection comes
	// (recording), after the secrets are read for the last time; the
	// transport writes no header before then.
	var req *http.Request
	sign := func() {
		var previous []string
		if p.previous != "" {
			// A receiver still on the old secret accepts the notification too.
			previous = append(previous, p.previous)
		}
		req.Header.Set(SignatureHeader, Sign(p.secret, time.Now(), body, previous...))
	}
	rctx, recorded := s.recording(ctx, p, content, clock, sign)
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, p.url, content)
	if err != nil {
		return 0, fmt.Errorf("build request: %w", err)
	}
	// No GetBody: the transport must not send the body again on a
	// connection of its own choosing, past the record.
	req.GetBody = nil
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Handoff-Webhooks/1")
	req.Header.Set(IDHeader, p.id)
	sign()
	s.fmu.Lock()
	if s.posting == nil {
		s.posting = map[*pending]time.Time{}
	}
	s.posting[p] = clock.began
	s.fmu.Unlock()
	resp, err := s.client.Do(req)
	// From the record's end, if one was made as the connection came:
	// the receiver's own time.
	began := clock.began
	asked, recErr := recorded()
	if recErr != nil {
		// Not sent: the record failed as the connection came.
		if err == nil {
			resp.Body.Close()
		}
		s.posted(p, began, false)
		return 0, recErr
	}
	if err != nil {
		s.posted(p, began, false)
		return 0, err
	}
	defer resp.Body.Close()
	if !asked && p.toRecord != familiesv1.InformationKind_INFORMATION_KIND_UNSPECIFIED {
		// A transport that tells no connection (not net/http's own) sent
		// it unrecorded: recorded now, late rather than never.
		ok, derr := s.disclose(ctx, p, p.toRecord, true)
		if derr != nil {
			s.posted(p, began, false)
			return 0, fmt.Errorf("record the disclosure sent: %w", derr)
		}
		if !ok {
			s.cfg.Log.Warn("webhook sent as its consent ended: its disclosure could not be recorded", "delivery", p.name())
		}
	}
	// Timed to the end of the body: a receiver that answers its headers at
	// once and then trickles (or never ends) the body holds the slot as
	// long as one that hangs.
	_, rerr := io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	s.posted(p, began, rerr == nil)
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		if after, ok := retryAfter(resp, time.Now()); ok {
			return resp.StatusCode, throttledError{status: httpStatusError(resp.StatusCode), after: after}
		}
		return resp.StatusCode, httpStatusError(resp.StatusCode)
	}
	return resp.StatusCode, nil
}

// throttledError is a 429 or 503 that said when to come back
// (Retry-After). It is the status error too, for what the status decides.
type throttledError struct {
	status httpStatusError
	after  time.Duration
}

func (e throttledError) Error() string {
	return fmt.Sprintf("%v, retry after %v", e.status, e.after.Round(time.Second))
}

func (e throttledError) Unwrap() error { return e.status }

// retryAfter reads the Retry-After of a 429 Too Many Requests or a 503
// Service Unavailable: seconds, or an HTTP date (RFC 9110 10.2.3). Other
// statuses' and malformed values are ignored: the backoff stands.
func retryAfter(resp *http.Response, now time.Time) (time.Duration, bool) {
	if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusServiceUnavailable {
		return 0, false
	}
	v := strings.TrimSpace(resp.Header.Get("Retry-After"))
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseUint(v, 10, 32); err == nil {
		return time.Duration(secs) * time.Second, true
	}
	if at, err := http.ParseTime(v); err == nil {
		return max(at.Sub(now), 0), true
	}
	return 0, false
}

// describe says why an attempt failed, for last_error and the log, without
// the URL (which may carry a token of the receiver's).
func describe(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if errors.Is(err, errPrivate) {
		return errPrivate.Error()
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	// Cut on a character boundary: PostgreSQL refuses invalid UTF-8, and
	// an outcome that cannot be recorded is sent again, never dead.
	return clean(err.Error(), 300)
}
