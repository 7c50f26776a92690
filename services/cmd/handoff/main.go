// Command handoff runs Handoff's processes: each service, the worker, the
// gateway, migrations, and `dev`, the whole system on one machine.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/handoff-health/handoff/services/telemetry"
)

type command struct {
	summary string
	run     func(ctx context.Context, log *slog.Logger, args []string) error
	// oneShot commands do a job and exit: stopped before the end, the job
	// is not done, and the exit status must say so (a migration Job
	// stopped halfway must not count as complete).
	oneShot bool
	// secrets are the fileSecrets the command reads: only their files are
	// read at start. A file meant for another process (Temporal's API key,
	// set for every process by a shared ConfigMap, is not mounted on the
	// gateway) must not stop this one.
	secrets []string
}

var commands = map[string]command{}

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	// The few packages that log without being handed a logger (auth's key
	// set, tlsconf's files) write as the rest do, in JSON.
	slog.SetDefault(log)
	if len(os.Args) < 2 || commands[os.Args[1]].run == nil {
		usage()
		os.Exit(2)
	}
	files, err := secretFiles(os.Environ(), commands[os.Args[1]].secrets, os.ReadFile)
	if err != nil {
		log.Error("exit", "command", os.Args[1], "error", telemetry.LogSafe(err))
		os.Exit(2)
	}
	fromFiles = files
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A second signal ends the process at once: the drain and the stops
	// after the first may take half a minute, and Ctrl-C again must not
	// be swallowed.
	go func() { <-ctx.Done(); stop() }()
	cmd := commands[os.Args[1]]
	os.Exit(exitCode(log, os.Args[1], cmd.oneShot, cmd.run(ctx, log, os.Args[2:])))
}

// exitCode is the process's exit status after a command returned err. A
// long-running process stopped by a signal exits 0, as asked; a one-shot
// command stopped before it finished exits 1.
func exitCode(log *slog.Logger, name string, oneShot bool, err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 2
	case errors.Is(err, context.Canceled) && !oneShot:
		return 0
	case errors.Is(err, context.Canceled):
		log.Error("exit: stopped before it finished", "command", name, "error", telemetry.LogSafe(err))
		return 1
	}
	log.Error("exit", "command", name, "error", telemetry.LogSafe(err))
	return 1
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: handoff <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-14s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(os.Stderr, "\nRun 'handoff <command> -h' for its flags. Every flag can also be set by the environment variable named in its help.")
}

// env returns the environment variable name's value, or def when it is
// unset or empty: a manifest's "NAME=" left blank must not listen on every
// interface at a random port, or send an empty audience. The variables in
// emptyMeans are the exception: there empty says something.
func env(name, def string) string {
	if v, ok := fromFiles[name]; ok {
		return v
	}
	if v, ok := os.LookupEnv(name); ok && (v != "" || emptyMeans[name]) {
		return v
	}
	return def
}

// fileSecrets are the variables that may instead be given as a file,
// NAME_FILE naming it: a Secret mounted as a volume is not in the
// process's environment, where child processes, /proc/<pid>/environ and
// crash dumps would see it.
var fileSecrets = []string{"HANDOFF_DATABASE_URL", "HANDOFF_PAYLOAD_KEYS", "HANDOFF_TEMPORAL_API_KEY",
	"HANDOFF_WEBHOOK_SECRET_KEY", "HANDOFF_WEBHOOK_PREVIOUS_SECRET_KEYS", "HANDOFF_APP_LOGIN_PASSWORD"}

// optionalFiles are the fileSecrets whose file may be missing, the
// variable then unset: a key of their Secret an operator leaves out (the
// previous webhook keys outside a rotation; the login password where an
// administrator made the role). Mounted whole, such a Secret has no file
// for the key.
var optionalFiles = map[string]bool{"HANDOFF_WEBHOOK_PREVIOUS_SECRET_KEYS": true, "HANDOFF_APP_LOGIN_PASSWORD": true}

// fromFiles holds the values of fileSecrets read from their files at
// start; env takes them first.
var fromFiles map[string]string

// secretFiles reads the file of each of names (of fileSecrets) whose
// NAME_FILE environ sets, without its trailing line end. A variable set both ways,
// a file that cannot be read, or an empty one (but for optionalFiles,
// then unset) is an error: the process must not start on another value
// than the one meant.
func secretFiles(environ, names []string, read func(string) ([]byte, error)) (map[string]string, error) {
	vars := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vars[k] = v
		}
	}
	out := map[string]string{}
	for _, name := range names {
		path := vars[name+"_FILE"]
		if path == "" {
			continue
		}
		if vars[name] != "" {
			return nil, fmt.Errorf("%s and %s_FILE are both set: keep one", name, name)
		}
		b, err := read(path)
		if errors.Is(err, fs.ErrNotExist) && optionalFiles[name] {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s_FILE: %w", name, err)
		}
		v := strings.TrimRight(string(b), "\r\n")
		if v == "" && !optionalFiles[name] {
			// Unset, the variable would take its default: the database
			// URL's is a local superuser's.
			return nil, fmt.Errorf("%s_FILE: %s is empty", name, path)
		}
		if v != "" {
			out[name] = v
		}
	}
	return out, nil
}

// emptyMeans are the variables whose empty value is meaningful.
var emptyMeans = map[string]bool{
	"HANDOFF_WEBHOOKS_ADDRESS": true, // the gateway leaves the webhooks routes out
}

// fromEnv sets flags from environment variables, given as pairs of flag
// name and variable name, before the command line is parsed (so a flag
// still wins). The flag parses the value: "HANDOFF_MIGRATE=0" means false
// and a value that is no bool or duration is an error, not a default.
func fromEnv(fs *flag.FlagSet, pairs ...string) error {
	for i := 0; i+1 < len(pairs); i += 2 {
		v, ok := os.LookupEnv(pairs[i+1])
		if !ok || v == "" {
			continue // set but empty is unset, as for every other variable
		}
		if err := fs.Set(pairs[i], v); err != nil {
			return fmt.Errorf("%s=%q: %w", pairs[i+1], v, err)
		}
	}
	return nil
}

// secret is a string flag whose value never shows in usage output: the
// flag package prints defaults, and a default taken from the environment
// may be a database password or a key, and usage output ends up in logs.
type secret struct{ p *string }

func (s secret) String() string {
	if s.p == nil || *s.p == "" {
		return ""
	}
	return "(set)"
}

func (s secret) Set(v string) error { *s.p = v; return nil }

// secretVar defines a secret string flag with default def.
func secretVar(fs *flag.FlagSet, p *string, name, def, usage string) {
	*p = def
	fs.Var(secret{p}, name, usage)
}
