package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestVerifierChecksEveryClaim(t *testing.T) {
	iss, err := NewIssuer("https://issuer.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	v := iss.Verifier()
	ctx := context.Background()
	good := TokenOptions{Subject: "u1", Clinic: "north", Roles: []Role{RoleCounselor}}
	p, err := v.Verify(ctx, iss.MustMint(good))
	if err != nil || p.Subject != "u1" || p.Clinic != "north" || !p.Has(RoleCounselor) {
		t.Fatalf("good token: %+v, %v", p, err)
	}
	other, _ := NewIssuer("https://issuer.test", "handoff") // same name, other key
	future := good
	future.IssuedAt = time.Now().Add(time.Hour)
	expired := good
	expired.IssuedAt, expired.TTL = time.Now().Add(-3*time.Hour), time.Hour
	aud := good
	aud.Audience = "elsewhere"
	noClinic := good
	noClinic.Clinic = ""
	oddClinic := good
	oddClinic.Clinic = "North'; --"
	tok := iss.MustMint(good)
	parts := strings.Split(tok, ".")
	claims, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	// Signed by the trusted key, with headers it must not accept.
	signed := func(h string) string {
		tok, err := iss.sign([]byte(h), claims)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	if _, err := v.Verify(ctx, signed(`{"alg":"ES256","kid":"`+iss.kid+`","typ":"at+jwt"}`)); err != nil {
		t.Errorf("a token typed at+jwt (RFC 9068): %v", err)
	}
	// Claims signed by the trusted key, one of them named in another case
	// (encoding/json would take "Clinic" for clinic, the last one winning).
	var cl map[string]any
	if err := json.Unmarshal(claims, &cl); err != nil {
		t.Fatal(err)
	}
	cl["Clinic"] = "south"
	recased, _ := json.Marshal(cl)
	withClaims := func(c []byte) string {
		tok, err := iss.sign([]byte(`{"alg":"ES256","kid":"`+iss.kid+`","typ":"JWT"}`), c)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	// The caller is told what is wrong with its token, not what the
	// deployment trusts (audience, issuer, key ids).
	for name, c := range map[string]struct{ token, public string }{
		"expired":         {iss.MustMint(expired), "invalid token: expired"},
		"not yet valid":   {iss.MustMint(future), "invalid token: not valid yet"},
		"wrong audience":  {iss.MustMint(aud), "invalid token"},
		"foreign key":     {other.MustMint(good), "invalid token"},
		"no clinic":       {iss.MustMint(noClinic), "invalid token"},
		"not a clinic id": {iss.MustMint(oddClinic), "invalid token"},
		"claim recased":   {withClaims(recased), "invalid token"},
		"tampered":        {parts[0] + "." + parts[1] + "x." + parts[2], "invalid token"},
		"garbage":         {"not.a.jwt", "invalid token"},
		"alg none":        {"eyJhbGciOiJub25lIn0." + parts[1] + ".", "invalid token"},
		"critical extension": {signed(`{"alg":"ES256","kid":"` + iss.kid + `","typ":"JWT","crit":["exp-policy"],"exp-policy":1}`),
			"invalid token"},
		"logout token": {signed(`{"alg":"ES256","kid":"` + iss.kid + `","typ":"logout+jwt"}`), "invalid token"},
	} {
		_, err := v.Verify(ctx, c.token)
		if !errors.Is(err, ErrInvalidToken) {
			t.Errorf("%s: got %v, want an invalid-token error", name, err)
		}
		if got := PublicReason(err); got != c.public {
			t.Errorf("%s: told the caller %q, want %q", name, got, c.public)
		}
	}
	wrongIssuer := &Verifier{Issuer: "https://other.test", Audience: "handoff", Keys: iss.Keys()}
	if _, err := wrongIssuer.Verify(ctx, tok); err == nil {
		t.Error("a token from another issuer was accepted")
	}
}

// A key the verifier has not seen makes it fetch the JWKS again, so the
// issuer can rotate keys without a restart; unknown ids are not refetched
// more often than MinRefresh.
func TestJWKSRotationWithoutRestart(t *testing.T) {
	first, _ := NewIssuer("https://issuer.test", "handoff")
	second, _ := NewIssuerWithKey("https://issuer.test", "handoff", mustKey(t))
	var current atomic.Pointer[Issuer]
	current.Store(first)
	var fetches atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		current.Load().JWKSHandler().ServeHTTP(w, r)
	}))
	defer srv.Close()
	v := &Verifier{Issuer: "https://issuer.test", Audience: "handoff", Keys: &JWKS{URL: srv.URL, MinRefresh: time.Millisecond}}
	opts := TokenOptions{Subject: "u", Clinic: "north"}
	if _, err := v.Verify(context.Background(), first.MustMint(opts)); err != nil {
		t.Fatal(err)
	}
	current.Store(second) // the issuer rotates
	time.Sleep(2 * time.Millisecond)
	if _, err := v.Verify(context.Background(), second.MustMint(opts)); err != nil {
		t.Fatalf("token under the new key: %v", err)
	}
	if fetches.Load() != 2 {
		t.Fatalf("fetches = %d, want 2", fetches.Load())
	}
	slow := &Verifier{Issuer: "https://issuer.test", Audience: "handoff", Keys: &JWKS{URL: srv.URL, MinRefresh: time.Hour}}
	_, _ = slow.Verify(context.Background(), second.MustMint(opts))
	before := fetches.Load()
	for i := 0; i < 5; i++ {
		_, _ = slow.Verify(context.Background(), first.MustMint(opts)) // unknown kid now
	}
	if fetches.Load() != before {
		t.Fatal("unknown key ids must not hammer the issuer")
	}
}

// A key the issuer withdraws (a leaked one) stops being trusted once the
// cached set is older than MaxAge: the set is fetched again in the
// background, without holding up the call that noticed. While the issuer
// is down, the last set stays in use.
func TestJWKSWithdrawnKeyStopsCounting(t *testing.T) {
	leaked, _ := NewIssuer("https://issuer.test", "handoff")
	next, _ := NewIssuerWithKey("https://issuer.test", "handoff", mustKey(t))
	var current atomic.Pointer[Issuer]
	current.Store(leaked)
	var down atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		current.Load().JWKSHandler().ServeHTTP(w, r)
	}))
	defer srv.Close()
	v := &Verifier{Issuer: "https://issuer.test", Audience: "handoff", Keys: &JWKS{URL: srv.URL, MinRefresh: time.Hour, MaxAge: 20 * time.Millisecond}}
	tok := leaked.MustMint(TokenOptions{Subject: "u", Clinic: "north"})
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	// The issuer is down past MaxAge: the token still counts.
	down.Store(true)
	time.Sleep(30 * time.Millisecond)
	for i := 0; i < 3; i++ {
		if _, err := v.Verify(context.Background(), tok); err != nil {
			t.Fatalf("while the issuer is down: %v", err)
		}
		time.Sleep(1100 * time.Millisecond / 3)
	}
	// The issuer is back, without the leaked key.
	current.Store(next)
	down.Store(false)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := v.Verify(context.Background(), tok)
		if errors.Is(err, ErrInvalidToken) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a withdrawn key is still trusted")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := v.Verify(context.Background(), next.MustMint(TokenOptions{Subject: "u", Clinic: "north"})); err != nil {
		t.Fatalf("the new key: %v", err)
	}
}

// While the issuer cannot be reached, the last set is trusted only for
// MaxStale: past it a leaked key the issuer withdrew meanwhile would stay
// good for as long as whoever holds it keeps the set from being fetched.
// Tokens are then refused as unchecked, and count again once a fetch works.
func TestJWKSStaleSetIsNotTrustedForever(t *testing.T) {
	iss, _ := NewIssuer("https://issuer.test", "handoff")
	var down atomic.Bool
	var fetches atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		if down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		iss.JWKSHandler().ServeHTTP(w, r)
	}))
	defer srv.Close()
	v := &Verifier{Issuer: "https://issuer.test", Audience: "handoff",
		Keys: &JWKS{URL: srv.URL, MinRefresh: time.Hour, MaxAge: 20 * time.Millisecond, MaxStale: 300 * time.Millisecond}}
	tok := iss.MustMint(TokenOptions{Subject: "u", Clinic: "north"})
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	down.Store(true)
	time.Sleep(50 * time.Millisecond)
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatalf("past MaxAge, within MaxStale: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	_, err := v.Verify(context.Background(), tok)
	if !IsKeysUnavailable(err) {
		t.Fatalf("past MaxStale with the issuer down: %v; want the keys unavailable", err)
	}
	// Within the back-off after that failure, no fetch is made per call.
	before := fetches.Load()
	for i := 0; i < 20; i++ {
		if _, err := v.Verify(context.Background(), tok); !IsKeysUnavailable(err) {
			t.Fatalf("call %d within the back-off: %v", i, err)
		}
	}
	if n := fetches.Load() - before; n > 1 {
		t.Fatalf("%d fetches for 20 calls within the back-off", n)
	}
	down.Store(false)
	time.Sleep(1100 * time.Millisecond)
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatalf("once the issuer is back: %v", err)
	}
}

// While the issuer is slow or down, callers whose key is known are not held
// up by a fetch for an unknown one, and failed fetches are not repeated on
// every request.
func TestJWKSOutageNeitherBlocksNorHammers(t *testing.T) {
	iss, _ := NewIssuer("https://issuer.test", "handoff")
	other, _ := NewIssuerWithKey("https://issuer.test", "handoff", mustKey(t))
	var fetches atomic.Int32
	var down atomic.Bool
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		if down.Load() {
			select { // a slow issuer, then an error
			case <-release:
			case <-time.After(2 * time.Second):
			}
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		iss.JWKSHandler().ServeHTTP(w, r)
	}))
	defer srv.Close()
	v := &Verifier{Issuer: "https://issuer.test", Audience: "handoff", Keys: &JWKS{URL: srv.URL, MinRefresh: time.Millisecond}}
	opts := TokenOptions{Subject: "u", Clinic: "north"}
	known := iss.MustMint(opts)
	if _, err := v.Verify(context.Background(), known); err != nil {
		t.Fatal(err)
	}
	down.Store(true)
	time.Sleep(5 * time.Millisecond) // past MinRefresh, so an unknown id fetches
	stuck := make(chan error, 1)
	go func() { _, err := v.Verify(context.Background(), other.MustMint(opts)); stuck <- err }()
	for deadline := time.Now().Add(5 * time.Second); fetches.Load() < 2; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the unknown key id never made the verifier fetch")
		}
	}
	start := time.Now()
	if _, err := v.Verify(context.Background(), known); err != nil || time.Since(start) > 500*time.Millisecond {
		t.Fatalf("a known key waited %v for another caller's fetch (%v)", time.Since(start), err)
	}
	close(release)
	if err := <-stuck; err == nil {
		t.Fatal("a token under an unknown key was accepted while the issuer was down")
	}
	before := fetches.Load()
	for range 20 {
		_, _ = v.Verify(context.Background(), other.MustMint(opts))
	}
	if n := fetches.Load() - before; n != 0 {
		t.Fatalf("%d fetches right after a failed one; want none within a second", n)
	}
}

func mustKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// The development issuer keeps its key, so printed tokens survive a restart.
func TestDevelopmentIssuerKeepsItsKey(t *testing.T) {
	file := t.TempDir() + "/dev-issuer.pem"
	a, err := LoadOrCreateIssuer("http://dev", "handoff", file)
	if err != nil {
		t.Fatal(err)
	}
	b, err := LoadOrCreateIssuer("http://dev", "handoff", file)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Verifier().Verify(context.Background(), a.MustMint(TokenOptions{Subject: "u", Clinic: "c"})); err != nil {
		t.Fatalf("token from before the restart: %v", err)
	}
}

// A token whose signature was checked once is not checked again for a
// while, but its claims are, and a changed key counts at once.
func TestVerifierRemembersSignaturesNotClaims(t *testing.T) {
	iss, err := NewIssuer("https://issuer.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	now := time.Now()
	keys := iss.Keys()
	v := &Verifier{Issuer: iss.URL, Audience: iss.Audience, Keys: keys, Now: func() time.Time { return now }}
	tok := iss.MustMint(TokenOptions{Subject: "u1", Clinic: "north", IssuedAt: now, TTL: 30 * time.Second})
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if len(v.seen.entries) != 1 {
		t.Fatalf("remembered %d tokens, want 1", len(v.seen.entries))
	}
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatalf("second use: %v", err)
	}
	parts := strings.Split(tok, ".")
	forged := parts[0] + "." + parts[1] + "." + strings.Repeat("A", len(parts[2]))
	if _, err := v.Verify(ctx, forged); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("same claims, bad signature: %v", err)
	}
	now = now.Add(31 * time.Second)
	if _, err := v.Verify(ctx, tok); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("expired token accepted from the cache: %v", err)
	}
	now = now.Add(-31 * time.Second)
	for kid := range keys {
		keys[kid] = &mustKey(t).PublicKey // the issuer's key is replaced under the same id
	}
	if _, err := v.Verify(ctx, tok); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("token accepted under a key that no longer signs it: %v", err)
	}
	// A remembered token whose key is withdrawn is refused at once.
	v2 := &Verifier{Issuer: iss.URL, Audience: iss.Audience, Keys: iss.Keys(), Now: func() time.Time { return now }}
	tok2 := iss.MustMint(TokenOptions{Subject: "u2", Clinic: "north", IssuedAt: now, TTL: 30 * time.Second})
	if p, err := v2.Verify(ctx, tok2); err != nil || p.Subject != "u2" {
		t.Fatalf("fresh token: %v, %v", p, err)
	}
	if p, err := v2.Verify(ctx, tok2); err != nil || p.Subject != "u2" || p.Clinic != "north" {
		t.Fatalf("remembered token: %v, %v", p, err)
	}
	for kid := range v2.Keys.(StaticKeys) {
		delete(v2.Keys.(StaticKeys), kid)
	}
	if _, err := v2.Verify(ctx, tok2); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("remembered token accepted after its key was withdrawn: %v", err)
	}
}

// A token is read in one spelling only, and up to a length: a respelled
// one would be checked and remembered again, and a huge one hashed and
// parsed before its signature refused it.
func TestTokenHasOneSpellingAndABoundedLength(t *testing.T) {
	iss, err := NewIssuer("https://issuer.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	keys := &countingKeys{KeySource: iss.Keys()}
	v := &Verifier{Issuer: iss.URL, Audience: iss.Audience, Keys: keys}
	ctx := context.Background()
	tok := iss.MustMint(TokenOptions{Subject: "u1", Clinic: "north"})
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatal(err)
	}
	// The signature's 64 bytes take 86 characters, the last with 4 bits
	// unused: flipping its lowest bit changes no decoded byte.
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, tok[len(tok)-1])
	respelled := tok[:len(tok)-1] + string(alphabet[last^1])
	if _, err := v.Verify(ctx, respelled); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("the same signature spelled another way: %v, want an invalid token", err)
	}
	// ECDSA takes s and n-s alike: the other way of writing the same
	// signature is good too, and shares the first one's entry.
	dot := strings.LastIndexByte(tok, '.')
	sig, err := base64.RawURLEncoding.DecodeString(tok[dot+1:])
	if err != nil {
		t.Fatal(err)
	}
	new(big.Int).Sub(elliptic.P256().Params().N, new(big.Int).SetBytes(sig[32:])).FillBytes(sig[32:])
	other := tok[:dot+1] + base64.RawURLEncoding.EncodeToString(sig)
	if _, err := v.Verify(ctx, other); err != nil {
		t.Fatalf("the signature with n-s: %v", err)
	}
	if n := len(v.seen.entries); n != 1 {
		t.Fatalf("%d entries for one token written two ways, want 1", n)
	}
	keys.calls.Store(0)
	huge := tok + strings.Repeat("A", MaxTokenLength)
	if _, err := v.Verify(ctx, huge); !errors.Is(err, ErrInvalidToken) || keys.calls.Load() != 0 {
		t.Fatalf("a token over %d bytes: %v after %d key lookups; want an invalid token and none", MaxTokenLength, err, keys.calls.Load())
	}
}

type countingKeys struct {
	KeySource
	calls atomic.Int64
}

func (k *countingKeys) Key(ctx context.Context, kid string) (*ecdsa.PublicKey, error) {
	k.calls.Add(1)
	return k.KeySource.Key(ctx, kid)
}

func TestVerifiedCacheIsBounded(t *testing.T) {
	var c verified
	key := &mustKey(t).PublicKey
	now := time.Now()
	for i := 0; i < verifiedMax+10; i++ {
		c.add(tokenHash(strconv.Itoa(i)), verifiedEntry{key: key}, now)
	}
	if n := len(c.entries); n > verifiedMax || n == 0 {
		t.Fatalf("cache holds %d entries, want 1..%d", n, verifiedMax)
	}
	last := tokenHash(strconv.Itoa(verifiedMax + 9))
	has := func(h [32]byte, at time.Time) bool { _, ok := c.get(h, at); return ok }
	if has(tokenHash("x"), now) || !has(last, now) || has(last, now.Add(verifiedTTL)) {
		t.Fatal("cache answers wrongly")
	}
}

// BenchmarkVerify shows what the cache saves: go test -bench Verify ./services/auth
func BenchmarkVerify(b *testing.B) {
	iss, err := NewIssuer("https://issuer.test", "handoff")
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	tok := iss.MustMint(TokenOptions{Subject: "u1", Clinic: "north", TTL: time.Hour})
	b.Run("repeated token", func(b *testing.B) {
		v := iss.Verifier()
		for b.Loop() {
			if _, err := v.Verify(ctx, tok); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("new verifier each time", func(b *testing.B) {
		for b.Loop() {
			if _, err := iss.Verifier().Verify(ctx, tok); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// Only a token of one service role serves every clinic: a staff role
// beside it on a "*" token is refused the every-clinic scope, and so is a
// second service role, whose rights would join the first's.
func TestServesEveryClinicNeedsOnlyServiceRoles(t *testing.T) {
	for _, c := range []struct {
		clinic string
		roles  []Role
		want   bool
	}{
		{AnyClinic, []Role{RoleWorker}, true},
		{AnyClinic, []Role{RoleWorker, RoleWorker}, true},
		{AnyClinic, []Role{RoleWorker, RoleCalendarReader}, false},
		{AnyClinic, []Role{RoleCalendarReader, RoleWebhookSender}, false},
		{AnyClinic, []Role{RoleWorker, RoleClinicAdmin}, false},
		{AnyClinic, []Role{RoleEHR}, false},
		{AnyClinic, nil, false},
		{"north", []Role{RoleWorker}, false},
	} {
		p := Principal{Subject: "s", Clinic: c.clinic, Roles: c.roles}
		if got := p.ServesEveryClinic(); got != c.want {
			t.Errorf("%s %v: ServesEveryClinic = %v, want %v", c.clinic, c.roles, got, c.want)
		}
		if got := p.InClinic("south"); got != c.want {
			t.Errorf("%s %v: InClinic(south) = %v, want %v", c.clinic, c.roles, got, c.want)
		}
	}
}

// A token refused because the key set could not be fetched says so, and
// nothing of where the keys live: the error text reaches the caller.
func TestKeyFetchFailureHidesItsCause(t *testing.T) {
	iss, _ := NewIssuer("https://issuer.test", "handoff")
	v := &Verifier{Issuer: "https://issuer.test", Audience: "handoff",
		Keys: &JWKS{URL: "http://127.0.0.1:1/internal-idp/jwks", MinRefresh: time.Millisecond}}
	_, err := v.Verify(context.Background(), iss.MustMint(TokenOptions{Subject: "u", Clinic: "north"}))
	var ku *KeysUnavailable
	if err == nil || !errors.As(err, &ku) || errors.Unwrap(ku) == nil {
		t.Fatalf("Verify with the key set unreachable: %v; want KeysUnavailable with its cause", err)
	}
	if strings.Contains(err.Error(), "127.0.0.1") || strings.Contains(err.Error(), "internal-idp") || !strings.Contains(err.Error(), "could not be fetched") {
		t.Fatalf("the refusal says %q", err)
	}
	// A caller within the fetch's back-off does not fetch, and still hears
	// that the keys are out of reach, not that its token is bad.
	other := iss.MustMint(TokenOptions{Subject: "v", Clinic: "north"})
	if _, err := v.Verify(context.Background(), other); !IsKeysUnavailable(err) {
		t.Fatalf("a second caller within the back-off: %v; want KeysUnavailable", err)
	}
}

// The scheme's name is case-insensitive; another scheme, or none, is no
// bearer token.
func TestBearer(t *testing.T) {
	for value, want := range map[string]string{
		"Bearer abc": "abc", "bearer abc": "abc", "BEARER  abc ": "abc",
		"Basic abc": "", "Bearer": "", "Bearer ": "", "abc": "", "": "",
	} {
		got, ok := Bearer(value)
		if got != want || ok != (want != "") {
			t.Errorf("Bearer(%q) = %q, %v; want %q", value, got, ok, want)
		}
	}
}

// A key set's keys for encryption or for another algorithm are not used
// to check tokens; those for ES256 signatures, or unmarked, are.
func TestJWKSKeepsOnlySigningKeys(t *testing.T) {
	set := jwkSet{}
	for _, c := range []struct{ kid, use, alg string }{
		{"sig", "sig", "ES256"}, {"plain", "", ""}, {"enc", "enc", ""}, {"ecdh", "", "ECDH-ES"},
	} {
		k, err := encodeJWK(c.kid, &mustKey(t).PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		k.Use, k.Alg = c.use, c.alg
		set.Keys = append(set.Keys, k)
	}
	body, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := ParseJWKS(body)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || keys["sig"] == nil || keys["plain"] == nil {
		t.Fatalf("keys kept: %v; want sig and plain only", slices.Sorted(maps.Keys(keys)))
	}
}

// An answer with no key to check tokens with (a proxy's {}, an issuer
// mid-deploy publishing nothing yet) is refused, and the last set stays:
// taken, it would refuse every token as bad until the next fetch worked
// and MinRefresh let it happen.
func TestJWKSWithNoSigningKeyKeepsTheLastSet(t *testing.T) {
	iss, _ := NewIssuer("https://issuer.test", "handoff")
	rsa := `{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}]}`
	empties := []string{`{}`, `null`, `{"keys":[]}`, rsa}
	for _, body := range empties {
		if _, err := ParseJWKS([]byte(body)); err == nil {
			t.Fatalf("a set with no signing key was taken: %s", body)
		}
	}
	var empty atomic.Pointer[string]
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if body := empty.Load(); body != nil {
			_, _ = w.Write([]byte(*body))
			return
		}
		iss.JWKSHandler().ServeHTTP(w, r)
	}))
	defer srv.Close()
	v := &Verifier{Issuer: "https://issuer.test", Audience: "handoff", Keys: &JWKS{URL: srv.URL, MinRefresh: time.Hour, MaxAge: 10 * time.Millisecond}}
	tok := iss.MustMint(TokenOptions{Subject: "u", Clinic: "north"})
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	for _, body := range empties {
		empty.Store(&body)
		// Past MaxAge: the next call fetches in the background, and a
		// failed fetch is tried again after a second.
		for i := 0; i < 3; i++ {
			time.Sleep(20 * time.Millisecond)
			if _, err := v.Verify(context.Background(), tok); err != nil {
				t.Fatalf("after the issuer answered %s: %v", body, err)
			}
		}
		time.Sleep(1100 * time.Millisecond)
	}
}

// A request's origin names its peer and, bounded, what a proxy says it
// forwarded for; without the header, the peer alone.
func TestOrigin(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "http://gateway.internal/v1/x", nil)
	r.RemoteAddr = "10.0.0.7:5555"
	if got := fmt.Sprint(Origin(r)); got != "[peer 10.0.0.7:5555]" {
		t.Fatalf("origin without a proxy: %s", got)
	}
	r.Header.Add("X-Forwarded-For", "203.0.113.9")
	got := Origin(r)
	if len(got) != 4 || got[2] != "forwarded_for" || got[3] != "203.0.113.9" {
		t.Fatalf("origin behind a proxy: %v", got)
	}
	// A caller's long made-up start is cut, not the address the proxy
	// appended at the end.
	r.Header.Set("X-Forwarded-For", strings.Repeat("192.0.2.1, ", 40)+"203.0.113.9")
	r.Header.Add("X-Forwarded-For", "198.51.100.7")
	f := Origin(r)[3].(string)
	if !strings.HasPrefix(f, "..., 192.0.2.1, ") || !strings.HasSuffix(f, "203.0.113.9, 198.51.100.7") || len(f) > 256+5 {
		t.Fatalf("a long X-Forwarded-For logged as %q (%d bytes); want its end kept, cut at an entry, marked", f, len(f))
	}
}

// A key set URL redirected from https to plain http is not followed: the
// keys would come in clear. A redirect that stays on https is.
func TestJWKSRedirectToPlainHTTPIsRefused(t *testing.T) {
	iss, _ := NewIssuer("https://issuer.test", "handoff")
	plain := httptest.NewServer(iss.JWKSHandler())
	defer plain.Close()
	secure := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/moved":
			iss.JWKSHandler().ServeHTTP(w, r)
		case "/same":
			http.Redirect(w, r, "/moved", http.StatusFound)
		default:
			http.Redirect(w, r, plain.URL+"/certs", http.StatusFound)
		}
	}))
	defer secure.Close()
	tok := iss.MustMint(TokenOptions{Subject: "u", Clinic: "north"})
	downgraded := &Verifier{Issuer: "https://issuer.test", Audience: "handoff",
		Keys: &JWKS{URL: secure.URL + "/certs", Client: secure.Client(), MinRefresh: time.Millisecond}}
	if _, err := downgraded.Verify(context.Background(), tok); err == nil {
		t.Fatal("a token was verified with keys fetched over plain http after a redirect")
	}
	same := &Verifier{Issuer: "https://issuer.test", Audience: "handoff",
		Keys: &JWKS{URL: secure.URL + "/same", Client: secure.Client(), MinRefresh: time.Millisecond}}
	if _, err := same.Verify(context.Background(), tok); err != nil {
		t.Fatalf("keys behind an https redirect: %v", err)
	}
}

// A plain http key set URL on loopback is not redirected off the machine:
// clear text was allowed only where it crosses no network. A redirect that
// stays on loopback is followed.
func TestJWKSRedirectFromLoopbackStaysOnLoopback(t *testing.T) {
	iss, _ := NewIssuer("https://issuer.test", "handoff")
	keys := httptest.NewServer(iss.JWKSHandler())
	defer keys.Close()
	local := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/away" {
			http.Redirect(w, r, "http://idp.example/certs", http.StatusFound)
			return
		}
		http.Redirect(w, r, keys.URL+"/certs", http.StatusFound)
	}))
	defer local.Close()
	// idp.example is dialled at the key server, so the refusal is the
	// redirect rule's and not a failed lookup.
	dial := (&net.Dialer{}).DialContext
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		if strings.HasPrefix(addr, "idp.example:") {
			addr = keys.Listener.Addr().String()
		}
		return dial(ctx, network, addr)
	}}}
	tok := iss.MustMint(TokenOptions{Subject: "u", Clinic: "north"})
	away := &Verifier{Issuer: "https://issuer.test", Audience: "handoff",
		Keys: &JWKS{URL: local.URL + "/away", Client: client, MinRefresh: time.Millisecond}}
	if _, err := away.Verify(context.Background(), tok); err == nil {
		t.Fatal("a token was verified with keys fetched in clear from another host after a redirect from loopback")
	}
	near := &Verifier{Issuer: "https://issuer.test", Audience: "handoff",
		Keys: &JWKS{URL: local.URL + "/near", Client: client, MinRefresh: time.Millisecond}}
	if _, err := near.Verify(context.Background(), tok); err != nil {
		t.Fatalf("keys behind a redirect that stays on loopback: %v", err)
	}
	// A deployment that says its network is trusted (--insecure-plaintext)
	// allows clear text off loopback at start, and so here.
	trusted := &Verifier{Issuer: "https://issuer.test", Audience: "handoff",
		Keys: &JWKS{URL: local.URL + "/away", Client: client, MinRefresh: time.Millisecond, Insecure: true}}
	if _, err := trusted.Verify(context.Background(), tok); err != nil {
		t.Fatalf("keys redirected off loopback on a trusted network: %v", err)
	}
}

// Header fields read before the signature is checked reach the error, and
// so the log, cut short: anyone can send a key id as long as a token may
// be.
func TestUnverifiedHeaderValuesAreCutInErrors(t *testing.T) {
	iss, err := NewIssuer("https://issuer.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	v := iss.Verifier()
	long := strings.Repeat("é", MaxTokenLength/4) // within MaxTokenLength once encoded
	seg := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for _, h := range []string{`{"alg":"` + long + `"}`, `{"alg":"ES256","typ":"` + long + `"}`, `{"alg":"ES256","kid":"` + long + `"}`} {
		_, err := v.Verify(context.Background(), seg(h)+"."+seg(`{}`)+"."+seg("sig"))
		if !errors.Is(err, ErrInvalidToken) || len(err.Error()) > 300 || !strings.Contains(err.Error(), "é…") {
			t.Fatalf("a header of %d bytes: an error of %d bytes (%.80v); want it refused, its value cut", len(h), len(err.Error()), err)
		}
	}
	if got := unverified("short"); got != "short" {
		t.Fatalf("a short value: %q", got)
	}
}

// One malformed key in the issuer's set (a coordinate short of its leading
// zero, say) is left out, not the set: the key the issuer withdrew stops
// counting and the one it added counts. A set with no readable key is
// refused, and the last one stays.
func TestJWKSWithAMalformedKeyStillRotates(t *testing.T) {
	leaked, _ := NewIssuer("https://issuer.test", "handoff")
	next, _ := NewIssuerWithKey("https://issuer.test", "handoff", mustKey(t))
	broken := jwk{Kty: "EC", Crv: "P-256", Kid: "broken", X: base64.RawURLEncoding.EncodeToString(make([]byte, 31)), Y: "AA"}
	var withLeaked, rotated atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		set := jwkSet{Keys: []jwk{broken}}
		for iss, on := range map[*Issuer]bool{leaked: withLeaked.Load(), next: rotated.Load()} {
			if !on {
				continue
			}
			rec := httptest.NewRecorder()
			iss.JWKSHandler().ServeHTTP(rec, r)
			var s jwkSet
			if err := json.Unmarshal(rec.Body.Bytes(), &s); err != nil {
				t.Error(err)
			}
			set.Keys = append(set.Keys, s.Keys...)
		}
		_ = json.NewEncoder(w).Encode(set)
	}))
	defer srv.Close()
	withLeaked.Store(true)
	v := &Verifier{Issuer: "https://issuer.test", Audience: "handoff", Keys: &JWKS{URL: srv.URL, MinRefresh: time.Millisecond, MaxAge: 20 * time.Millisecond}}
	opts := TokenOptions{Subject: "u", Clinic: "north"}
	old := leaked.MustMint(opts)
	if _, err := v.Verify(context.Background(), old); err != nil {
		t.Fatalf("a key beside a malformed one: %v", err)
	}
	// The issuer withdraws the leaked key and adds another.
	withLeaked.Store(false)
	rotated.Store(true)
	time.Sleep(5 * time.Millisecond)
	if _, err := v.Verify(context.Background(), next.MustMint(opts)); err != nil {
		t.Fatalf("the new key beside a malformed one: %v", err)
	}
	if _, err := v.Verify(context.Background(), old); !errors.Is(err, ErrInvalidToken) || IsKeysUnavailable(err) {
		t.Fatalf("the withdrawn key: %v; want an invalid token", err)
	}
	// Nothing readable: refused, and the last set stays.
	if _, err := ParseJWKS([]byte(`{"keys":[{"kty":"EC","crv":"P-256","kid":"broken","x":"AA","y":"AA"}]}`)); err == nil {
		t.Fatal("a set whose only key is malformed was taken")
	}
	rotated.Store(false)
	time.Sleep(30 * time.Millisecond)
	for i := 0; i < 3; i++ {
		if _, err := v.Verify(context.Background(), next.MustMint(opts)); err != nil {
			t.Fatalf("the last set while the issuer publishes nothing readable: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
