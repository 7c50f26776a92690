// Package tlsconf builds the mutual-TLS credentials used between the
// gateway, the worker and the services when certificates are configured.
//
// The files are read again at every handshake and the credentials rebuilt
// when they changed, so that a certificate renewed on disk (cert-manager
// rewriting a mounted secret) is used by the next connection without a
// restart. A process that loaded its certificate once would fail every
// handshake after the old one expired.
package tlsconf

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
)

// Files names a certificate, its key, and the CA that signs the peers'.
type Files struct {
	Cert, Key, CA string
}

// Enabled reports whether any file is set.
func (f Files) Enabled() bool { return f.Cert != "" || f.Key != "" || f.CA != "" }

// source holds the credentials built from the files as last read.
type source struct {
	files   Files
	mu      sync.Mutex
	raw     [3][]byte // cert, key and CA as last built
	expires time.Time // the certificate's, as last built
	server  credentials.TransportCredentials
	client  credentials.TransportCredentials
	trouble trouble
}

// trouble reports files that cannot be used, once for each way they
// cannot (a read's error, or the content that would not build), rather
// than at every handshake or never: the last good credentials stay in
// use, so a renewal that stays broken is otherwise unseen until the
// certificate in use expires and every handshake fails at once. A way
// is reported once it has lasted troubleGrace: files caught halfway
// through a rotation (written one after the other) are not a fault.
type trouble struct {
	last     string
	since    time.Time
	reported bool
}

// troubleGrace is how long a way the files cannot be used lasts before
// it is reported.
var troubleGrace = 30 * time.Second

func (t *trouble) report(what string, err error, expires time.Time) {
	if err.Error() != t.last {
		t.last, t.since, t.reported = err.Error(), time.Now(), false
	}
	if t.reported || time.Since(t.since) < troubleGrace {
		return
	}
	t.reported = true
	slog.Error("tls: the "+what+" files cannot be used; the last good ones stay in use until they expire",
		"error", err.Error(), "since", t.since.UTC().Format(time.RFC3339), "expires", expires.UTC().Format(time.RFC3339))
}

func (t *trouble) clear() { t.last, t.reported = "", false }

// expiry is when c's leaf certificate expires, or zero if it cannot say.
func expiry(c *tls.Certificate) time.Time {
	leaf := c.Leaf
	if leaf == nil && len(c.Certificate) > 0 {
		leaf, _ = x509.ParseCertificate(c.Certificate[0])
	}
	if leaf == nil {
		return time.Time{}
	}
	return leaf.NotAfter
}

func newSource(f Files) (*source, error) {
	if f.Cert == "" || f.Key == "" || f.CA == "" {
		return nil, fmt.Errorf("tls: certificate, key and CA are all required for mutual TLS")
	}
	s := &source{files: f}
	if _, err := s.creds(true); err != nil {
		return nil, err
	}
	return s, nil
}

// creds returns the server's or the client's credentials for the files as
// they are now. Files that cannot be read or do not make a key pair (caught
// halfway through a rotation) leave the last good credentials in use.
func (s *source) creds(server bool) (credentials.TransportCredentials, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	raw, err := s.read()
	if err == nil && !(bytes.Equal(raw[0], s.raw[0]) && bytes.Equal(raw[1], s.raw[1]) && bytes.Equal(raw[2], s.raw[2])) {
		err = s.build(raw)
	}
	if err != nil && s.server == nil {
		return nil, err
	}
	if err != nil {
		s.trouble.report("certificate", err, s.expires)
	} else {
		s.trouble.clear()
	}
	if server {
		return s.server, nil
	}
	return s.client, nil
}

func (s *source) read() ([3][]byte, error) {
	var raw [3][]byte
	for i, path := range []string{s.files.Cert, s.files.Key, s.files.CA} {
		b, err := os.ReadFile(path)
		if err != nil {
			return raw, fmt.Errorf("tls: read %s: %w", path, err)
		}
		raw[i] = b
	}
	return raw, nil
}

func (s *source) build(raw [3][]byte) error {
	cert, err := tls.X509KeyPair(raw[0], raw[1])
	if err != nil {
		return fmt.Errorf("tls: load key pair: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(raw[2]) {
		return fmt.Errorf("tls: no certificate in %s", s.files.CA)
	}
	s.server = credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13})
	s.client = credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS13})
	s.raw, s.expires = raw, expiry(&cert)
	return nil
}

// reloading is TransportCredentials that hand each handshake to the
// credentials built from the files as they are at that moment.
type reloading struct {
	src    *source
	server bool
}

func (r *reloading) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c, err := r.src.creds(false)
	if err != nil {
		return nil, nil, err
	}
	return c.ClientHandshake(ctx, authority, conn)
}

func (r *reloading) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c, err := r.src.creds(true)
	if err != nil {
		return nil, nil, err
	}
	return c.ServerHandshake(conn)
}

func (r *reloading) Info() credentials.ProtocolInfo {
	c, err := r.src.creds(r.server)
	if err != nil {
		return credentials.ProtocolInfo{SecurityProtocol: "tls"}
	}
	return c.Info()
}

func (r *reloading) Clone() credentials.TransportCredentials {
	return &reloading{src: r.src, server: r.server}
}

// OverrideServerName is deprecated in gRPC and unused here: the server
// name comes from the address dialled.
func (r *reloading) OverrideServerName(string) error { return nil }

// Server returns credentials that require and verify a client certificate.
func Server(f Files) (credentials.TransportCredentials, error) {
	if !f.Enabled() {
		return nil, nil
	}
	src, err := newSource(f)
	if err != nil {
		return nil, err
	}
	return &reloading{src: src, server: true}, nil
}

// Client returns credentials that present a client certificate and verify
// the server's.
func Client(f Files) (credentials.TransportCredentials, error) {
	if !f.Enabled() {
		return nil, nil
	}
	src, err := newSource(f)
	if err != nil {
		return nil, err
	}
	return &reloading{src: src}, nil
}

// ClientCertificate returns a tls.Config.GetClientCertificate that reads
// the key pair again at every handshake, keeping the last good one if the
// files are caught halfway through a rotation. It fails at once if the
// files do not make a key pair now.
func ClientCertificate(certFile, keyFile string) (func(*tls.CertificateRequestInfo) (*tls.Certificate, error), error) {
	var (
		mu       sync.Mutex
		lastRaw  [2][]byte
		lastCert *tls.Certificate
		trouble  trouble
	)
	get := func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		mu.Lock()
		defer mu.Unlock()
		c, errC := os.ReadFile(certFile)
		k, errK := os.ReadFile(keyFile)
		err := errors.Join(errC, errK)
		if err != nil {
			err = fmt.Errorf("tls: read key pair: %w", err)
		} else if !(bytes.Equal(c, lastRaw[0]) && bytes.Equal(k, lastRaw[1])) {
			pair, perr := tls.X509KeyPair(c, k)
			if perr == nil {
				lastRaw, lastCert = [2][]byte{c, k}, &pair
			} else {
				err = fmt.Errorf("tls: load key pair: %w", perr)
			}
		}
		switch {
		case lastCert == nil:
			return nil, err
		case err != nil:
			trouble.report("key pair", err, expiry(lastCert))
		default:
			trouble.clear()
		}
		return lastCert, nil
	}
	if _, err := get(nil); err != nil {
		return nil, err
	}
	return get, nil
}

// ServerCertificate is ClientCertificate for a server's own key pair: a
// tls.Config.GetCertificate that reads it again at every handshake, so
// that a renewed certificate is served without a restart.
func ServerCertificate(certFile, keyFile string) (func(*tls.ClientHelloInfo) (*tls.Certificate, error), error) {
	get, err := ClientCertificate(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return get(nil) }, nil
}
