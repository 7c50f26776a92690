package webhooks

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// SecretBox encrypts signing secrets at rest (AES-256-GCM), bound to their
// subscription, so that a copy of the database or of a backup does not let
// anyone forge notifications. A nil *SecretBox stores secrets as they are
// (development).
//
// The box seals with its current key and opens with that key or any
// previous one it was given: to retire a key, run with a new key and the
// old one as previous, let the sender seal every secret again under the
// new key (Sender.Reseal), then drop the old one.
type SecretBox struct {
	current string                 // id of the key that seals
	aeads   map[string]cipher.AEAD // every key, by id
	ids     []string               // current first, then previous in order
}

// NewSecretBox returns a box that seals with key and opens with key or any
// of previous. Keys are 32 bytes.
func NewSecretBox(key []byte, previous ...[]byte) (*SecretBox, error) {
	b := &SecretBox{aeads: map[string]cipher.AEAD{}}
	for i, k := range append([][]byte{key}, previous...) {
		if len(k) != 32 {
			return nil, fmt.Errorf("webhooks: secret key %d must be 32 bytes, not %d", i+1, len(k))
		}
		block, err := aes.NewCipher(k)
		if err != nil {
			return nil, fmt.Errorf("webhooks: secret key %d: %w", i+1, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("webhooks: secret key %d: %w", i+1, err)
		}
		id := keyID(k)
		if _, dup := b.aeads[id]; dup {
			return nil, fmt.Errorf("webhooks: secret key %d is given twice", i+1)
		}
		b.aeads[id] = aead
		b.ids = append(b.ids, id)
	}
	b.current = b.ids[0]
	return b, nil
}

// keyID names a key in what it sealed, so that opening needs no trials: a
// digest, which tells nothing of the key.
func keyID(key []byte) string {
	sum := sha256.Sum256(append([]byte("handoff webhook secret key\x00"), key...))
	return base64.RawURLEncoding.EncodeToString(sum[:6])
}

// Sealed secrets start with a version: v2 names the key
// ("sealed.v2.<key id>.<nonce and ciphertext>"); v1, from before keys were
// named, does not, and is opened by trying each key. Plain ones start with
// "whsec_".
const (
	sealedV1 = "sealed.v1."
	sealedV2 = "sealed.v2."
)

// seal encrypts secret for the subscription named name, under the current
// key.
func (b *SecretBox) seal(name, secret string) (string, error) {
	if b == nil {
		return secret, nil
	}
	aead := b.aeads[b.current]
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("webhooks: seal secret: %w", err)
	}
	out := aead.Seal(nonce, nonce, []byte(secret), []byte(name))
	return b.sealedPrefix() + base64.RawURLEncoding.EncodeToString(out), nil
}

// sealedPrefix begins every secret sealed under the current key.
func (b *SecretBox) sealedPrefix() string {
	return sealedV2 + b.current + "."
}

// open decrypts what seal stored for the subscription named name. A
// secret stored without a box is returned as it is.
func (b *SecretBox) open(name, stored string) (string, error) {
	ids, enc := []string(nil), ""
	if rest, ok := strings.CutPrefix(stored, sealedV2); ok {
		id, e, ok := strings.Cut(rest, ".")
		if !ok {
			return "", errors.New("webhooks: malformed encrypted secret")
		}
		ids, enc = []string{id}, e
	} else if e, ok := strings.CutPrefix(stored, sealedV1); ok {
		enc = e
		if b != nil {
			ids = b.ids
		}
	} else {
		return stored, nil
	}
	if b == nil {
		return "", errors.New("webhooks: secret is encrypted and no key is configured")
	}
	raw, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil || len(raw) < b.aeads[b.current].NonceSize() {
		return "", errors.New("webhooks: malformed encrypted secret")
	}
	for _, id := range ids {
		aead, ok := b.aeads[id]
		if !ok {
			return "", errors.New("webhooks: secret is sealed under a key that is not configured")
		}
		n := aead.NonceSize()
		if plain, err := aead.Open(nil, raw[:n], raw[n:], []byte(name)); err == nil {
			return string(plain), nil
		}
	}
	return "", errors.New("webhooks: secret does not decrypt with the configured keys")
}

// sealedCurrent reports whether stored is sealed under the current key,
// or is nothing to seal (empty); a box without keys has nothing to do.
func (b *SecretBox) sealedCurrent(stored string) bool {
	return b == nil || stored == "" || strings.HasPrefix(stored, b.sealedPrefix())
}
