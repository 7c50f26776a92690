// Package loopback finds free addresses on 127.0.0.1 for a server that
// another process (or library) will bind.
package loopback

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
)

// Ports come from below the kernel's ephemeral range (32768 and up on
// Linux, 49152 and up on macOS). A port taken from ":0" and closed goes
// back to that pool, and another listener or outgoing connection of a
// process running alongside (tests of other packages) can get it before
// the server binds it; ports below the range are only ever bound by name.
const (
	low  = 20000
	span = 12000
)

// FreeAddr returns a loopback host:port that nothing listens on right now.
func FreeAddr() (string, error) {
	for range 200 {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", low+rand.IntN(span)))
		if err != nil {
			continue // taken: try another
		}
		addr := l.Addr().String()
		if err := l.Close(); err != nil {
			return "", fmt.Errorf("loopback: %w", err)
		}
		return addr, nil
	}
	return "", errors.New("loopback: no free port in 20000-31999")
}

// FreePort is FreeAddr's port.
func FreePort() (int, error) {
	addr, err := FreeAddr()
	if err != nil {
		return 0, err
	}
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, fmt.Errorf("loopback: %w", err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return 0, fmt.Errorf("loopback: port %q: %w", p, err)
	}
	return port, nil
}
