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
// trusted; elsewhere over TLS, checked against the collector's CA (or the
// mesh's), showing the process's certificate when it has one.
func TestTracesLeaveOverTLS(t *testing.T) {
	pki := tlstest.New(t)
	pair := pki.Issue(t, "worker")
	otherCA := tlstest.New(t).CAFile
	for _, c := range []struct {
		name      string
		c         common
		plaintext bool
		ca        string // whose roots the collector is checked against ("" the system's)
		cert      bool
	}{
		{"loopback", common{otlpEndpoint: "127.0.0.1:4317"}, true, "", false},
		{"trusted network", common{otlpEndpoint: "otel-collector.observability.svc:4317", insecurePlaintext: true}, true, "", false},
		{"public collector", common{otlpEndpoint: "otlp.example.com:4317"}, false, "", false},
		{"the mesh's CA", common{otlpEndpoint: "otel-collector.observability.svc:4317",
			tls: tlsconf.Files{Cert: pair.Cert, Key: pair.Key, CA: pair.CA}}, false, pair.CA, true},
		{"a CA of its own", common{otlpEndpoint: "otel-collector.observability.svc:4317", otlpCA: otherCA,
			tls: tlsconf.Files{Cert: pair.Cert, Key: pair.Key, CA: pair.CA}}, false, otherCA, true},
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
			if (cfg.RootCAs == nil) != (c.ca == "") || (cfg.GetClientCertificate != nil) != c.cert {
				t.Fatalf("roots set %v, client certificate %v; want roots from %q, certificate %v", cfg.RootCAs != nil, cfg.GetClientCertificate != nil, c.ca, c.cert)
			}
			if c.ca != "" {
				pem, err := os.ReadFile(c.ca)
				if err != nil {
					t.Fatal(err)
				}
				if !cfg.RootCAs.Equal(poolOf(t, pem)) {
					t.Fatalf("the collector is checked against the wrong CA; want %s", filepath.Base(c.ca))
				}
			}
		})
	}
	if _, err := (&common{otlpEndpoint: "otlp.example.com:4317", otlpCA: filepath.Join(t.TempDir(), "missing")}).otlpTLS(); err == nil {
		t.Fatal("a CA file that cannot be read must fail at start")
	}
}

func poolOf(t *testing.T, pem []byte) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		t.Fatal("no certificate")
	}
	return p
}
