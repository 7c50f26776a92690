package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/handoff-health/handoff/services/grpcclient"
	"github.com/handoff-health/handoff/services/stack"
	"github.com/handoff-health/handoff/services/tlsconf"
	"github.com/handoff-health/handoff/workflows/activities"
)

func init() {
	commands["worker"] = command{summary: "run the Temporal worker (workflows and activities)", run: runWorker,
		secrets: []string{"HANDOFF_PAYLOAD_KEYS", "HANDOFF_TEMPORAL_API_KEY"}}
}

func runWorker(ctx context.Context, log *slog.Logger, args []string) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	var c common
	c.register(fs, false)
	fam := fs.String("families-address", env("HANDOFF_FAMILIES_ADDRESS", familiesAddr), "families service (HANDOFF_FAMILIES_ADDRESS)")
	iv := fs.String("interventions-address", env("HANDOFF_INTERVENTIONS_ADDRESS", interventionsAddr), "interventions service (HANDOFF_INTERVENTIONS_ADDRESS)")
	ref := fs.String("referrals-address", env("HANDOFF_REFERRALS_ADDRESS", referralsAddr), "referrals service (HANDOFF_REFERRALS_ADDRESS)")
	tokenFile := fs.String("token-file", env("HANDOFF_WORKER_TOKEN_FILE", ""),
		"file holding the worker's service token, re-read when it changes so the issuer can rotate it (HANDOFF_WORKER_TOKEN_FILE)")
	stopTimeout := fs.Duration("stop-timeout", 50*time.Second,
		"how long running activities may finish when the worker is told to stop; keep it under the pod's grace period (HANDOFF_WORKER_STOP_TIMEOUT)")
	settingsFile := fs.String("settings-file", env("HANDOFF_WORKFLOW_SETTINGS_FILE", ""),
		"JSON file with workflow timings per clinic, e.g. reminder offsets (HANDOFF_WORKFLOW_SETTINGS_FILE)")
	if err := fromEnv(fs, "stop-timeout", "HANDOFF_WORKER_STOP_TIMEOUT"); err != nil {
		return err
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	var settings func(string) activities.Settings
	if *settingsFile != "" {
		var err error
		if settings, err = activities.LoadSettingsFile(*settingsFile); err != nil {
			return err
		}
	}
	if *tokenFile == "" {
		return fmt.Errorf("--token-file is required: the worker calls the services with its own identity")
	}
	_, o, flush, err := c.observe(ctx, log, "worker")
	if err != nil {
		return err
	}
	defer flush()
	tc, err := c.temporal(log, false)
	if err != nil {
		return err
	}
	defer tc.Close()
	creds, err := tlsconf.Client(c.tls)
	if err != nil {
		return err
	}
	for _, addr := range []string{*fam, *iv, *ref} {
		if err := c.plaintext("calling", addr, creds); err != nil {
			return err
		}
	}
	c.warnWaived(log)
	token, err := startToken(ctx, *tokenFile)
	if err != nil {
		return err
	}
	fatal := make(chan error, 1)
	w, closeConns, err := stack.NewWorker(tc, stack.WorkerConfig{Token: token, TLS: creds,
		FamiliesAddr: *fam, InterventionsAddr: *iv, ReferralsAddr: *ref, Settings: settings, StopTimeout: *stopTimeout,
		OnFatalError: func(err error) {
			select {
			case fatal <- err:
			default:
			}
		}})
	if err != nil {
		return err
	}
	defer closeConns()
	if err := w.Start(); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	o.setReady(func(context.Context) error { return nil })
	log.Info("worker running", "temporal", c.temporalAddr, "namespace", c.temporalNamespace)
	return waitWorker(ctx, w, fatal)
}

// waitWorker runs until ctx ends, then stops w (finishing running
// activities), or until w stopped itself on a fatal error: the process
// then exits with it, to be restarted, instead of staying up and ready
// with no one polling. The SDK reports the error before its own stop,
// which runs apart: w.Stop (which may be called again) waits for it, so
// that activities still running finish, within the stop timeout, before
// the connections they use are closed.
func waitWorker(ctx context.Context, w interface{ Stop() }, fatal <-chan error) error {
	select {
	case <-ctx.Done():
		w.Stop()
		return nil
	case err := <-fatal:
		w.Stop()
		return fmt.Errorf("worker stopped: %w", err)
	}
}

// startToken is fileToken(path), read once now: a path that is wrong, a
// file not mounted or an empty one stops the process at its start,
// rather than leave it ready while every call it makes as itself fails.
func startToken(ctx context.Context, path string) (grpcclient.TokenSource, error) {
	tok := fileToken(path)
	if _, err := tok(ctx); err != nil {
		return nil, err
	}
	return tok, nil
}

// fileToken reads a token file, again whenever it changes; an empty one
// is an error.
func fileToken(path string) grpcclient.TokenSource {
	var mu sync.Mutex
	var token string
	var mod time.Time
	return func(context.Context) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		st, err := os.Stat(path)
		if err != nil {
			return "", fmt.Errorf("token file: %w", err)
		}
		if st.ModTime().Equal(mod) && token != "" {
			return token, nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("token file: %w", err)
		}
		t := strings.TrimSpace(string(b))
		if t == "" {
			// Sent as "Bearer ", it would be refused as a bad token; this
			// says what is wrong.
			return "", fmt.Errorf("token file: %s is empty", path)
		}
		token, mod = t, st.ModTime()
		return token, nil
	}
}
