package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"
)

// Issuer mints ES256 tokens. The local stack runs one as its development
// identity provider, and tests use it; production trusts the clinic's own
// OIDC issuer through JWKS instead.
type Issuer struct {
	URL      string
	Audience string
	kid      string
	key      *ecdsa.PrivateKey
}

// NewIssuer creates an issuer with a fresh signing key.
func NewIssuer(url, audience string) (*Issuer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("issuer: generate key: %w", err)
	}
	return NewIssuerWithKey(url, audience, key)
}

// LoadOrCreateIssuer keeps the signing key in keyFile (PEM, mode 0600), so
// tokens minted before a restart stay valid after it.
func LoadOrCreateIssuer(url, audience, keyFile string) (*Issuer, error) {
	if b, err := os.ReadFile(keyFile); err == nil {
		block, _ := pem.Decode(b)
		if block == nil {
			return nil, fmt.Errorf("issuer: %s holds no PEM key", keyFile)
		}
		key, err := x509.ParseECPrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("issuer: parse %s: %w", keyFile, err)
		}
		return NewIssuerWithKey(url, audience, key)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("issuer: generate key: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("issuer: encode key: %w", err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, fmt.Errorf("issuer: save key: %w", err)
	}
	return NewIssuerWithKey(url, audience, key)
}

// NewIssuerWithKey creates an issuer that signs with key.
func NewIssuerWithKey(url, audience string, key *ecdsa.PrivateKey) (*Issuer, error) {
	pub, err := key.PublicKey.Bytes()
	if err != nil {
		return nil, fmt.Errorf("issuer: encode key: %w", err)
	}
	sum := sha256.Sum256(pub)
	return &Issuer{URL: url, Audience: audience, key: key,
		kid: base64.RawURLEncoding.EncodeToString(sum[:9])}, nil
}

// TokenOptions shape a minted token.
type TokenOptions struct {
	Subject  string
	Clinic   string
	Roles    []Role
	TTL      time.Duration // default one hour
	Audience string        // default the issuer's audience
	IssuedAt time.Time     // default now
}

// Mint returns a signed token.
func (i *Issuer) Mint(o TokenOptions) (string, error) {
	now := o.IssuedAt
	if now.IsZero() {
		now = time.Now()
	}
	ttl := o.TTL
	if ttl == 0 {
		ttl = time.Hour
	}
	aud := o.Audience
	if aud == "" {
		aud = i.Audience
	}
	roles := make([]string, len(o.Roles))
	for j, r := range o.Roles {
		roles[j] = string(r)
	}
	claims := map[string]any{
		"iss": i.URL, "sub": o.Subject, "aud": aud, "clinic": o.Clinic, "roles": roles,
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(ttl).Unix(),
	}
	h, _ := json.Marshal(header{Alg: "ES256", Kid: i.kid, Typ: "JWT"})
	c, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("issuer: claims: %w", err)
	}
	return i.sign(h, c)
}

// sign makes a compact JWS of a header and claims already encoded.
func (i *Issuer) sign(h, c []byte) (string, error) {
	signing := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	digest := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, i.key, digest[:])
	if err != nil {
		return "", fmt.Errorf("issuer: sign: %w", err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// MustMint is Mint for tests and the development stack, where a failure to
// sign is a bug.
func (i *Issuer) MustMint(o TokenOptions) string {
	t, err := i.Mint(o)
	if err != nil {
		panic(err)
	}
	return t
}

// Keys returns the issuer's public key set.
func (i *Issuer) Keys() StaticKeys { return StaticKeys{i.kid: &i.key.PublicKey} }

// Verifier returns a verifier that trusts this issuer.
func (i *Issuer) Verifier() *Verifier {
	return &Verifier{Issuer: i.URL, Audience: i.Audience, Keys: i.Keys(), Leeway: 30 * time.Second}
}

// JWKSHandler serves the issuer's public keys as a JWKS document.
func (i *Issuer) JWKSHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		k, err := encodeJWK(i.kid, &i.key.PublicKey)
		if err != nil {
			http.Error(w, "key encoding failed", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(jwkSet{Keys: []jwk{k}})
	})
}

// ctxToken lets outgoing calls carry a token (see grpcclient).
type ctxToken struct{}

// WithToken returns ctx carrying a bearer token for outgoing calls.
func WithToken(ctx context.Context, token string) context.Context {
	return context.WithValue(ctx, ctxToken{}, token)
}

// Bearer returns the token of an Authorization header value in the Bearer
// scheme, whose name is case-insensitive (RFC 9110, section 11.1), or
// false when the value is of another scheme or carries no token.
func Bearer(value string) (string, bool) {
	scheme, token, ok := strings.Cut(strings.TrimSpace(value), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// TokenFromContext returns the bearer token set by WithToken.
func TokenFromContext(ctx context.Context) string {
	t, _ := ctx.Value(ctxToken{}).(string)
	return t
}
