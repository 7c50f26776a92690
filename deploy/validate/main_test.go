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
		{"no HANDOFF_METRICS_LISTEN", "config.yaml",
			"  HANDOFF_METRICS_LISTEN: 0.0.0.0:9464\n", "", "HANDOFF_METRICS_LISTEN is not set"},
		{"probes on another port than the ops server's", "config.yaml",
			"HANDOFF_METRICS_LISTEN: 0.0.0.0:9464", "HANDOFF_METRICS_LISTEN: 0.0.0.0:9465", "serves it on 9465"},
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
