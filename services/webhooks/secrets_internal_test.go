package webhooks

import (
	"testing"
)

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
	sealedNew, err := both.seal(name, "whsec_b")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		box    *SecretBox
		stored string
		want   string // "" for an error
	}{
		{both, sealedOld, "whsec_a"}, // a previous key opens
		{both, sealedNew, "whsec_b"},
		{fresh, sealedNew, "whsec_b"}, // sealed under the current key
		{fresh, sealedOld, ""},        // the old key is gone
		{old, sealedNew, ""},
		{both, "whsec_plain", "whsec_plain"},
		{both, sealedPrefix + "!!", ""},
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
	// Resealing: what only the old key opens, and what is plain, change;
	// what the current key opens does not.
	for _, c := range []struct {
		stored  string
		changed bool
	}{{sealedOld, true}, {"whsec_plain", true}, {sealedNew, false}, {"", false}} {
		out, changed, err := both.reseal(name, c.stored)
		if err != nil || changed != c.changed {
			t.Fatalf("reseal(%.24s...) changed %v, %v; want %v", c.stored, changed, err, c.changed)
		}
		if c.stored != "" {
			if got, err := fresh.open(name, out); err != nil || got == "" {
				t.Fatalf("the new key alone does not open the resealed %.24s...: %v", c.stored, err)
			}
		}
	}
	if _, _, err := fresh.reseal(name, sealedOld); err == nil {
		t.Error("resealed what no configured key opens")
	}
	if _, err := NewSecretBox(newKey, oldKey, newKey); err == nil {
		t.Error("a key given twice was accepted")
	}
	if _, err := NewSecretBox(newKey, oldKey[:16]); err == nil {
		t.Error("a 16-byte previous key was accepted")
	}
}
