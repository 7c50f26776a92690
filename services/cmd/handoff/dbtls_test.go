package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// PostgreSQL off this machine is reached only over TLS that verifies the
// server, unless the network is trusted; this machine may be reached in
// clear.
func TestDatabaseTransport(t *testing.T) {
	// What the machine's environment would add (PGSSLMODE, a root
	// certificate in the home directory) is kept out.
	for _, k := range []string{"PGSSLMODE", "PGSSLROOTCERT", "PGHOST", "PGSSLCERT", "PGSSLKEY"} {
		t.Setenv(k, "")
	}
	t.Setenv("HOME", t.TempDir())
	ca := filepath.Join(t.TempDir(), "root.crt")
	if err := os.WriteFile(ca, testCA(t), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		dsn     string
		trusted bool
		ok      bool
	}{
		{"postgres://u@db.example:5432/h?sslmode=disable", false, false},
		{"postgres://u@db.example:5432/h", false, false}, // prefer: falls back to plaintext
		{"postgres://u@db.example:5432/h?sslmode=require", false, false},
		{"postgres://u@db.example:5432/h?sslmode=verify-full", false, true},
		{"postgres://u@db.example:5432/h?sslmode=verify-ca&sslrootcert=" + ca, false, true},
		// verify-ca without a root certificate checks against the system's
		// roots and no name: any public certificate passes.
		{"postgres://u@db.example:5432/h?sslmode=verify-ca", false, false},
		// require with a root certificate is verify-ca.
		{"postgres://u@db.example:5432/h?sslmode=require&sslrootcert=" + ca, false, true},
		{"postgres://u@/h?host=/var/run/postgresql&sslmode=disable", false, true},
		{"postgres://u@db.example:5432/h?sslmode=disable", true, true},
		{"postgres://u@127.0.0.1:5432/h?sslmode=disable", false, true},
		{"postgres://u@localhost/h?sslmode=disable", false, true},
		{"host=/var/run/postgresql user=u dbname=h sslmode=disable", false, true},
		// Every host of a list counts.
		{"postgres://u@127.0.0.1:5432,db.example:5432/h?sslmode=disable", false, false},
	} {
		err := databaseTransport(c.dsn, c.trusted)
		if (err == nil) != c.ok {
			t.Errorf("%s (trusted %v): %v; want ok %v", c.dsn, c.trusted, err, c.ok)
		}
		if err != nil && strings.Contains(err.Error(), "u@") {
			t.Errorf("the refusal repeats the URL: %v", err)
		}
	}
}

// testCA is a self-signed CA certificate in PEM.
func testCA(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
