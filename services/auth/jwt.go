package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/handoff-health/handoff/services/aip"
)

// KeySource finds the public key that signed a token.
type KeySource interface {
	Key(ctx context.Context, kid string) (*ecdsa.PublicKey, error)
}

// Verifier checks bearer tokens: ES256 signature, issuer, audience, expiry
// and not-before, then reads the subject, clinic and roles.
type Verifier struct {
	Issuer   string
	Audience string
	Keys     KeySource
	// Leeway tolerates clock skew between the issuer and us.
	Leeway time.Duration
	Now    func() time.Time

	seen verified
}

// ErrInvalidToken wraps every reason a token is refused.
var ErrInvalidToken = errors.New("invalid token")

// The reasons a caller may be told: they are about the token alone. The
// others (the audience or issuers trusted, key ids) describe the
// deployment and stay in the operator's log.
var (
	errExpired  = errors.New("expired")
	errNotValid = errors.New("not valid yet")
)

// PublicReason says why a token was refused, in as much detail as the
// caller may see.
func PublicReason(err error) string {
	switch {
	case errors.Is(err, errExpired):
		return "invalid token: expired"
	case errors.Is(err, errNotValid):
		return "invalid token: not valid yet"
	}
	return "invalid token"
}

type header struct {
	Alg  string          `json:"alg"`
	Kid  string          `json:"kid"`
	Typ  string          `json:"typ,omitempty"`
	Crit json.RawMessage `json:"crit,omitempty"`
}

// Claims are the token claims Handoff reads.
type Claims struct {
	Issuer    string   `json:"iss"`
	Subject   string   `json:"sub"`
	Audience  audience `json:"aud"`
	Expiry    int64    `json:"exp"`
	NotBefore int64    `json:"nbf,omitempty"`
	IssuedAt  int64    `json:"iat,omitempty"`
	Clinic    string   `json:"clinic"`
	Roles     []string `json:"roles"`
}

type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*a = audience{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*a = many
	return nil
}

// MaxTokenLength bounds a token Verify reads: far above any access token
// an identity provider issues (a few KiB with many roles), so that a
// stranger's megabytes are not hashed, decoded and parsed before the
// signature refuses them.
const MaxTokenLength = 16 << 10

// Verify checks token and returns the principal it names.
func (v *Verifier) Verify(ctx context.Context, token string) (Principal, error) {
	if len(token) > MaxTokenLength {
		return Principal{}, fmt.Errorf("%w: longer than %d bytes", ErrInvalidToken, MaxTokenLength)
	}
	now := time.Now()
	if v.Now != nil {
		now = v.Now()
	}
	h := tokenHash(token)
	c, err := v.remembered(ctx, h, now)
	if err != nil {
		return Principal{}, err
	}
	if c == nil {
		if c, err = v.check(ctx, token, h, now); err != nil {
			return Principal{}, err
		}
	}
	switch {
	case c.Issuer != v.Issuer:
		return Principal{}, fmt.Errorf("%w: issuer %q not trusted", ErrInvalidToken, c.Issuer)
	case !contains(c.Audience, v.Audience):
		return Principal{}, fmt.Errorf("%w: audience does not include %q", ErrInvalidToken, v.Audience)
	case c.Expiry == 0 || now.After(time.Unix(c.Expiry, 0).Add(v.Leeway)):
		return Principal{}, fmt.Errorf("%w: %w", ErrInvalidToken, errExpired)
	case c.NotBefore != 0 && now.Add(v.Leeway).Before(time.Unix(c.NotBefore, 0)):
		return Principal{}, fmt.Errorf("%w: %w", ErrInvalidToken, errNotValid)
	case c.Subject == "" || c.Clinic == "":
		return Principal{}, fmt.Errorf("%w: subject and clinic are required", ErrInvalidToken)
	case c.Clinic != AnyClinic && !aip.ValidID(c.Clinic):
		// The clinic scopes every database statement: one that is not a
		// plain id could not be sent with them (see pgdb), and names no
		// clinic Handoff has.
		return Principal{}, fmt.Errorf("%w: clinic %q is not a clinic id", ErrInvalidToken, c.Clinic)
	}
	p := Principal{Subject: c.Subject, Clinic: c.Clinic}
	for _, r := range c.Roles {
		p.Roles = append(p.Roles, Role(r))
	}
	return p, nil
}

// remembered returns the claims of a token whose signature checked out
// lately under the key its kid still names, or nil.
func (v *Verifier) remembered(ctx context.Context, h [32]byte, now time.Time) (*Claims, error) {
	e, ok := v.seen.get(h, now)
	if !ok {
		return nil, nil
	}
	key, err := v.Keys.Key(ctx, e.kid)
	if err != nil {
		return nil, fmt.Errorf("%w: key %q: %w", ErrInvalidToken, e.kid, err)
	}
	if key != e.key {
		return nil, nil // the key changed: check the signature again
	}
	return e.claims, nil
}

// unverified cuts a value read from a token before its signature was
// checked to a length fit for an error, which is logged: anyone can send
// a key id of a megabyte.
func unverified(s string) string {
	const most = 64
	if len(s) <= most {
		return s
	}
	// A character cut in two is dropped whole.
	return strings.ToValidUTF8(s[:most], "") + "…"
}

// check decodes a token and checks its signature, and remembers it.
func (v *Verifier) check(ctx context.Context, token string, h [32]byte, now time.Time) (*Claims, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("%w: not a JWT", ErrInvalidToken)
	}
	var hd header
	if err := decodeSegment(parts[0], &hd); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrInvalidToken, err)
	}
	if hd.Alg != "ES256" {
		return nil, fmt.Errorf("%w: algorithm %q not accepted", ErrInvalidToken, unverified(hd.Alg))
	}
	// Extensions the token says must be understood are not understood
	// here (RFC 7515 4.1.11); and a token typed as something other than
	// an access token (a logout token, say, signed by the same key) is
	// not one, whatever its claims look like (RFC 8725 3.11).
	if hd.Crit != nil {
		return nil, fmt.Errorf("%w: critical header extensions not understood", ErrInvalidToken)
	}
	switch strings.ToLower(hd.Typ) {
	case "", "jwt", "at+jwt", "application/at+jwt":
	default:
		return nil, fmt.Errorf("%w: type %q is not an access token", ErrInvalidToken, unverified(hd.Typ))
	}
	key, err := v.Keys.Key(ctx, hd.Kid)
	if err != nil {
		return nil, fmt.Errorf("%w: key %q: %w", ErrInvalidToken, unverified(hd.Kid), err)
	}
	sig, err := segments.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		return nil, fmt.Errorf("%w: malformed signature", ErrInvalidToken)
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(key, digest[:], r, s) {
		return nil, fmt.Errorf("%w: bad signature", ErrInvalidToken)
	}
	c := &Claims{}
	if err := decodeSegment(parts[1], c); err != nil {
		return nil, fmt.Errorf("%w: claims: %v", ErrInvalidToken, err)
	}
	if err := exactClaims(parts[1]); err != nil {
		return nil, err
	}
	v.seen.add(h, verifiedEntry{key: key, kid: hd.Kid, claims: c}, now)
	return c, nil
}

func contains(a audience, s string) bool {
	for _, x := range a {
		if x == s {
			return true
		}
	}
	return false
}

// claimNames are the claims Claims reads.
var claimNames = []string{"iss", "sub", "aud", "exp", "nbf", "iat", "clinic", "roles"}

// exactClaims refuses claims named as one Handoff reads but in another
// case ("Clinic", "ROLES"): encoding/json matches names regardless of case
// and the last of two wins, so an identity provider that lets a user add
// claims of their own would let them set their clinic or roles.
func exactClaims(seg string) error {
	var raw map[string]json.RawMessage
	if err := decodeSegment(seg, &raw); err != nil {
		return fmt.Errorf("%w: claims: %v", ErrInvalidToken, err)
	}
	for k := range raw {
		for _, name := range claimNames {
			if k != name && strings.EqualFold(k, name) {
				return fmt.Errorf("%w: claim %q is not %q", ErrInvalidToken, k, name)
			}
		}
	}
	return nil
}

// segments decodes a token's parts strictly: the lenient decoder ignores
// the unused bits of a part's last character, so that one signed token
// could be spelled sixteen ways, each a new entry in the cache of checked
// signatures (keyed by the token's text) and a new signature check.
var segments = base64.RawURLEncoding.Strict()

func decodeSegment(seg string, v any) error {
	b, err := segments.DecodeString(seg)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}
