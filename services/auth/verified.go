package auth

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"math/big"
	"strings"
	"sync"
	"time"
)

// Checking an ES256 signature costs more CPU than the rest of a small
// request, and a client sends the same token with every call for its
// lifetime. verified remembers, for a short while, tokens whose signature
// checked out under a given key, with their decoded claims (decoding the
// JSON cost most of a remembered token's check). Only the signature check
// and the decoding are skipped: the key is still looked up (so a
// rotated-out key stops counting at once) and every claim is checked on
// every call.
type verified struct {
	mu      sync.Mutex
	entries map[[32]byte]verifiedEntry
}

type verifiedEntry struct {
	key    *ecdsa.PublicKey
	kid    string
	claims *Claims // shared: read only
	until  time.Time
}

const (
	verifiedTTL = time.Minute
	verifiedMax = 10_000
)

// tokenHash is the cache key: the whole token, signature included, with
// the signature's s in its low form. ECDSA takes s and n-s alike, so
// anyone holding a token can write it a second way; keyed on the text,
// that would be a second entry and a second check. Both ways are good or
// neither, so they share one entry. A signature that cannot be read is
// keyed as it is (the check refuses it).
func tokenHash(token string) [32]byte {
	i := strings.LastIndexByte(token, '.')
	if i < 0 || len(token)-i-1 != 86 { // 64 bytes in unpadded base64url
		return sha256.Sum256([]byte(token))
	}
	var sig [64]byte
	if n, err := segments.Decode(sig[:], []byte(token[i+1:])); err != nil || n != 64 {
		return sha256.Sum256([]byte(token))
	}
	// Compared as big-endian bytes of equal length: big.Int only for the
	// high half, which is rare.
	if bytes.Compare(sig[32:], halfOrder[:]) > 0 {
		new(big.Int).Sub(p256Order, new(big.Int).SetBytes(sig[32:])).FillBytes(sig[32:])
	}
	h := sha256.New()
	h.Write([]byte{0}) // apart from every key of a token's text: a token holds no NUL
	h.Write([]byte(token[:i+1]))
	h.Write(sig[:])
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// p256Order is the order n of P-256; halfOrder is n/2, as 32 big-endian
// bytes.
var (
	p256Order = elliptic.P256().Params().N
	halfOrder = func() (b [32]byte) { new(big.Int).Rsh(p256Order, 1).FillBytes(b[:]); return b }()
)

// get returns the live entry for h, if any.
func (c *verified) get(h [32]byte, now time.Time) (verifiedEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[h]
	if !ok || !now.Before(e.until) {
		return verifiedEntry{}, false
	}
	return e, true
}

func (c *verified) add(h [32]byte, e verifiedEntry, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = make(map[[32]byte]verifiedEntry)
	}
	if len(c.entries) >= verifiedMax {
		for k, e := range c.entries {
			if !now.Before(e.until) {
				delete(c.entries, k)
			}
		}
		if len(c.entries) >= verifiedMax {
			clear(c.entries) // many live tokens at once: start over rather than grow
		}
	}
	e.until = now.Add(verifiedTTL)
	c.entries[h] = e
}
