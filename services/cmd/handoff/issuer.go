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
	dir := fs.String("dir", env("HANDOFF_ISSUER_DIR", "/var/lib/handoff-issuer"), "where the user tokens (counselor, admin, EHR, reminders) are written, for you to copy out; mount it into no process (HANDOFF_ISSUER_DIR)")
	serviceDir := fs.String("service-dir", env("HANDOFF_ISSUER_SERVICE_DIR", ""), "where each service identity's token goes, in a folder of its own (worker/, webhook-sender/, calendar-reader/) for each to be mounted into its one process only; default --dir, all together (HANDOFF_ISSUER_SERVICE_DIR)")
	keyFile := fs.String("key-file", env("HANDOFF_ISSUER_KEY_FILE", "/var/lib/handoff-issuer-key/issuer.pem"), "the signing key, outside the token folders so that the processes reading their tokens cannot mint others (HANDOFF_ISSUER_KEY_FILE)")
	audience := fs.String("audience", env("HANDOFF_OIDC_AUDIENCE", "handoff"), "the audience written into tokens: the services' --oidc-audience (HANDOFF_OIDC_AUDIENCE)")
	clinic := fs.String("clinic", env("HANDOFF_ISSUER_CLINIC", "demo"), "clinic of the user tokens it writes (HANDOFF_ISSUER_CLINIC)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !aip.ValidID(*clinic) {
		// The services refuse a token whose clinic is not a clinic id.
		return fmt.Errorf("issuer: --clinic %q is not a clinic id (lowercase letters, digits and hyphens)", *clinic)
	}
	if *audience == "" {
		return fmt.Errorf("issuer: --audience is empty: the services refuse tokens minted for none")
	}
	if *serviceDir == "" {
		*serviceDir = *dir
	}
	// Compared as absolute, clean paths: a relative key file inside an
	// absolute --dir, or "/a/" beside "/a", is the same place.
	for _, p := range []*string{dir, serviceDir, keyFile} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return fmt.Errorf("issuer: %s: %w", *p, err)
		}
		*p = abs
	}
	for _, d := range []string{*dir, *serviceDir} {
		if within(*keyFile, d) {
			return fmt.Errorf("issuer: --key-file %s is inside %s: whoever reads the tokens there could mint any token", *keyFile, d)
		}
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(*keyFile), 0o700); err != nil {
		return err
	}
	iss, err := auth.LoadOrCreateIssuer(*url, *audience, *keyFile)
	if err != nil {
		return err
	}
	write := func(path, subject, clinic string, role auth.Role, ttl time.Duration) error {
		t := iss.MustMint(auth.TokenOptions{Subject: subject, Clinic: clinic, Roles: []auth.Role{role}, TTL: ttl})
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return err
		}
		return os.WriteFile(path, []byte(t+"\n"), 0o600)
	}
	refresh := func() error {
		// The narrow service identities that act for every clinic, each
		// in a folder of its own when --service-dir is given.
		for _, role := range []auth.Role{auth.RoleWorker, auth.RoleWebhookSender, auth.RoleCalendarReader} {
			if err := write(serviceTokenPath(*serviceDir, *dir, role), serviceSubject(role), auth.AnyClinic, role, 24*time.Hour); err != nil {
				return err
			}
		}
		for name, role := range map[string]auth.Role{"counselor.token": auth.RoleCounselor, "admin.token": auth.RoleClinicAdmin,
			"ehr.token": auth.RoleEHR, "reminders.token": auth.RoleReminders} {
			if err := write(filepath.Join(*dir, name), string(role)+"-1", *clinic, role, 24*time.Hour); err != nil {
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
	log.Info("development issuer", "jwks", *url+"/jwks.json", "tokens", *dir, "service_tokens", *serviceDir)
	return serveHTTP(ctx, log, *listen, mux)
}

// serviceSubject is the subject of a service identity's token: its role's
// name, hyphenated.
func serviceSubject(role auth.Role) string {
	return "handoff-" + strings.ReplaceAll(string(role), "_", "-")
}

// serviceTokenPath is where the token of service identity role goes: in
// serviceDir, in a folder named for it (worker/worker.token), or, with
// serviceDir the user tokens' dir, beside them (worker.token).
func serviceTokenPath(serviceDir, dir string, role auth.Role) string {
	name := strings.TrimPrefix(serviceSubject(role), "handoff-")
	if serviceDir == dir {
		return filepath.Join(dir, name+".token")
	}
	return filepath.Join(serviceDir, name, name+".token")
}

// within reports whether path, absolute and clean, is dir or lies under
// it.
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}
