package webhooks

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"strings"
	"testing"
)

// sealV1 seals as the box did before keys were named.
func sealV1(t *testing.T, key []byte, name, secret string) string {
	t.Helper()
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	nonce := make([]byte, aead.NonceSize())
	nonce[0] = 9
	return sealedV1 + base64.RawURLEncoding.EncodeToString(aead.Seal(nonce, nonce, []byte(secret), []byte(name)))
}

func TestSecretBoxKeys(t *testing.T) {
	oldKey, newKey := make([]byte, 32), make([]byte, 32)
	oldKey[0], newKey[0] = 1, 2
	const name = "clinics/north/subscriptions/s1"
	old, err := NewSecretBox(oldKey)
	if err != nil {
		t.Fatal(err)
	}
	both, err := NewSecretBox(newKey, oldKey)
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := NewSecretBox(newKey)
	if err != nil {
		t.Fatal(err)
	}
	sealedOld, err := old.seal(name, "whsec_a")
	if err != nil {
		t.Fatal(err)
	}
	legacy := sealV1(t, oldKey, name, "whsec_b")
	for _, c := range []struct {
		box    *SecretBox
		stored string
		want   string // "" for an error
	}{
		{both, sealedOld, "whsec_a"},
		{both, legacy, "whsec_b"}, // v1 names no key: each is tried
		{fresh, sealedOld, ""},    // the old key is gone
		{fresh, legacy, ""},
		{old, legacy, "whsec_b"},
		{both, "whsec_plain", "whsec_plain"},
		{both, "sealed.v2.nokey", ""},
	} {
		got, err := c.box.open(name, c.stored)
		if got != c.want || (err == nil) != (c.want != "") {
			t.Errorf("open(%.24s...) = %q, %v; want %q", c.stored, got, err, c.want)
		}
	}
	// Bound to the subscription: another's name does not open it.
	if _, err := both.open("clinics/north/subscriptions/s2", sealedOld); err == nil {
		t.Error("a secret opened under another subscription's name")
	}
	resealed, err := both.reseal(name, legacy)
	if err != nil || !strings.HasPrefix(resealed, both.sealedPrefix()) || both.sealedCurrent(legacy) || !both.sealedCurrent(resealed) {
		t.Fatalf("reseal of a v1 secret: %q, %v", resealed, err)
	}
	if got, err := fresh.open(name, resealed); err != nil || got != "whsec_b" {
		t.Fatalf("the new key alone opens the resealed secret: %q, %v", got, err)
	}
	if _, err := NewSecretBox(newKey, oldKey, newKey); err == nil {
		t.Error("a key given twice was accepted")
	}
	if _, err := NewSecretBox(newKey, oldKey[:16]); err == nil {
		t.Error("a 16-byte previous key was accepted")
	}
}
