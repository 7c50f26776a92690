package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The issuer writes each service identity's token into a folder of its
// own, the user tokens beside nothing else, all for the audience the
// services require; a signing key among the tokens is refused.
func TestIssuerKeepsIdentitiesApart(t *testing.T) {
	root := t.TempDir()
	users, services, key := filepath.Join(root, "users"), filepath.Join(root, "services"), filepath.Join(root, "key", "issuer.pem")
	log := slog.New(slog.DiscardHandler)
	// Relative to the working directory, the same folder by another name.
	rel, err := filepath.Rel(must(os.Getwd()), filepath.Join(users, "issuer.pem"))
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{filepath.Join(users, "issuer.pem"), filepath.Join(services, "worker", "issuer.pem"), rel} {
		err := runIssuer(context.Background(), log, []string{"--listen", "127.0.0.1:0", "--dir", users + "/", "--service-dir", services, "--key-file", bad})
		if err == nil || !strings.Contains(err.Error(), "could mint any token") {
			t.Fatalf("key file %s: %v; want it refused", bad, err)
		}
	}
	if err := runIssuer(context.Background(), log, []string{"--listen", "127.0.0.1:0", "--dir", users, "--key-file", key, "--audience", ""}); err == nil {
		t.Fatal("an empty audience was accepted")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runIssuer(ctx, log, []string{"--listen", "127.0.0.1:0", "--dir", users, "--service-dir", services,
			"--key-file", key, "--audience", "handoff-lab", "--clinic", "north"})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("issuer: %v", err)
		}
	})
	claims := func(path string) map[string]any {
		t.Helper()
		var b []byte
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			var err error
			if b, err = os.ReadFile(path); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no token at %s: %v", path, err)
			}
		}
		parts := strings.Split(strings.TrimSpace(string(b)), ".")
		if len(parts) != 3 {
			t.Fatalf("%s is not a JWT", path)
		}
		raw, err := base64.RawURLEncoding.DecodeString(parts[1])
		if err != nil {
			t.Fatal(err)
		}
		var c map[string]any
		if err := json.Unmarshal(raw, &c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, p := range []string{"worker/worker.token", "webhook-sender/webhook-sender.token", "calendar-reader/calendar-reader.token"} {
		c := claims(filepath.Join(services, p))
		if aud := c["aud"]; aud != "handoff-lab" && !(isList(aud) && len(aud.([]any)) == 1 && aud.([]any)[0] == "handoff-lab") {
			t.Errorf("%s: audience %v; want handoff-lab", p, aud)
		}
	}
	if c := claims(filepath.Join(users, "counselor.token")); c["sub"] != "counselor-1" {
		t.Errorf("counselor token claims %v", c)
	}
	// Nothing of the services' among the user tokens, and no key beside
	// any token.
	entries, err := os.ReadDir(users)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if n := e.Name(); n != "counselor.token" && n != "admin.token" && n != "ehr.token" && n != "reminders.token" {
			t.Errorf("%s in the user tokens' folder", n)
		}
	}
	if _, err := os.Stat(key); err != nil {
		t.Errorf("signing key not at --key-file: %v", err)
	}
}

func isList(v any) bool { _, ok := v.([]any); return ok }

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
