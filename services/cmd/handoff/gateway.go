package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/handoff-health/handoff/services/gateway"
	"github.com/handoff-health/handoff/services/grpcclient"
	"github.com/handoff-health/handoff/services/tlsconf"
	"github.com/handoff-health/handoff/workflows/codec"
)

func init() {
	commands["gateway"] = command{summary: "run the REST gateway", run: runGateway, secrets: []string{"HANDOFF_PAYLOAD_KEYS"}}
}

func runGateway(ctx context.Context, log *slog.Logger, args []string) error {
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	var c common
	c.register(fs, false)
	listen := fs.String("listen", env("HANDOFF_GATEWAY_LISTEN", gatewayAddr), "HTTP listen address (HANDOFF_GATEWAY_LISTEN)")
	fam := fs.String("families-address", env("HANDOFF_FAMILIES_ADDRESS", familiesAddr), "families service (HANDOFF_FAMILIES_ADDRESS)")
	iv := fs.String("interventions-address", env("HANDOFF_INTERVENTIONS_ADDRESS", interventionsAddr), "interventions service (HANDOFF_INTERVENTIONS_ADDRESS)")
	ref := fs.String("referrals-address", env("HANDOFF_REFERRALS_ADDRESS", referralsAddr), "referrals service (HANDOFF_REFERRALS_ADDRESS)")
	wh := fs.String("webhooks-address", env("HANDOFF_WEBHOOKS_ADDRESS", webhooksAddr), "webhooks service; empty leaves its routes out (HANDOFF_WEBHOOKS_ADDRESS)")
	origins := fs.String("cors-origins", env("HANDOFF_CORS_ORIGINS", ""), "comma-separated browser origins allowed to call the API (HANDOFF_CORS_ORIGINS)")
	publicURL := fs.String("public-url", env("HANDOFF_PUBLIC_URL", ""), "the gateway's public address, for links in FHIR answers; empty takes the request's Host (HANDOFF_PUBLIC_URL)")
	httpsCert := fs.String("https-cert", env("HANDOFF_GATEWAY_TLS_CERT", ""), "certificate to serve HTTPS with, to the ingress (HANDOFF_GATEWAY_TLS_CERT); empty serves plain HTTP")
	httpsKey := fs.String("https-key", env("HANDOFF_GATEWAY_TLS_KEY", ""), "its private key (HANDOFF_GATEWAY_TLS_KEY)")
	plainHTTP := fs.Bool("plain-http", false,
		"serve plain HTTP off loopback, where TLS ends before this hop (an ingress on a network that encrypts it, a mesh) (HANDOFF_GATEWAY_PLAIN_HTTP)")
	envErr := fromEnv(fs, "plain-http", "HANDOFF_GATEWAY_PLAIN_HTTP")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if envErr != nil {
		return envErr
	}
	var httpsConfig *tls.Config
	switch {
	case (*httpsCert == "") != (*httpsKey == ""):
		return errors.New("gateway: --https-cert and --https-key go together")
	case *httpsCert != "":
		get, err := tlsconf.ServerCertificate(*httpsCert, *httpsKey)
		if err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
		httpsConfig = &tls.Config{GetCertificate: get, MinVersion: tls.VersionTLS12}
	case !isLoopback(*listen) && !*plainHTTP && !c.insecurePlaintext:
		// Every call's bearer token and the records it returns cross this
		// hop: plain HTTP here is a decision the deployment states, as for
		// gRPC between the processes, not a default.
		return fmt.Errorf("gateway: plain HTTP on %s would carry bearer tokens and records in clear: set --https-cert and --https-key "+
			"(HANDOFF_GATEWAY_TLS_CERT, _KEY), or --plain-http (HANDOFF_GATEWAY_PLAIN_HTTP) where TLS ends before this hop", *listen)
	case !isLoopback(*listen):
		log.Warn("serving plain HTTP off loopback, as configured: bearer tokens and records cross this hop in clear unless the network encrypts it", "listen", *listen)
	}
	verifier, err := c.verifier()
	if err != nil {
		return err
	}
	tel, o, flush, err := c.observe(ctx, log, "gateway")
	if err != nil {
		return err
	}
	defer flush()
	creds, err := tlsconf.Client(c.tls)
	if err != nil {
		return err
	}
	for _, addr := range []string{*fam, *iv, *ref, *wh} {
		if addr == "" {
			continue
		}
		if err := c.plaintext("calling", addr, creds); err != nil {
			return err
		}
	}
	c.warnWaived(log)
	var codecHandler http.Handler
	if c.payloadKeys != "" {
		// The remote codec for the Temporal Web UI: clinic administrators only.
		pc, err := codec.Parse(c.payloadKeyID, c.payloadKeys)
		if err != nil {
			return err
		}
		codecHandler = pc.Handler(codecAccess(log, verifier), codecOpened(log))
	}
	gw, err := gateway.New(ctx, gateway.Config{Log: log, FamiliesAddr: *fam, InterventionsAddr: *iv, ReferralsAddr: *ref,
		WebhooksAddr: *wh, Client: grpcclient.Config{TLS: creds}, Verifier: verifier, CORSOrigins: splitList(*origins), PublicURL: *publicURL,
		Codec: codecHandler})
	if err != nil {
		return err
	}
	defer gw.Close()
	mux := http.NewServeMux()
	if metricsOnPublicPort(*listen, c.metricsListen) {
		mux.Handle("GET /metrics", tel.Handler())
	} else if c.metricsListen == "" {
		log.Warn("metrics not served: the public port is not on loopback; set HANDOFF_METRICS_LISTEN")
	}
	mux.Handle("/", gw)
	var h http.Handler = mux
	// The public port's /readyz checks the services; this one says the
	// gateway itself is up, until the stop signal: through the drain it
	// takes no new connections, and the load balancer should know.
	o.setReady(upUntil(ctx))
	if httpsConfig != nil {
		lis, err := net.Listen("tcp", *listen)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", *listen, err)
		}
		return serveOn(ctx, log, tls.NewListener(lis, httpsConfig), h, drainFor)
	}
	return serveHTTP(ctx, log, *listen, h)
}

// metricsOnPublicPort reports whether the gateway serves its metrics on
// its public port: only in a local run, no metrics address given and the
// port on loopback. Deployed, the public port does not tell the internet
// how the system runs (the backends' addresses among it), whatever was
// left unset.
func metricsOnPublicPort(listen, metricsListen string) bool {
	return metricsListen == "" && isLoopback(listen)
}

// upUntil is a readiness check that passes until ctx, the process's stop
// signal, ends.
func upUntil(ctx context.Context) func(context.Context) error {
	return func(context.Context) error {
		if ctx.Err() != nil {
			return errors.New("stopping")
		}
		return nil
	}
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// serveHTTP serves h until ctx ends, then shuts down gracefully.
func serveHTTP(ctx context.Context, log *slog.Logger, addr string, h http.Handler) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	return serveOn(ctx, log, lis, h, drainFor)
}

// serveOn serves h on lis until ctx ends, then lets requests in flight
// finish for at most drain.
func serveOn(ctx context.Context, log *slog.Logger, lis net.Listener, h http.Handler, drain time.Duration) error {
	// Headers are bounded at 32 KiB (Go's default is 1 MiB): a token of
	// the longest length auth reads fits, and what the gateway forwards
	// stays under the services' 64 KiB of metadata, past which a call
	// would fail as an internal error rather than the caller's.
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 32 << 10}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	log.Info("serving http", "addr", lis.Addr().String())
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	err := srv.Shutdown(shutdown)
	if errors.Is(err, context.DeadlineExceeded) {
		// Calls still running after the drain are cut off: the stop
		// itself went as planned.
		log.Warn("http requests still running after the drain were closed", "drain", drain.String())
		return srv.Close()
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// drainFor is how long a stopping process lets calls in flight finish:
// longer than a gateway call may take (15 s), and within the pods'
// termination grace (30 s) with room for the preStop sleep (5 s) before it
// and the last spans' flush (up to 5 s) after it.
const drainFor = 17 * time.Second
