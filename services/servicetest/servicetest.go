// Package servicetest runs a service on a real gRPC listener for tests, with
// the production interceptor chain and a test token issuer.
package servicetest

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/grpcclient"
	"github.com/handoff-health/handoff/services/grpcserver"
)

// Env is a running service and a way to call it as anyone.
type Env struct {
	Issuer *auth.Issuer
	Addr   string
	Conn   *grpc.ClientConn
	Server *grpcserver.Server
}

// Start serves what register registers on 127.0.0.1 until the test ends.
func Start(t testing.TB, policy grpcserver.Policy, register func(*grpc.Server)) *Env {
	t.Helper()
	iss, err := auth.NewIssuer("https://issuer.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := grpcserver.New(grpcserver.Config{
		Logger:   slog.New(slog.DiscardHandler),
		Verifier: iss.Verifier(),
		Policy:   policy,
	})
	if err != nil {
		t.Fatal(err)
	}
	register(srv.Server)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx, lis, 5*time.Second); close(done) }()
	conn, err := grpcclient.Dial(lis.Addr().String(), grpcclient.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		<-done
	})
	return &Env{Issuer: iss, Addr: lis.Addr().String(), Conn: conn, Server: srv}
}

// As returns a context whose calls carry a token for subject in clinic with
// roles.
func (e *Env) As(clinic, subject string, roles ...auth.Role) context.Context {
	return auth.WithToken(context.Background(), e.Issuer.MustMint(auth.TokenOptions{
		Subject: subject, Clinic: clinic, Roles: roles,
	}))
}

// Counselor is As with the counselor role.
func (e *Env) Counselor(clinic string) context.Context {
	return e.As(clinic, "counselor-1", auth.RoleCounselor)
}

// Also serves another service with the same token issuer and returns a
// connection to it, for services that call each other.
func (e *Env) Also(t testing.TB, policy grpcserver.Policy, register func(*grpc.Server)) *grpc.ClientConn {
	t.Helper()
	return e.AlsoWith(t, grpcserver.Config{Policy: policy}, register)
}

// AlsoWith is Also with more of the server's configuration (request
// credentials, an auditor); the logger and verifier are the environment's.
func (e *Env) AlsoWith(t testing.TB, cfg grpcserver.Config, register func(*grpc.Server)) *grpc.ClientConn {
	t.Helper()
	cfg.Logger, cfg.Verifier = slog.New(slog.DiscardHandler), e.Issuer.Verifier()
	srv, err := grpcserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	register(srv.Server)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx, lis, 5*time.Second); close(done) }()
	conn, err := grpcclient.Dial(lis.Addr().String(), grpcclient.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); cancel(); <-done })
	return conn
}
