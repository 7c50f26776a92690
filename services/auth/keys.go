package auth

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// jwk is one key of a JSON Web Key Set (RFC 7517), EC P-256 only.
type jwk struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
	Kid string `json:"kid"`
	Alg string `json:"alg,omitempty"`
	Use string `json:"use,omitempty"`
}

type jwkSet struct {
	Keys []jwk `json:"keys"`
}

// StaticKeys is a fixed key set, for tests and single-key deployments.
type StaticKeys map[string]*ecdsa.PublicKey

// Key implements KeySource.
func (s StaticKeys) Key(_ context.Context, kid string) (*ecdsa.PublicKey, error) {
	k, ok := s[kid]
	if !ok {
		return nil, fmt.Errorf("unknown key id")
	}
	return k, nil
}

// JWKS reads keys from an issuer's JWKS URL. A token signed with a key it has
// not seen makes it fetch the set again (at most every MinRefresh, and at
// most once a second after a failed fetch), so keys rotate without a
// restart. The key id comes from a token not yet verified, so a fetch never
// holds up callers whose key is already known, and unknown ids cannot make
// it fetch on every request. A set older than MaxAge is fetched again in
// the background, so that a key the issuer withdrew (a leaked one) stops
// being trusted; while the issuer cannot be reached the last set stays in
// use, or no one could sign in meanwhile, but only for MaxStale: past
// that, a withdrawn key would stay good for as long as whoever holds it
// can keep the set from being fetched.
type JWKS struct {
	URL        string
	Client     *http.Client
	MinRefresh time.Duration
	// MaxAge is how long a fetched set is trusted before it is fetched
	// again (default 10 minutes).
	MaxAge time.Duration
	// Insecure says the network is trusted (--insecure-plaintext): a plain
	// http URL on loopback may then be redirected to another host.
	Insecure bool
	// MaxStale is how long after the last successful fetch the set is
	// still trusted while fetches fail (default an hour, never less than
	// MaxAge). Past it, every token is refused as unchecked
	// (KeysUnavailable) until a fetch works.
	MaxStale time.Duration

	fetchMu    sync.Mutex // one fetch at a time
	mu         sync.Mutex // guards what follows
	keys       StaticKeys
	tried      time.Time // the last fetch, successful or not
	fetched    time.Time // the last successful fetch
	failed     bool
	refreshing bool
}

// Key implements KeySource.
func (j *JWKS) Key(ctx context.Context, kid string) (*ecdsa.PublicKey, error) {
	if k, ok, wait := j.lookup(kid); ok || !wait {
		return j.found(k, ok)
	}
	j.fetchMu.Lock()
	defer j.fetchMu.Unlock()
	// Another caller may have fetched while this one waited.
	if k, ok, wait := j.lookup(kid); ok || !wait {
		return j.found(k, ok)
	}
	// Not on the caller's context alone: a caller that gives up must not
	// fail the fetch for everyone and start the back-off.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
	defer cancel()
	keys, err := j.fetch(fctx)
	if err != nil {
		return nil, &KeysUnavailable{cause: err}
	}
	if k, ok := keys[kid]; ok {
		return k, nil
	}
	return nil, fmt.Errorf("unknown key id")
}

// found answers a lookup that did not fetch: the key, or, for a key id
// not in the set, KeysUnavailable while the last fetch failed (callers
// that waited on it, or came within its back-off, cannot know the key is
// unknown), else an unknown key id.
func (j *JWKS) found(k *ecdsa.PublicKey, ok bool) (*ecdsa.PublicKey, error) {
	if ok {
		return k, nil
	}
	j.mu.Lock()
	failed := j.failed
	j.mu.Unlock()
	if failed {
		return nil, &KeysUnavailable{cause: errors.New("the last fetch of the key set failed")}
	}
	return nil, fmt.Errorf("unknown key id")
}

// IsKeysUnavailable reports whether err says the key set could not be
// fetched: the token was not found bad, only not checked.
func IsKeysUnavailable(err error) bool {
	var ku *KeysUnavailable
	return errors.As(err, &ku)
}

// KeysUnavailableCause is why the key set could not be fetched, for the
// operator's log, when err says it could not (IsKeysUnavailable); else nil.
// err's own text hides it, and errors.Unwrap cannot reach it through a
// token error that wraps more than one.
func KeysUnavailableCause(err error) error {
	var ku *KeysUnavailable
	if !errors.As(err, &ku) {
		return nil
	}
	return cmp.Or(ku.cause, error(ku))
}

// KeysUnavailable is the error of a key lookup that needed the key set and
// could not fetch it. Its text says only that: the cause (the identity
// provider's internal address, a dial error) would otherwise reach any
// caller whose token is refused. Unwrap gives the cause, for the log.
type KeysUnavailable struct{ cause error }

func (e *KeysUnavailable) Error() string { return "the signing keys could not be fetched" }

func (e *KeysUnavailable) Unwrap() error { return e.cause }

// fetchTimeout bounds one fetch of the key set.
const fetchTimeout = 5 * time.Second

// fetch reads the set and, if that worked, replaces the cached one: keys
// no longer in it are no longer trusted. The caller holds fetchMu.
func (j *JWKS) fetch(ctx context.Context) (StaticKeys, error) {
	keys, err := fetchJWKS(ctx, j.client(), j.URL, j.Insecure)
	j.mu.Lock()
	defer j.mu.Unlock()
	j.tried, j.failed = time.Now(), err != nil
	if err != nil {
		return nil, err
	}
	j.keys, j.fetched = keys, j.tried
	return keys, nil
}

// refresh fetches the set again in the background.
func (j *JWKS) refresh() {
	defer func() {
		j.mu.Lock()
		j.refreshing = false
		j.mu.Unlock()
	}()
	j.fetchMu.Lock()
	defer j.fetchMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), fetchTimeout)
	defer cancel()
	_, _ = j.fetch(ctx) // a failure keeps the last set; the next call tries again
}

// lookup returns the cached key for kid, or whether a fetch is due. A known
// key in a set past MaxAge is returned at once and the set fetched again
// in the background; in a set past MaxStale it is not returned, and a
// fetch is due at once but for the back-off after a failed one.
func (j *JWKS) lookup(kid string) (k *ecdsa.PublicKey, ok, fetch bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	maxAge := cmp.Or(j.MaxAge, 10*time.Minute)
	stale := !j.fetched.IsZero() && time.Since(j.fetched) >= max(cmp.Or(j.MaxStale, time.Hour), maxAge)
	if k, ok := j.keys[kid]; ok && !stale {
		retry := !j.failed || time.Since(j.tried) >= time.Second
		if time.Since(j.fetched) >= maxAge && retry && !j.refreshing {
			j.refreshing = true
			go j.refresh()
		}
		return k, true, false
	}
	wait := j.MinRefresh
	if wait == 0 {
		wait = 30 * time.Second
	}
	if j.failed {
		wait = time.Second
	} else if stale {
		wait = 0
	}
	return nil, false, j.tried.IsZero() || time.Since(j.tried) >= wait
}

// defaultClient is shared, so connections to the issuer are reused.
var defaultClient = &http.Client{Timeout: 5 * time.Second}

func (j *JWKS) client() *http.Client {
	if j.Client != nil {
		return j.Client
	}
	return defaultClient
}

// noDowngrade refuses a redirect to another scheme than the request's
// first: an https key set URL (the only kind a deployment may name, but
// for loopback or an explicit insecure mode) redirected to http would
// fetch the keys in clear, where anyone on the way could swap them. For the
// same reason a plain http URL on loopback may not be redirected off the
// machine: the deployment allowed clear text only where it never crosses a
// network.
func noDowngrade(req *http.Request, via []*http.Request) error {
	if err := sameScheme(req, via); err != nil {
		return err
	}
	if req.URL.Scheme == "http" && LoopbackHost(via[0].URL.Hostname()) && !LoopbackHost(req.URL.Hostname()) {
		return errors.New("jwks: a redirect from plain http on loopback to another host refused")
	}
	return nil
}

// sameScheme refuses a redirect to another scheme than the first
// request's, and a tenth redirect.
func sameScheme(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("jwks: too many redirects")
	}
	if req.URL.Scheme != via[0].URL.Scheme {
		return fmt.Errorf("jwks: a redirect from %s to %s refused", via[0].URL.Scheme, req.URL.Scheme)
	}
	return nil
}

// LoopbackHost reports whether host (no port) is this machine's loopback:
// the only place clear text is allowed without a word, as it crosses no
// network.
func LoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func fetchJWKS(ctx context.Context, c *http.Client, url string, insecure bool) (StaticKeys, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	guarded := *c // the caller's client, transport and all, with the redirect rule
	guarded.CheckRedirect = noDowngrade
	if insecure {
		guarded.CheckRedirect = sameScheme
	}
	resp, err := guarded.Do(req)
	if err != nil {
		return nil, fmt.Errorf("jwks: fetch: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("jwks: fetch: status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("jwks: read: %w", err)
	}
	return ParseJWKS(body)
}

// ParseJWKS decodes the EC P-256 keys of a JWKS document. A malformed key
// is left out, as one of another type is: failing the whole set would keep
// the last one in use, a withdrawn key with it, and refuse tokens signed
// with a key new in it. Only a set with no key tokens could be checked
// with is refused (the last set then stays): every P-256 key malformed, or
// none there at all ({}, null, an empty list, only keys of other kinds),
// as a proxy or an issuer mid-deploy may answer. Such a set is more likely
// broken on the way than meant, and taken it would refuse every token.
func ParseJWKS(body []byte) (StaticKeys, error) {
	var set jwkSet
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("jwks: decode: %w", err)
	}
	keys := StaticKeys{}
	var bad []error
	for _, k := range set.Keys {
		if k.Kty != "EC" || k.Crv != "P-256" {
			continue
		}
		// A key published for encryption, or for another algorithm, is
		// not one tokens may be checked with (RFC 7517 4.2, 4.4).
		if (k.Use != "" && k.Use != "sig") || (k.Alg != "" && k.Alg != "ES256") {
			continue
		}
		pub, err := decodeJWK(k)
		if err != nil {
			slog.Warn("a key of the issuer's key set is malformed: left out", "kid", k.Kid, "error", err)
			bad = append(bad, err)
			continue
		}
		keys[k.Kid] = pub
	}
	if len(keys) == 0 && len(bad) > 0 {
		return nil, fmt.Errorf("jwks: no key could be read: %w", errors.Join(bad...))
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("jwks: no ES256 signing key in the set (%d keys of other kinds)", len(set.Keys))
	}
	return keys, nil
}

// decodeJWK reads an EC P-256 key's point.
func decodeJWK(k jwk) (*ecdsa.PublicKey, error) {
	x, err1 := base64.RawURLEncoding.DecodeString(k.X)
	y, err2 := base64.RawURLEncoding.DecodeString(k.Y)
	if err1 != nil || err2 != nil || len(x) != 32 || len(y) != 32 {
		return nil, fmt.Errorf("key %q: bad coordinates", k.Kid)
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
	if err != nil {
		return nil, fmt.Errorf("key %q: %w", k.Kid, err)
	}
	return pub, nil
}

func encodeJWK(kid string, pub *ecdsa.PublicKey) (jwk, error) {
	b, err := pub.Bytes()
	if err != nil {
		return jwk{}, err
	}
	return jwk{
		Kty: "EC", Crv: "P-256", Kid: kid, Alg: "ES256", Use: "sig",
		X: base64.RawURLEncoding.EncodeToString(b[1:33]),
		Y: base64.RawURLEncoding.EncodeToString(b[33:65]),
	}, nil
}
