package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRefusesWhatWouldFailInACluster changes one line of the base at a time,
// as an overlay or a hand edit might, and expects the validator to name
// what is wrong. Each change would pass kubectl's own checks.
func TestRefusesWhatWouldFailInACluster(t *testing.T) {
	examples, err := secretExamples(filepath.Join("..", "k8s", "secrets.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := validateKustomization(copyBase(t, "", "", ""), examples); err != nil {
		t.Fatalf("the base as it is: %v", err)
	}
	for _, c := range []struct {
		name, file, old, new, want string
	}{
		{"a container running as root", "families.yaml",
			"            allowPrivilegeEscalation: false\n", "            allowPrivilegeEscalation: false\n            runAsUser: 0\n",
			"container families must not run as root"},
		{"a readiness probe on a path nothing serves", "families.yaml",
			"path: /readyz", "path: /ready", "probe /readyz"},
		{"no HANDOFF_METRICS_LISTEN", "config.env",
			"HANDOFF_METRICS_LISTEN=0.0.0.0:9464\n", "", "HANDOFF_METRICS_LISTEN is not set"},
		{"probes on another port than the ops server's", "config.env",
			"HANDOFF_METRICS_LISTEN=0.0.0.0:9464", "HANDOFF_METRICS_LISTEN=0.0.0.0:9465", "serves it on 9465"},
		{"a secret among the settings every process reads", "config.env",
			"HANDOFF_MIGRATE=false\n", "HANDOFF_MIGRATE=false\nHANDOFF_PAYLOAD_KEYS=k1:c2VjcmV0\n",
			"holds HANDOFF_PAYLOAD_KEYS, a secret"},
		{"a secret written into a container's environment", "families.yaml",
			"            - {name: GOMEMLIMIT, value: 460MiB}\n",
			"            - {name: GOMEMLIMIT, value: 460MiB}\n            - {name: HANDOFF_DATABASE_URL, value: \"postgres://handoff_app:pw@db/handoff\"}\n",
			"container families sets HANDOFF_DATABASE_URL in its environment"},
		{"a projected secret missing from the example", "worker.yaml",
			"      volumes:\n",
			"      volumes:\n        - name: extra\n          projected: {sources: [{secret: {name: handoff-elsewhere}}]}\n",
			"secret handoff-elsewhere is not in secrets.example.yaml"},
		{"a writable root filesystem in the migration", "migrate-job.yaml",
			"readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "job handoff-migrate: container migrate must set readOnlyRootFilesystem"},
		{"a secret volume's key missing from the example", "interventions.yaml",
			"items: [{key: token, path: token}]", "items: [{key: tokn, path: token}]", "key tokn is not in secrets.example.yaml"},
		{"two processes sharing one TLS key", "gateway.yaml",
			"secretName: handoff-tls-gateway", "secretName: handoff-tls-families", "mount one TLS secret, handoff-tls-families"},
		{"a secret back in a container's environment", "families.yaml",
			"          envFrom:\n            - configMapRef: {name: handoff-config}\n",
			"          envFrom:\n            - configMapRef: {name: handoff-config}\n            - secretRef: {name: handoff-database}\n",
			"takes secret handoff-database into its environment"},
		{"a secret key as a variable", "worker.yaml",
			"            - name: HANDOFF_PAYLOAD_KEY_ID\n              valueFrom: {secretKeyRef: {name: handoff-payload-keys, key: HANDOFF_PAYLOAD_KEY_ID}}\n",
			"            - name: HANDOFF_PAYLOAD_KEYS\n              valueFrom: {secretKeyRef: {name: handoff-payload-keys, key: HANDOFF_PAYLOAD_KEYS}}\n",
			"takes HANDOFF_PAYLOAD_KEYS into its environment"},
		{"a namespace that no longer enforces the restricted profile", "namespace.yaml",
			"pod-security.kubernetes.io/enforce: restricted", "pod-security.kubernetes.io/enforce: baseline", "restricted Pod Security profile"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := validateKustomization(copyBase(t, c.file, c.old, c.new), examples)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v; want an error saying %q", err, c.want)
			}
		})
	}
}

// copyBase copies deploy/k8s/base into a temporary folder, replacing old
// with new once in file, and returns the copy's path.
func copyBase(t *testing.T, file, old, new string) string {
	t.Helper()
	src := filepath.Join("..", "k8s", "base")
	dst := t.TempDir()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		if e.Name() == file {
			if !strings.Contains(s, old) {
				t.Fatalf("%s holds no %q to change", file, old)
			}
			s = strings.Replace(s, old, new, 1)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// Compose gives each secret only to the processes that use it: the
// database's URL to the services and the migration, the payload keys to
// the processes that seal or open payloads.
func TestComposeGivesSecretsOnlyWhereUsed(t *testing.T) {
	if err := validateCompose(filepath.Join("..", "compose", "compose.yaml")); err != nil {
		t.Fatalf("the Compose file as it is: %v", err)
	}
	for _, c := range []struct{ name, old, new, want string }{
		{"the gateway given the database", "  gateway:\n    <<: *handoff\n    environment: *peer-env\n",
			"  gateway:\n    <<: *handoff\n    environment: *handoff-env\n", "service gateway is given HANDOFF_DATABASE_URL"},
		{"the issuer given the payload keys", "  issuer:\n    <<: *handoff\n    environment: *oidc-env\n",
			"  issuer:\n    <<: *handoff\n    environment: *peer-env\n", "service issuer is given HANDOFF_PAYLOAD_KEYS"},
		{"the worker given the webhook key as a file", "  worker:\n    <<: *handoff\n    environment: *peer-env\n",
			"  worker:\n    <<: *handoff\n    environment:\n      <<: *peer-env\n      HANDOFF_WEBHOOK_SECRET_KEY_FILE: /run/secrets/webhook\n",
			"service worker is given HANDOFF_WEBHOOK_SECRET_KEY"},
		// The gateway never talks to Temporal.
		{"the gateway given Temporal's API key", "  gateway:\n    <<: *handoff\n    environment: *peer-env\n",
			"  gateway:\n    <<: *handoff\n    environment:\n      <<: *peer-env\n      HANDOFF_TEMPORAL_API_KEY_FILE: /run/secrets/temporal\n",
			"service gateway is given HANDOFF_TEMPORAL_API_KEY"},
		// The services' login password, apart from their database URL.
		{"the worker given the database password", "  worker:\n    <<: *handoff\n    environment: *peer-env\n",
			"  worker:\n    <<: *handoff\n    environment:\n      <<: *peer-env\n      PGPASSWORD: x\n",
			"service worker is given PGPASSWORD"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			b, err := os.ReadFile(filepath.Join("..", "compose", "compose.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), c.old) {
				t.Fatalf("compose.yaml holds no %q to change", c.old)
			}
			docker, err := os.ReadFile(filepath.Join("..", "docker", "Dockerfile"))
			if err != nil {
				t.Fatal(err)
			}
			for path, data := range map[string]string{"compose/compose.yaml": strings.Replace(string(b), c.old, c.new, 1), "docker/Dockerfile": string(docker)} {
				if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(path)), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, path), []byte(data), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := validateCompose(filepath.Join(dir, "compose", "compose.yaml")); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v; want an error saying %q", err, c.want)
			}
		})
	}
}

// The validator's secret settings are the binary's: a secret the binary
// learns to read from a file must not escape the checks here.
func TestSecretVarsAreTheBinarys(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "services", "cmd", "handoff", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	src := string(b)
	start := strings.Index(src, "var fileSecrets = []string{")
	if start < 0 {
		t.Fatal("services/cmd/handoff/main.go declares no fileSecrets")
	}
	decl := src[start : start+strings.Index(src[start:], "}")]
	var binary []string
	for _, part := range strings.Split(decl, `"`)[1:] {
		if strings.HasPrefix(part, "HANDOFF_") {
			binary = append(binary, part)
		}
	}
	if len(binary) != len(secretVars) {
		t.Fatalf("the binary reads %v from files; the validator checks %d", binary, len(secretVars))
	}
	for _, v := range binary {
		if !secretVars[v] {
			t.Errorf("%s is read from a file by the binary but not checked here", v)
		}
	}
}
