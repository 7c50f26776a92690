package main

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"github.com/handoff-health/handoff/services/tlsconf"
	"github.com/handoff-health/handoff/services/tlsconf/tlstest"
)

// Traces go in clear only to this machine or on a network said to be
// trusted; elsewhere over TLS, checked against the collector's own CA or
// the system's roots, never the mesh's, and showing no certificate of the
// mesh.
func TestTracesLeaveOverTLS(t *testing.T) {
	pki := tlstest.New(t)
	pair := pki.Issue(t, "worker")
	mesh := tlsconf.Files{Cert: pair.Cert, Key: pair.Key, CA: pair.CA}
	collectorCA := tlstest.New(t).CAFile
	for _, c := range []struct {
		name      string
		c         common
		plaintext bool
		ca        string // the collector's roots ("" the system's)
	}{
		{"loopback", common{otlpEndpoint: "127.0.0.1:4317"}, true, ""},
		{"trusted network", common{otlpEndpoint: "otel-collector.observability.svc:4317", insecurePlaintext: true}, true, ""},
		{"public collector", common{otlpEndpoint: "otlp.example.com:4317", tls: mesh}, false, ""},
		{"a CA of its own", common{otlpEndpoint: "otel-collector.observability.svc:4317", otlpCA: collectorCA, tls: mesh}, false, collectorCA},
		{"a CA asked for on a trusted network", common{otlpEndpoint: "otel-collector.observability.svc:4317", otlpCA: collectorCA,
			insecurePlaintext: true}, false, collectorCA},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := c.c.otlpTLS()
			if err != nil {
				t.Fatal(err)
			}
			if (cfg == nil) != c.plaintext {
				t.Fatalf("TLS config %v; want plaintext %v", cfg, c.plaintext)
			}
			if cfg == nil {
				return
			}
			if cfg.GetClientCertificate != nil || len(cfg.Certificates) != 0 || cfg.InsecureSkipVerify {
				t.Fatal("the collector is shown a certificate of the mesh, or not checked")
			}
			if (cfg.RootCAs == nil) != (c.ca == "") {
				t.Fatalf("roots set %v; want roots from %q", cfg.RootCAs != nil, c.ca)
			}
			if c.ca != "" {
				pem, err := os.ReadFile(c.ca)
				if err != nil {
					t.Fatal(err)
				}
				want := x509.NewCertPool()
				want.AppendCertsFromPEM(pem)
				if !cfg.RootCAs.Equal(want) {
					t.Fatalf("the collector is checked against the wrong CA; want %s", filepath.Base(c.ca))
				}
			}
		})
	}
	if _, err := (&common{otlpEndpoint: "otlp.example.com:4317", otlpCA: filepath.Join(t.TempDir(), "missing")}).otlpTLS(); err == nil {
		t.Fatal("a CA file that cannot be read must fail at start")
	}
}
