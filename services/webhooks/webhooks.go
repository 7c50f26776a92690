// Package webhooks is the webhooks service: subscriptions of outside systems
// (the EHR, the reminder automation) to Handoff's changes, the sink that
// turns the services' outbox events into deliveries, and the sender that
// POSTs them signed, at least once and in order per resource, with retries,
// dead letters and replay. It owns the PostgreSQL schema "webhooks".
//
// What receivers must do. Check the Handoff-Webhook-Signature header (see
// Verify) before anything else. The Handoff-Webhook-Id header is not
// signed: it equals the body's "id", and receivers deduplicate on the
// signed body's "id", never on the header alone. The body's "sequence"
// grows with every notification of a subscription about one resource, in
// the order the changes happened; receivers keep the highest sequence they
// applied per resource and ignore a notification with a lower one. That is
// how a dead letter replayed after later notifications went out is
// recognised as old, not applied over newer state.
//
// Retention: a FULL delivery keeps its copy of the event while it may
// still be sent (PENDING, and DEAD so that a replay sends it in full); the
// copy is cleared when it is DELIVERED or WITHDRAWN, and deleting the
// subscription deletes its deliveries. Finished deliveries themselves are
// deleted after Keep.
package webhooks

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	webhooksv1 "github.com/handoff-health/handoff/gen/go/handoff/webhooks/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/consentgate"
	"github.com/handoff-health/handoff/services/idempotency"
	"github.com/handoff-health/handoff/services/pgdb"
)

// Schema is the PostgreSQL schema the service owns.
const Schema = "webhooks"

//go:embed migrations/*.sql
var migrations embed.FS

// Migrations are the service's migrations, shared tables first.
func Migrations() []pgdb.Source {
	return []pgdb.Source{
		{Name: "common", FS: pgdb.Common, Dir: "common"},
		{Name: "webhooks", FS: migrations, Dir: "migrations"},
	}
}

// Config tunes the service.
type Config struct {
	// AllowInsecure accepts http:// callback URLs (development and tests).
	AllowInsecure bool
	// AllowPrivate accepts callback URLs on loopback, private and
	// link-local addresses (development and tests).
	AllowPrivate bool
	// Secrets encrypts signing secrets at rest; nil stores them as they
	// are. The sender needs the same key.
	Secrets *SecretBox
	// Now is the clock; tests replace it.
	Now func() time.Time
	// Resolve looks up a callback URL's host when a subscription is made
	// (the system's resolver when nil; tests replace it).
	Resolve func(ctx context.Context, host string) ([]netip.Addr, error)
	// MaxPerOwner is how many subscriptions one owner may hold in a
	// clinic (DefaultMaxPerOwner when 0). Each is a relay's work on every
	// event it matches: a client looping on creates without request ids
	// would otherwise multiply every notification without bound.
	MaxPerOwner int
}

// DefaultMaxPerOwner is MaxPerOwner when unset: far more than one EHR
// integration needs (a URL per topic and payload kind is under 30).
const DefaultMaxPerOwner = 50

// Server implements webhooksv1.WebhooksServiceServer.
type Server struct {
	webhooksv1.UnimplementedWebhooksServiceServer
	db  *pgdb.DB
	cfg Config
}

// New returns a server whose queries run through db, as the application
// role and scoped to the caller's clinic.
func New(db *pgdb.DB, cfg Config) *Server {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxPerOwner <= 0 {
		cfg.MaxPerOwner = DefaultMaxPerOwner
	}
	if cfg.Resolve == nil {
		cfg.Resolve = lookupHost
	}
	return &Server{db: db, cfg: cfg}
}

const svc = "/handoff.webhooks.v1.WebhooksService/"

// Delivery states as stored.
const (
	statePending   = int16(webhooksv1.DeliveryState_DELIVERY_STATE_PENDING)
	stateDelivered = int16(webhooksv1.DeliveryState_DELIVERY_STATE_DELIVERED)
	stateDead      = int16(webhooksv1.DeliveryState_DELIVERY_STATE_DEAD)
	stateWithdrawn = int16(webhooksv1.DeliveryState_DELIVERY_STATE_WITHDRAWN)
)

func parseClinic(parent string) (string, error) {
	ids, err := aip.Parse(parent, "clinics")
	if err != nil {
		return "", apperr.Field("parent", "%v", err)
	}
	return ids[0], nil
}

func parseSubscription(field, name string) (clinic, id string, err error) {
	ids, err := aip.Parse(name, "clinics", "subscriptions")
	if err != nil {
		return "", "", apperr.Field(field, "%v", err)
	}
	return ids[0], ids[1], nil
}

func subscriptionName(clinic, id string) string {
	return aip.Name("clinics", clinic, "subscriptions", id)
}

// Audiences of FULL subscriptions: who the data is cut for.
const (
	audienceEHR       = "ehr"
	audienceReminders = "reminders"
)

// fullTopics are the topics whose data each audience may receive: what its
// role may read through the API. The EHR reads referrals and appointments,
// never reminders; the reminder automation reads reminders only.
var fullTopics = map[string][]webhooksv1.Topic{
	audienceEHR:       {webhooksv1.Topic_TOPIC_REFERRAL_CHANGED, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED},
	audienceReminders: {webhooksv1.Topic_TOPIC_REMINDER_DUE},
}

// readableTopics are the topics whose resources each role reads through
// the API. A subscription, even to identifiers, tells its owner when each
// of those resources changes; a role that may not read a resource must
// not learn that either.
var readableTopics = map[auth.Role][]webhooksv1.Topic{
	auth.RoleEHR:       {webhooksv1.Topic_TOPIC_REFERRAL_CHANGED, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED},
	auth.RoleReminders: {webhooksv1.Topic_TOPIC_REMINDER_DUE},
	auth.RoleClinicAdmin: {webhooksv1.Topic_TOPIC_REFERRAL_CHANGED, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED,
		webhooksv1.Topic_TOPIC_REMINDER_DUE},
}

// checkTopics refuses a topic the caller's roles do not read. A token
// holding the EHR role is the outside system whatever else it holds
// (consentgate.Outsider): it gets the EHR's topics only.
func checkTopics(ctx context.Context, topics []webhooksv1.Topic) error {
	p, _ := auth.FromContext(ctx)
	roles := p.Roles
	if _, outsider := consentgate.Outsider(ctx); outsider {
		roles = []auth.Role{auth.RoleEHR}
	}
	for _, t := range topics {
		readable := false
		for _, r := range roles {
			readable = readable || slices.Contains(readableTopics[r], t)
		}
		if !readable {
			return status.Errorf(codes.PermissionDenied, "your role does not read what %s announces, so it may not subscribe to it", t)
		}
	}
	return nil
}

// fullAudience is the audience a FULL subscription of the caller to topics
// is cut for. A FULL payload leaves the program, so it must never carry
// more than the caller could read through the API: staff subscribe to
// identifiers and read the rest themselves, and a topic whose data the
// caller's role may not read is refused rather than silently sent bare.
func fullAudience(ctx context.Context, topics []webhooksv1.Topic) (string, error) {
	p, _ := auth.FromContext(ctx)
	var audience string
	switch {
	// A token holding the EHR role is an outside system whatever else it
	// holds (consentgate.Outsider), so it gets the EHR's cut.
	case p.Has(auth.RoleEHR):
		audience = audienceEHR
	case p.Has(auth.RoleReminders):
		audience = audienceReminders
	default:
		return "", status.Error(codes.PermissionDenied,
			"only the EHR integration and the reminder automation receive full payloads; subscribe with PAYLOAD_KIND_ID_ONLY and read the resource through the API")
	}
	for _, t := range topics {
		if !slices.Contains(fullTopics[audience], t) {
			return "", apperr.Field("subscription.payload", "PAYLOAD_KIND_FULL is not available for %s to your role; subscribe to it with PAYLOAD_KIND_ID_ONLY", t)
		}
	}
	return audience, nil
}

// ownerFilter is the owner a caller is limited to: integrations see only
// their own subscriptions, clinic administrators all ("").
func ownerFilter(ctx context.Context) string {
	p, _ := auth.FromContext(ctx)
	// The EHR is an outside system whatever else its token holds
	// (consentgate.Outsider): an administrator role beside it must not
	// show it the clinic's other subscriptions.
	if _, outsider := consentgate.Outsider(ctx); p.Has(auth.RoleClinicAdmin) && !outsider {
		return ""
	}
	if p.Subject == "" {
		return "\x00" // matches no one: fail closed
	}
	return p.Subject
}

// CreateSubscription implements the API.
func (s *Server) CreateSubscription(ctx context.Context, req *webhooksv1.CreateSubscriptionRequest) (*webhooksv1.Subscription, error) {
	clinic, err := parseClinic(req.GetParent())
	if err != nil {
		return nil, err
	}
	if err := auth.CheckClinic(ctx, clinic, req.GetParent()); err != nil {
		return nil, err
	}
	// A retry gets the first answer (AIP-155) before the request is
	// checked again: what the checks ask of the world (the callback's
	// name's addresses) may have changed since, and a refusal now would
	// keep the one answer that carries the secret from the caller.
	if out, ok, err := idempotency.Stored(ctx, s.db, clinic, svc+"CreateSubscription", req.GetRequestId(), req, newSubscription); ok || err != nil {
		return s.openSecret(ctx, out, err)
	}
	sub := req.GetSubscription()
	if err := CheckURL(sub.GetUrl(), s.cfg.AllowInsecure, s.cfg.AllowPrivate); err != nil {
		return nil, apperr.Field("subscription.url", "%v", err)
	}
	if !s.cfg.AllowPrivate {
		// A name of an internal host is refused now, with the reason,
		// rather than accepted to fail every send for hours.
		u, _ := url.Parse(sub.GetUrl()) // CheckURL parsed it
		if err := resolvesPrivate(ctx, s.cfg.Resolve, u.Hostname()); err != nil {
			return nil, apperr.Field("subscription.url", "%v", err)
		}
	}
	if len(sub.GetTopics()) == 0 {
		return nil, apperr.Field("subscription.topics", "at least one topic is required")
	}
	if err := checkTopics(ctx, sub.GetTopics()); err != nil {
		return nil, err
	}
	payload := sub.GetPayload()
	if payload == webhooksv1.PayloadKind_PAYLOAD_KIND_UNSPECIFIED {
		payload = webhooksv1.PayloadKind_PAYLOAD_KIND_ID_ONLY
	}
	topics := make([]int16, 0, len(sub.GetTopics()))
	for _, t := range sub.GetTopics() {
		topics = append(topics, int16(t))
	}
	slices.Sort(topics)
	owner := auth.Actor(ctx)
	audience := ""
	if payload == webhooksv1.PayloadKind_PAYLOAD_KIND_FULL {
		if audience, err = fullAudience(ctx, sub.GetTopics()); err != nil {
			return nil, err
		}
	}
	// The answer kept for retries (AIP-155) holds the secret sealed, like
	// the table; it is opened only on the way out.
	var fresh bool
	out, err := idempotency.InTx(ctx, s.db, clinic, svc+"CreateSubscription", req.GetRequestId(), req, newSubscription,
		func(tx pgx.Tx) (*webhooksv1.Subscription, error) {
			fresh = false
			// One owner's subscriptions are made one at a time, so that two
			// alike cannot both pass the check below. The lock's two-key
			// form has a key space of its own, apart from the relays' and
			// the migrations' one-key session locks.
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($3, hashtext($1 || '|' || $2))`, clinic, owner, subscriptionLockClass); err != nil {
				return nil, fmt.Errorf("lock the owner's subscriptions: %w", err)
			}
			// Alike: the same payload kind too. One of the other kind may
			// stand beside it, so that a receiver moving between them
			// makes the new one before it deletes the old, and deletes
			// the old once its held notifications went out (see the
			// proto): deleting a subscription deletes what it holds.
			// Topics are alike when one event can be sent under both (a
			// referral's intake booking is both of its topics), and URLs
			// when they name one receiver however spelt.
			twin, err := likeSubscription(ctx, tx, clinic, owner, sub.GetUrl(), sharedTopics(topics), int16(payload))
			if err != nil {
				return nil, err
			}
			if twin != "" {
				return nil, apperr.AlreadyExists(subscriptionName(clinic, twin),
					"a subscription of yours already sends events of these topics to this URL with this payload: use it (a create retried without its request_id makes a second), or delete it first")
			}
			// Counted under the same lock, so that creates at once cannot
			// all pass it.
			var held int
			if err := tx.QueryRow(ctx, `SELECT count(*) FROM subscriptions WHERE clinic = $1 AND owner = $2`, clinic, owner).Scan(&held); err != nil {
				return nil, fmt.Errorf("count the owner's subscriptions: %w", err)
			}
			if held >= s.cfg.MaxPerOwner {
				return nil, apperr.QuotaExceeded("subscriptions of "+owner,
					fmt.Sprintf("you hold %d subscriptions in clinics/%s, the most one owner may: delete one you no longer use first", held, clinic))
			}
			id := aip.NewID()
			sealed, err := s.sealedSecret(clinic, id)
			if err != nil {
				return nil, err
			}
			_, outsider := consentgate.Outsider(ctx)
			// The audit record names the subscription, and goes with its insert.
			pgdb.StampNames(tx, subscriptionName(clinic, id))
			if _, err := tx.Exec(ctx, `INSERT INTO subscriptions (clinic, id, url, topics, payload, owner, secret, create_time, audience, outsider)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
				clinic, id, sub.GetUrl(), topics, int16(payload), owner, sealed, s.cfg.Now(), audience, outsider); err != nil {
				return nil, fmt.Errorf("insert subscription: %w", err)
			}
			fresh = true
			return withSealedSecret(ctx, tx, clinic, id, sealed)
		})
	if err == nil && fresh {
		return s.openFresh(out)
	}
	return s.openSecret(ctx, out, err)
}

// likeSubscription is the id of a subscription of owner's that sends an
// event of topics to the receiver at u with payload, or "".
func likeSubscription(ctx context.Context, tx pgx.Tx, clinic, owner, u string, topics []int16, payload int16) (string, error) {
	rows, err := tx.Query(ctx, `SELECT id, url FROM subscriptions WHERE clinic = $1 AND owner = $2 AND topics && $3 AND payload = $4 ORDER BY id`,
		clinic, owner, topics, payload)
	if err != nil {
		return "", fmt.Errorf("look for a like subscription: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, other string
		if err := rows.Scan(&id, &other); err != nil {
			return "", fmt.Errorf("read a like subscription: %w", err)
		}
		if sameReceiver(u, other) {
			return id, nil
		}
	}
	if err := rows.Err(); err != nil {
		return "", fmt.Errorf("look for a like subscription: %w", err)
	}
	return "", nil
}

// sharedTopics is topics with every topic one of their events is also
// sent under: a referral event that books, settles or pauses an intake
// appointment is REFERRAL_CHANGED and APPOINTMENT_CHANGED at once
// (routeOf), so a subscription to each at one URL would get it twice.
func sharedTopics(topics []int16) []int16 {
	referral, appointment := int16(webhooksv1.Topic_TOPIC_REFERRAL_CHANGED), int16(webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED)
	out := slices.Clone(topics)
	if slices.Contains(topics, referral) || slices.Contains(topics, appointment) {
		out = append(out, referral, appointment)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// sameReceiver reports whether two subscription URLs name one receiver:
// scheme and host compare without case, a host's trailing dot (the root
// of DNS) is the same as none, and a port that is the scheme's default is
// the same as none. Paths compare with the unreserved characters a
// client may escape or not decoded (%68ooks is /hooks, but %2F is not /),
// and queries exactly, as a server may tell them apart.
func sameReceiver(a, b string) bool {
	if a == b {
		return true
	}
	ua, errA := url.Parse(a)
	ub, errB := url.Parse(b)
	if errA != nil || errB != nil {
		return false
	}
	port := func(u *url.URL) string {
		if p := u.Port(); p != "" {
			return p
		}
		if strings.EqualFold(u.Scheme, "http") {
			return "80"
		}
		return "443"
	}
	host := func(u *url.URL) string { return strings.TrimSuffix(u.Hostname(), ".") }
	return strings.EqualFold(ua.Scheme, ub.Scheme) && strings.EqualFold(host(ua), host(ub)) &&
		port(ua) == port(ub) && cmp.Or(unreserved(ua.EscapedPath()), "/") == cmp.Or(unreserved(ub.EscapedPath()), "/") && ua.RawQuery == ub.RawQuery
}

// unreserved decodes the escapes of unreserved characters in an escaped
// path (RFC 3986 6.2.2.2: %68 is h either way) and writes the others'
// hex digits in capitals; an escaped reserved character (%2F) stays
// escaped, as it is not the character itself.
func unreserved(p string) string {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '%' && i+2 < len(p) {
			if v, err := strconv.ParseUint(p[i+1:i+3], 16, 8); err == nil {
				if c := byte(v); 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~", c) >= 0 {
					b.WriteByte(c)
				} else {
					b.WriteString(strings.ToUpper(p[i : i+3]))
				}
				i += 2
				continue
			}
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

// subscriptionLockClass is the first key of the advisory lock on one
// owner's subscriptions.
const subscriptionLockClass int32 = 0x48574b53 // "HWKS"

// sealedSecret makes a fresh signing secret for the subscription and seals
// it for the table.
func (s *Server) sealedSecret(clinic, id string) (string, error) {
	secret, err := newSecret()
	if err != nil {
		return "", err
	}
	return s.cfg.Secrets.seal(subscriptionName(clinic, id), secret)
}

// withSealedSecret reads the subscription back with its new secret, still
// sealed: so it is kept in the answer stored for retries (AIP-155).
func withSealedSecret(ctx context.Context, tx pgx.Tx, clinic, id, sealed string) (*webhooksv1.Subscription, error) {
	out, err := readSubscription(ctx, tx, clinic, id, "")
	if err != nil {
		return nil, err
	}
	out.Secret = sealed
	return out, nil
}

// openFresh opens the secret of an answer this call made (not a stored
// one replayed): the change has committed, so no read after it may fail
// the call. A create or rotation reported failed after it committed would
// keep the one answer that carries the new secret from the caller, who,
// retrying without a request id, is refused (ALREADY_EXISTS,
// ROTATION_IN_PROGRESS) and holds no secret that signs.
func (s *Server) openFresh(out *webhooksv1.Subscription) (*webhooksv1.Subscription, error) {
	secret, err := s.cfg.Secrets.open(out.GetName(), out.GetSecret())
	if err != nil {
		return nil, err
	}
	out.Secret = secret
	return out, nil
}

// openSecret opens the secret of an answer on its way out. An answer
// stored for retries (AIP-155) and replayed after a later rotation holds a
// secret that no longer signs, or signs only until its grace ends: handed
// out again, a receiver set up with it would refuse every notification a
// day later, and a secret rotated away because it leaked would stay
// retrievable. Such a replay is refused, as a deleted subscription's is.
func (s *Server) openSecret(ctx context.Context, out *webhooksv1.Subscription, err error) (*webhooksv1.Subscription, error) {
	if err != nil {
		return nil, err
	}
	clinic, id, err := parseSubscription("name", out.GetName())
	if err != nil {
		return nil, err
	}
	var current string
	switch err := s.db.QueryRow(pgdb.WithClinic(ctx, clinic), `SELECT secret FROM subscriptions WHERE clinic = $1 AND id = $2`,
		clinic, id).Scan(&current); {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, apperr.NotFound(out.GetName())
	case err != nil:
		return nil, fmt.Errorf("read the subscription's secret: %w", err)
	}
	// Compared opened: a key change reseals the table's copy, not the
	// stored answer's.
	if out.Secret, err = s.cfg.Secrets.open(out.GetName(), out.GetSecret()); err != nil {
		return nil, err
	}
	if current, err = s.cfg.Secrets.open(out.GetName(), current); err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare([]byte(current), []byte(out.GetSecret())) != 1 {
		return nil, apperr.FailedPrecondition("SECRET_ROTATED",
			out.GetName()+"'s secret has been rotated since this request was answered: use the secret of its latest rotation, or rotate it again under a new request_id",
			map[string]string{"resource": out.GetName()})
	}
	return out, nil
}

// callersSubscription parses the subscription name and checks it is of
// the caller's clinic.
func callersSubscription(ctx context.Context, name string) (clinic, id string, err error) {
	if clinic, id, err = parseSubscription("name", name); err != nil {
		return "", "", err
	}
	if err := auth.CheckClinic(ctx, clinic, name); err != nil {
		return "", "", err
	}
	return clinic, id, nil
}

// RotationGrace is how long a rotated secret still signs notifications
// beside the new one.
const RotationGrace = 24 * time.Hour

// RotateSubscriptionSecret implements the API: a new secret, with the old
// one kept for RotationGrace. The answer kept for retries holds the new
// secret sealed, as CreateSubscription's does.
func (s *Server) RotateSubscriptionSecret(ctx context.Context, req *webhooksv1.RotateSubscriptionSecretRequest) (*webhooksv1.Subscription, error) {
	clinic, id, err := callersSubscription(ctx, req.GetName())
	if err != nil {
		return nil, err
	}
	owner := ownerFilter(ctx)
	var fresh bool
	out, err := idempotency.InTx(ctx, s.db, clinic, svc+"RotateSubscriptionSecret", req.GetRequestId(), req, newSubscription,
		func(tx pgx.Tx) (*webhooksv1.Subscription, error) {
			fresh = false
			// Another's subscription is NOT_FOUND, as for every other method.
			sub, err := readSubscription(ctx, tx, clinic, id, owner)
			if err != nil {
				return nil, err
			}
			// An administrator sees every subscription but rotates only its
			// own: the new secret goes to whoever rotates, who could then
			// sign notifications the owner's receiver trusts, and the
			// owner's receiver would stop verifying a day later.
			if p, _ := auth.FromContext(ctx); sub.GetOwner() != p.Subject {
				return nil, status.Errorf(codes.PermissionDenied,
					"only the subscription's owner (%q) may rotate its secret; an administrator can delete a subscription whose secret leaked", sub.GetOwner())
			}
			// The grace is the database's: it begins and ends by its clock
			// (the transaction's now()), which the reads and the sender
			// judge it by, so that no other clock can cut it short or let a
			// second rotation in before it ends. The read shows a previous
			// secret only while it is in its grace.
			if prev := sub.GetPreviousSecretExpireTime(); prev != nil {
				// The secret before is still in its grace: a second rotation
				// would drop it while the receiver may still verify with it
				// (a retry without a request id is the usual way here).
				return nil, rotationInProgress(sub.GetName(), prev.AsTime())
			}
			sealed, err := s.sealedSecret(clinic, id)
			if err != nil {
				return nil, err
			}
			// The read above takes no lock: a concurrent rotation that
			// committed since would otherwise be rotated over, its
			// predecessor (the secret the receiver still holds) dropped at
			// once. The update waits for that one's row lock and then finds
			// the grace begun.
			tag, err := tx.Exec(ctx, `UPDATE subscriptions SET previous_secret = secret,
					previous_secret_expire_time = now() + make_interval(secs => $3), secret = $4
				WHERE clinic = $1 AND id = $2 AND (previous_secret_expire_time IS NULL OR previous_secret_expire_time <= now())`,
				clinic, id, RotationGrace.Seconds(), sealed)
			if err == nil && tag.RowsAffected() == 0 {
				// Deleted meanwhile, or rotated: read again to say which.
				cur, err := readSubscription(ctx, tx, clinic, id, owner)
				if err != nil {
					return nil, err
				}
				if prev := cur.GetPreviousSecretExpireTime(); prev != nil {
					return nil, rotationInProgress(cur.GetName(), prev.AsTime())
				}
				return nil, status.Error(codes.Aborted, "the subscription changed while its secret was rotated: try again")
			}
			if err != nil {
				return nil, fmt.Errorf("rotate secret: %w", err)
			}
			fresh = true
			return withSealedSecret(ctx, tx, clinic, id, sealed)
		})
	if err == nil && fresh {
		return s.openFresh(out)
	}
	return s.openSecret(ctx, out, err)
}

// rotationInProgress refuses a rotation while the secret before the last
// one is still in its grace.
func rotationInProgress(name string, until time.Time) error {
	return apperr.FailedPrecondition("ROTATION_IN_PROGRESS",
		fmt.Sprintf("%s was rotated less than a day ago; rotate again after %s, or delete and create the subscription again if the new secret leaked",
			name, until.UTC().Format(time.RFC3339)), map[string]string{"resource": name})
}

// GetSubscription implements the API.
func (s *Server) GetSubscription(ctx context.Context, req *webhooksv1.GetSubscriptionRequest) (*webhooksv1.Subscription, error) {
	clinic, id, err := callersSubscription(ctx, req.GetName())
	if err != nil {
		return nil, err
	}
	return readSubscription(ctx, s.db, clinic, id, ownerFilter(ctx))
}

var subscriptionFilter = map[string]aip.FilterField{
	"owner": {Column: "owner", Kind: aip.String},
	"topic": {Column: "topics", Kind: aip.EnumIn, Enum: aip.EnumLookup(webhooksv1.Topic_value, "TOPIC_")},
}

// ListSubscriptions implements the API.
func (s *Server) ListSubscriptions(ctx context.Context, req *webhooksv1.ListSubscriptionsRequest) (*webhooksv1.ListSubscriptionsResponse, error) {
	clinic, err := parseClinic(req.GetParent())
	if err != nil {
		return nil, err
	}
	if err := auth.CheckClinic(ctx, clinic, req.GetParent()); err != nil {
		return nil, err
	}
	subs, next, err := pgdb.ListPage(ctx, s.db, "subscriptions", subscriptionSelect,
		"clinic = $1 AND ($2 = '' OR owner = $2)", []any{clinic, ownerFilter(ctx)}, req, subscriptionFilter,
		func(r pgx.CollectableRow) (*webhooksv1.Subscription, error) { return scanSubscription(clinic, r) },
		(*webhooksv1.Subscription).GetName)
	if err != nil {
		return nil, err
	}
	return &webhooksv1.ListSubscriptionsResponse{Subscriptions: subs, NextPageToken: next}, nil
}

// DeleteSubscription implements the API.
func (s *Server) DeleteSubscription(ctx context.Context, req *webhooksv1.DeleteSubscriptionRequest) (*emptypb.Empty, error) {
	clinic, id, err := callersSubscription(ctx, req.GetName())
	if err != nil {
		return nil, err
	}
	owner := ownerFilter(ctx)
	return idempotency.InTx(ctx, s.db, clinic, svc+"DeleteSubscription", req.GetRequestId(), req, newEmpty,
		func(tx pgx.Tx) (*emptypb.Empty, error) {
			tag, err := tx.Exec(ctx, `DELETE FROM subscriptions WHERE clinic = $1 AND id = $2 AND ($3 = '' OR owner = $3)`,
				clinic, id, owner)
			if err != nil {
				return nil, fmt.Errorf("delete subscription: %w", err)
			}
			if tag.RowsAffected() == 0 {
				return nil, apperr.NotFound(req.GetName())
			}
			// The stored answers of its create and rotations hold its
			// signing secret: a retry must get NOT_FOUND, not the secret
			// of a subscription deleted (perhaps because it leaked).
			if err := idempotency.ForgetResource(ctx, tx, clinic, subscriptionName(clinic, id)); err != nil {
				return nil, err
			}
			return &emptypb.Empty{}, nil
		})
}

func newSubscription() *webhooksv1.Subscription { return &webhooksv1.Subscription{} }
func newEmpty() *emptypb.Empty                  { return &emptypb.Empty{} }

// The secret is never selected here: only CreateSubscription returns it.
const subscriptionSelect = `SELECT id, url, topics, payload, owner, create_time,
	CASE WHEN previous_secret_expire_time > now() THEN previous_secret_expire_time END FROM subscriptions`

func readSubscription(ctx context.Context, q pgdb.Querier, clinic, id, owner string) (*webhooksv1.Subscription, error) {
	rows, err := q.Query(ctx, subscriptionSelect+` WHERE clinic = $1 AND id = $2 AND ($3 = '' OR owner = $3)`, clinic, id, owner)
	return pgdb.One(rows, err, subscriptionName(clinic, id), func(r pgx.CollectableRow) (*webhooksv1.Subscription, error) {
		return scanSubscription(clinic, r)
	})
}

func scanSubscription(clinic string, r pgx.CollectableRow) (*webhooksv1.Subscription, error) {
	var (
		id, u, owner string
		topics       []int16
		payload      int16
		created      time.Time
		previous     *time.Time
	)
	if err := r.Scan(&id, &u, &topics, &payload, &owner, &created, &previous); err != nil {
		return nil, err
	}
	sub := &webhooksv1.Subscription{
		Name: subscriptionName(clinic, id), Url: u, Payload: webhooksv1.PayloadKind(payload),
		Owner: owner, CreateTime: timestamppb.New(created),
	}
	if previous != nil {
		sub.PreviousSecretExpireTime = timestamppb.New(*previous)
	}
	for _, t := range topics {
		sub.Topics = append(sub.Topics, webhooksv1.Topic(t))
	}
	return sub, nil
}

// newSecret returns a fresh signing key: 32 random bytes, printable.
func newSecret() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("new secret: %w", err)
	}
	return "whsec_" + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// CheckURL checks a callback URL: absolute http(s) with a host, https unless
// allowInsecure, on port 443 unless allowInsecure or allowPrivate, and not
// an address that is not public unicast (as a literal, or a name in a
// domain for local networks: "localhost", ".internal") unless
// allowPrivate. Names that resolve to such addresses are refused when the
// subscription is made if they resolve then, and always when the sender
// connects.
func CheckURL(raw string, allowInsecure, allowPrivate bool) error {
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("not a URL")
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && allowInsecure:
	default:
		return errors.New("must be an https URL")
	}
	if u.Host == "" || u.Hostname() == "" {
		return errors.New("must name a host")
	}
	if u.User != nil {
		return errors.New("must not carry credentials; notifications are signed instead")
	}
	if u.Fragment != "" {
		return errors.New("must not have a fragment")
	}
	if p := u.Port(); p != "" && p != callbackPort && !allowInsecure && !allowPrivate {
		return errors.New("must use port 443")
	}
	if !allowPrivate && privateHost(u.Hostname()) {
		return errors.New("must point at a public unicast address")
	}
	return nil
}
