package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/handoff-health/handoff/services/tlsconf/tlstest"
)

// Given a certificate, the gateway serves HTTPS, so that the hop from the
// ingress does not carry bearer tokens and records in clear; a client
// speaking plain HTTP to it gets no answer of the API's. A certificate
// without its key is refused before anything is served.
func TestGatewayServesHTTPSWhenGivenACertificate(t *testing.T) {
	pki := tlstest.New(t)
	pair := pki.Issue(t, "gateway")
	addr := freeAddr(t)
	common := []string{"--oidc-issuer", "http://127.0.0.1:1", "--jwks-url", "http://127.0.0.1:1/jwks", "--metrics-listen", freeAddr(t),
		"--families-address", "127.0.0.1:1", "--interventions-address", "127.0.0.1:1", "--referrals-address", "127.0.0.1:1", "--webhooks-address", ""}
	log := slog.New(slog.DiscardHandler)
	if err := runGateway(context.Background(), log, append(common, "--listen", addr, "--https-cert", pair.Cert)); err == nil ||
		!strings.Contains(err.Error(), "go together") {
		t.Fatalf("a certificate without its key: %v; want it refused", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runGateway(ctx, log, append(common, "--listen", addr, "--https-cert", pair.Cert, "--https-key", pair.Key))
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gateway stopped with %v", err)
		}
	}()
	roots := x509.NewCertPool()
	roots.AddCert(pki.CA)
	secure := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	var resp *http.Response
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if resp, err = secure.Get("https://" + addr + "/v1/clinics/north/families"); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("HTTPS to the gateway: %v", err)
	}
	resp.Body.Close()
	// No token: the API's own refusal, over TLS.
	if resp.StatusCode != http.StatusUnauthorized || resp.TLS == nil {
		t.Fatalf("HTTPS without a token: %d (TLS %v); want 401 over TLS", resp.StatusCode, resp.TLS != nil)
	}
	plain, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/v1/clinics/north/families")
	if err == nil {
		defer plain.Body.Close()
		if plain.StatusCode == http.StatusUnauthorized {
			t.Fatal("plain HTTP got the API's answer from a gateway serving HTTPS")
		}
	}
}

// Plain HTTP off loopback is refused unless the deployment says TLS ends
// before this hop: every call's bearer token and records cross it.
func TestGatewayRefusesPlainHTTPOffLoopbackUnlessTold(t *testing.T) {
	_, port, _ := strings.Cut(freeAddr(t), ":")
	args := []string{"--oidc-issuer", "http://127.0.0.1:1", "--jwks-url", "http://127.0.0.1:1/jwks", "--metrics-listen", freeAddr(t),
		"--families-address", "127.0.0.1:1", "--interventions-address", "127.0.0.1:1", "--referrals-address", "127.0.0.1:1", "--webhooks-address", "",
		"--listen", "0.0.0.0:" + port}
	log := slog.New(slog.DiscardHandler)
	if err := runGateway(context.Background(), log, args); err == nil || !strings.Contains(err.Error(), "--plain-http") {
		t.Fatalf("plain HTTP on every interface, not told: %v; want it refused", err)
	}
	// Told, it starts (and stops with its context).
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := runGateway(ctx, log, append(args, "--plain-http")); err != nil {
		t.Fatalf("plain HTTP on every interface, told: %v", err)
	}
}
