// Package grpcclient dials Handoff's services. Every call carries a bearer
// token: the caller's own when one is in the context (the gateway forwards
// the user's), otherwise the process's service token (the worker's).
package grpcclient

import (
	"context"
	"fmt"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/handoff-health/handoff/services/auth"
)

// TokenSource returns the service token for calls that carry no caller token.
type TokenSource func(ctx context.Context) (string, error)

// Config configures a connection.
type Config struct {
	// TLS, when set, secures the connection (mutual TLS with a client
	// certificate). Without it the connection is plaintext, for loopback.
	TLS credentials.TransportCredentials
	// Token is the fallback service token; nil sends only caller tokens.
	Token TokenSource
}

// Keepalive is how a connection finds its peer gone silent (a node lost,
// a network cut) while calls wait on it: pinged after Time without a
// frame, and closed when no answer comes within Timeout, failing its calls
// UNAVAILABLE and dropping the address from the round robin. Without it
// such a call waits out its deadline, and the next ones go the same way,
// until the kernel gives the connection up, some fifteen minutes on. Pings
// go only while calls are open; the servers allow one every 20 s
// (grpcserver).
var Keepalive = keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}

// MaxAnswer is the largest answer a connection takes from a service.
const MaxAnswer = 64 << 20

// Dial returns a client connection to target. It does not block.
func Dial(target string, cfg Config, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	creds := cfg.TLS
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(target, append([]grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithPerRPCCredentials(bearer{token: cfg.Token, secure: cfg.TLS != nil}),
		// Carries the trace on to the called service.
		grpc.WithStatsHandler(otelgrpc.NewClientHandler()),
		// A full page (a thousand families, say) passes gRPC's 4 MiB
		// default, and the refusal would reach a REST client as 429, as if
		// waiting would help. Answers come from Handoff's own services,
		// bounded by their page sizes.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxAnswer)),
		grpc.WithKeepaliveParams(Keepalive),
		// Calls take turns over every address the name resolves to (a
		// headless Kubernetes Service names each pod), rather than all
		// going down one long-lived connection to one replica while the
		// others the autoscaler added sit idle. The servers close
		// connections after a while (grpcserver), so new pods are found.
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
	}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("grpcclient: dial %s: %w", target, err)
	}
	return conn, nil
}

type bearer struct {
	token  TokenSource
	secure bool
}

func (b bearer) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	if t := auth.TokenFromContext(ctx); t != "" {
		return map[string]string{"authorization": "Bearer " + t}, nil
	}
	if b.token == nil {
		return nil, nil
	}
	t, err := b.token(ctx)
	if err != nil {
		return nil, fmt.Errorf("grpcclient: service token: %w", err)
	}
	return map[string]string{"authorization": "Bearer " + t}, nil
}

func (b bearer) RequireTransportSecurity() bool { return b.secure }
