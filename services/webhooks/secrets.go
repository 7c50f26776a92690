package webhooks

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// SecretBox encrypts signing secrets at rest (AES-256-GCM), bound to their
// subscription, so that a copy of the database or of a backup does not let
// anyone forge notifications. A nil *SecretBox stores secrets as they are
// (development).
type SecretBox struct {
	aead cipher.AEAD
}

// NewSecretBox returns a box keyed with a 32-byte key.
func NewSecretBox(key []byte) (*SecretBox, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("webhooks: the secret key must be 32 bytes, not %d", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("webhooks: secret key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("webhooks: secret key: %w", err)
	}
	return &SecretBox{aead: aead}, nil
}

// sealedPrefix marks an encrypted secret; plain ones start with "whsec_".
const sealedPrefix = "sealed.v1."

// seal encrypts secret for the subscription named name.
func (b *SecretBox) seal(name, secret string) (string, error) {
	if b == nil {
		return secret, nil
	}
	nonce := make([]byte, b.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("webhooks: seal secret: %w", err)
	}
	out := b.aead.Seal(nonce, nonce, []byte(secret), []byte(name))
	return sealedPrefix + base64.RawURLEncoding.EncodeToString(out), nil
}

// open decrypts what seal stored for the subscription named name. A
// secret stored without a box is returned as it is.
func (b *SecretBox) open(name, stored string) (string, error) {
	enc, sealed := strings.CutPrefix(stored, sealedPrefix)
	if !sealed {
		return stored, nil
	}
	if b == nil {
		return "", errors.New("webhooks: secret is encrypted and no key is configured")
	}
	raw, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil || len(raw) < b.aead.NonceSize() {
		return "", errors.New("webhooks: malformed encrypted secret")
	}
	n := b.aead.NonceSize()
	plain, err := b.aead.Open(nil, raw[:n], raw[n:], []byte(name))
	if err != nil {
		return "", errors.New("webhooks: secret does not decrypt with the configured key")
	}
	return string(plain), nil
}
