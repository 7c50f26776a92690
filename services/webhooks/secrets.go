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
// previous one it was given, trying each: the sealed form names no key, so
// code from before keys rotated reads what this code writes, and the
// other way round. How to retire a key: see Sender.Reseal.
type SecretBox struct {
	aeads []cipher.AEAD // the current key's first
}

// NewSecretBox returns a box that seals with key and opens with key or any
// of previous. Keys are 32 bytes.
func NewSecretBox(key []byte, previous ...[]byte) (*SecretBox, error) {
	b := &SecretBox{}
	seen := map[[32]byte]bool{}
	for i, k := range append([][]byte{key}, previous...) {
		if len(k) != 32 {
			return nil, fmt.Errorf("webhooks: secret key %d must be 32 bytes, not %d", i+1, len(k))
		}
		sum := sha256.Sum256(k)
		if seen[sum] {
			return nil, fmt.Errorf("webhooks: secret key %d is given twice", i+1)
		}
		seen[sum] = true
		block, err := aes.NewCipher(k)
		if err != nil {
			return nil, fmt.Errorf("webhooks: secret key %d: %w", i+1, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("webhooks: secret key %d: %w", i+1, err)
		}
		b.aeads = append(b.aeads, aead)
	}
	return b, nil
}

// sealedPrefix marks an encrypted secret; plain ones start with "whsec_".
const sealedPrefix = "sealed.v1."

// seal encrypts secret for the subscription named name, under the current
// key.
func (b *SecretBox) seal(name, secret string) (string, error) {
	if b == nil {
		return secret, nil
	}
	aead := b.aeads[0]
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("webhooks: seal secret: %w", err)
	}
	out := aead.Seal(nonce, nonce, []byte(secret), []byte(name))
	return sealedPrefix + base64.RawURLEncoding.EncodeToString(out), nil
}

// open decrypts what seal stored for the subscription named name, with any
// of the box's keys. A secret stored without a box is returned as it is.
func (b *SecretBox) open(name, stored string) (string, error) {
	plain, _, err := b.openWith(name, stored, len(b.keys()))
	return plain, err
}

func (b *SecretBox) keys() []cipher.AEAD {
	if b == nil {
		return nil
	}
	return b.aeads
}

// openWith is open with the first n keys; current reports whether the
// current key opened it (or it is not sealed).
func (b *SecretBox) openWith(name, stored string, n int) (plain string, current bool, err error) {
	enc, sealed := strings.CutPrefix(stored, sealedPrefix)
	if !sealed {
		return stored, true, nil
	}
	if b == nil {
		return "", false, errors.New("webhooks: secret is encrypted and no key is configured")
	}
	raw, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil || len(raw) < b.aeads[0].NonceSize() {
		return "", false, errors.New("webhooks: malformed encrypted secret")
	}
	for i, aead := range b.aeads[:n] {
		k := aead.NonceSize()
		if p, err := aead.Open(nil, raw[:k], raw[k:], []byte(name)); err == nil {
			return string(p), i == 0, nil
		}
	}
	return "", false, errors.New("webhooks: secret does not decrypt with the configured keys")
}

// reseal opens stored and seals it again under the current key, and says
// whether that changed it: a secret the current key opens, or an empty
// one, stays as it is; a plain one is sealed.
func (b *SecretBox) reseal(name, stored string) (string, bool, error) {
	if b == nil || stored == "" {
		return stored, false, nil
	}
	if _, current, err := b.openWith(name, stored, 1); err == nil && current && strings.HasPrefix(stored, sealedPrefix) {
		return stored, false, nil
	}
	plain, err := b.open(name, stored)
	if err != nil {
		return "", false, err
	}
	out, err := b.seal(name, plain)
	return out, err == nil, err
}
