package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/auth"
)

func init() {
	commands["issuer"] = command{summary: "run a development token issuer (JWKS and tokens) for Compose or a lab cluster, never for production",
		run: runIssuer}
}

// runIssuer serves a JWKS for the services to trust and writes tokens: the
// worker's into a file it re-reads, and one per role for trying the API.
// Production trusts the clinic's own OIDC provider instead.
func runIssuer(ctx context.Context, log *slog.Logger, args []string) error {
	fs := flag.NewFlagSet("issuer", flag.ContinueOnError)
	listen := fs.String("listen", env("HANDOFF_ISSUER_LISTEN", "0.0.0.0:8090"), "HTTP address serving /jwks.json (HANDOFF_ISSUER_LISTEN)")
	url := fs.String("url", env("HANDOFF_OIDC_ISSUER", "http://issuer:8090"), "the issuer URL written into tokens (HANDOFF_OIDC_ISSUER)")
	dir := fs.String("dir", env("HANDOFF_ISSUER_DIR", "/var/lib/handoff-issuer"), "where the tokens are written (HANDOFF_ISSUER_DIR)")
	keyFile := fs.String("key-file", env("HANDOFF_ISSUER_KEY_FILE", ""), "the signing key, kept apart from the tokens so that the processes reading their tokens cannot mint others; default issuer.pem in --dir (HANDOFF_ISSUER_KEY_FILE)")
	clinic := fs.String("clinic", env("HANDOFF_ISSUER_CLINIC", "demo"), "clinic of the user tokens it writes (HANDOFF_ISSUER_CLINIC)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !aip.ValidID(*clinic) {
		// The services refuse a token whose clinic is not a clinic id.
		return fmt.Errorf("issuer: --clinic %q is not a clinic id (lowercase letters, digits and hyphens)", *clinic)
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return err
	}
	if *keyFile == "" {
		*keyFile = filepath.Join(*dir, "issuer.pem")
	}
	if err := os.MkdirAll(filepath.Dir(*keyFile), 0o700); err != nil {
		return err
	}
	iss, err := auth.LoadOrCreateIssuer(*url, "handoff", *keyFile)
	if err != nil {
		return err
	}
	write := func(name, subject, clinic string, role auth.Role, ttl time.Duration) error {
		t := iss.MustMint(auth.TokenOptions{Subject: subject, Clinic: clinic, Roles: []auth.Role{role}, TTL: ttl})
		return os.WriteFile(filepath.Join(*dir, name), []byte(t+"\n"), 0o600)
	}
	refresh := func() error {
		// The narrow service identities that act for every clinic.
		for name, role := range map[string]auth.Role{"worker.token": auth.RoleWorker,
			"webhook-sender.token": auth.RoleWebhookSender, "calendar-reader.token": auth.RoleCalendarReader} {
			if err := write(name, "handoff-"+strings.ReplaceAll(string(role), "_", "-"), auth.AnyClinic, role, 24*time.Hour); err != nil {
				return err
			}
		}
		for name, role := range map[string]auth.Role{"counselor.token": auth.RoleCounselor, "admin.token": auth.RoleClinicAdmin,
			"ehr.token": auth.RoleEHR, "reminders.token": auth.RoleReminders} {
			if err := write(name, string(role)+"-1", *clinic, role, 24*time.Hour); err != nil {
				return err
			}
		}
		return nil
	}
	if err := refresh(); err != nil {
		return fmt.Errorf("issuer: write tokens: %w", err)
	}
	go func() {
		// Tokens last a day; rewrite them well before, so the worker, which
		// re-reads its file, never holds an expired one.
		for range time.Tick(6 * time.Hour) {
			if err := refresh(); err != nil {
				log.Error("issuer: refresh tokens", "error", err.Error())
			}
		}
	}()
	mux := http.NewServeMux()
	mux.Handle("GET /jwks.json", iss.JWKSHandler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	log.Info("development issuer", "jwks", *url+"/jwks.json", "tokens", *dir)
	return serveHTTP(ctx, log, *listen, mux)
}
