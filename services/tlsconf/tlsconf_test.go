package tlsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
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

// With certificates configured, only a client holding a certificate from
// the same CA gets through.
func TestMutualTLS(t *testing.T) {
	p := tlstest.New(t)
	serverCreds, err := Server(issue(t, p, "families"))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(serverCreds))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	check := func(creds credentials.TransportCredentials) error {
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
