package tlsconf

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/handoff-health/handoff/services/tlsconf/tlstest"
)

// issue makes a certificate of p's for 127.0.0.1.
func issue(t *testing.T, p *tlstest.PKI, name string) Files {
	pair := p.Issue(t, name)
	return Files{Cert: pair.Cert, Key: pair.Key, CA: pair.CA}
}

// serve starts a health server with the server credentials of files, and
// returns a check that calls it with a client's credentials.
func serve(t *testing.T, files Files) func(credentials.TransportCredentials) error {
	t.Helper()
	serverCreds, err := Server(files)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(serverCreds))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return func(creds credentials.TransportCredentials) error {
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(creds))
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
}

// With certificates configured, only a client holding a certificate from
// the same CA gets through.
func TestMutualTLS(t *testing.T) {
	p := tlstest.New(t)
	check := serve(t, issue(t, p, "families"))
	clientCreds, err := Client(issue(t, p, "gateway"))
	if err != nil {
		t.Fatal(err)
	}
	if err := check(clientCreds); err != nil {
		t.Fatalf("client with a certificate: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(p.CA)
	noCert := credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13})
	if err := check(noCert); err == nil {
		t.Fatal("a client without a certificate got through")
	}
	stranger, _ := Client(issue(t, tlstest.New(t), "stranger"))
	if err := check(stranger); err == nil {
		t.Fatal("a client with another CA's certificate got through")
	}
	if _, err := Server(Files{Cert: "x"}); err == nil {
		t.Fatal("a partial configuration must be refused")
	}
	if c, err := Server(Files{}); c != nil || err != nil {
		t.Fatal("no files means no TLS")
	}
}

// copyPair writes from's files over to's, as a renewal does.
func copyPair(t *testing.T, from, to Files) {
	t.Helper()
	for _, p := range [][2]string{{from.Cert, to.Cert}, {from.Key, to.Key}, {from.CA, to.CA}} {
		b, err := os.ReadFile(p[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p[1], b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// placed copies f's files to a directory of their own, so that a test can
// overwrite them.
func placed(t *testing.T, f Files) Files {
	t.Helper()
	dir := t.TempDir()
	out := Files{Cert: filepath.Join(dir, "tls.crt"), Key: filepath.Join(dir, "tls.key"), CA: filepath.Join(dir, "ca.crt")}
	copyPair(t, f, out)
	return out
}

// Certificates renewed on disk are used by the next connection, by both
// ends, without new credentials: after both move to another CA, the old
// client is refused and the same credentials objects connect again.
func TestRenewedCertificatesAreUsed(t *testing.T) {
	a, b := tlstest.New(t), tlstest.New(t)
	serverFiles, clientFiles := placed(t, issue(t, a, "families")), placed(t, issue(t, a, "gateway"))
	check := serve(t, serverFiles)
	clientCreds, err := Client(clientFiles)
	if err != nil {
		t.Fatal(err)
	}
	if err := check(clientCreds); err != nil {
		t.Fatalf("before the renewal: %v", err)
	}
	oldClient, err := Client(issue(t, a, "worker"))
	if err != nil {
		t.Fatal(err)
	}
	copyPair(t, issue(t, b, "families"), serverFiles)
	copyPair(t, issue(t, b, "gateway"), clientFiles)
	if err := check(clientCreds); err != nil {
		t.Fatalf("after the renewal: %v", err)
	}
	if err := check(oldClient); err == nil {
		t.Fatal("a client of the old CA got through after the server moved to the new one")
	}
	// Files caught halfway (a key that does not match) leave the last good
	// pair in use.
	if err := os.WriteFile(clientFiles.Key, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := check(clientCreds); err != nil {
		t.Fatalf("with a broken key file: %v", err)
	}
}

// Files that cannot be used are reported once for each way they cannot,
// with the expiry of the credentials kept: a renewal that stays broken is
// not silent, nor logged at every handshake.
func TestUnusableFilesAreReportedOnce(t *testing.T) {
	var buf bytes.Buffer
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	reports := func() int { return strings.Count(buf.String(), "cannot be used") }
	defer func(g time.Duration) { troubleGrace = g }(troubleGrace)
	troubleGrace = 0 // reported on the next handshake that meets it

	a := tlstest.New(t)
	serverFiles, clientFiles := placed(t, issue(t, a, "families")), placed(t, issue(t, a, "gateway"))
	check := serve(t, serverFiles)
	clientCreds, err := Client(clientFiles)
	if err != nil {
		t.Fatal(err)
	}
	get, err := ClientCertificate(clientFiles.Cert, clientFiles.Key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(clientFiles.Key, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := check(clientCreds); err != nil {
			t.Fatalf("with a broken key file: %v", err)
		}
		if _, err := get(nil); err != nil {
			t.Fatalf("the key pair with a broken key file: %v", err)
		}
	}
	if n := reports(); n != 2 || !strings.Contains(buf.String(), "expires=20") {
		t.Fatalf("%d reports after three handshakes each, want one for the credentials and one for the key pair, with the expiry:\n%s", n, buf.String())
	}
	// Mended, then broken another way: reported again.
	copyPair(t, issue(t, a, "gateway-renewed"), clientFiles)
	if err := check(clientCreds); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(clientFiles.Cert); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := check(clientCreds); err != nil {
			t.Fatalf("with the certificate file gone: %v", err)
		}
	}
	if n := reports(); n != 3 || !strings.Contains(buf.String(), "no such file") {
		t.Fatalf("%d reports after the file went, want 3:\n%s", n, buf.String())
	}
	// Within the grace (files caught halfway through a rotation), none.
	troubleGrace = time.Hour
	copyPair(t, issue(t, a, "gateway-again"), clientFiles)
	if err := os.WriteFile(clientFiles.Key, []byte("not yet"), 0o600); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := check(clientCreds); err != nil {
			t.Fatal(err)
		}
	}
	if n := reports(); n != 3 {
		t.Fatalf("%d reports, want none more within the grace:\n%s", n, buf.String())
	}
}

// The Temporal client's certificate is read again at each handshake too.
func TestClientCertificateFollowsTheFiles(t *testing.T) {
	p := tlstest.New(t)
	files := placed(t, issue(t, p, "worker"))
	get, err := ClientCertificate(files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	first, err := get(nil)
	if err != nil {
		t.Fatal(err)
	}
	copyPair(t, issue(t, p, "worker-renewed"), files)
	second, err := get(nil)
	if err != nil || second == first || second.Leaf == nil && len(second.Certificate) == 0 {
		t.Fatalf("after the renewal: %v, %v", second, err)
	}
	if leaf, _ := x509.ParseCertificate(second.Certificate[0]); leaf == nil || leaf.Subject.CommonName != "worker-renewed" {
		t.Fatalf("after the renewal the certificate is %v", leaf)
	}
	if _, err := ClientCertificate(files.Cert, filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("a missing key file must fail at once")
	}
}
