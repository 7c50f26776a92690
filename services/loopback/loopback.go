// Package loopback finds free addresses on 127.0.0.1 for a server that
// another process (or library) will bind.
package loopback

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
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
	a, err := free()
	if err != nil {
		return "", err
	}
	return a.String(), nil
}

// FreePort is FreeAddr's port.
func FreePort() (int, error) {
	a, err := free()
	if err != nil {
		return 0, err
	}
	return a.Port, nil
}

func free() (*net.TCPAddr, error) {
	for range 200 {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", low+rand.IntN(span)))
		if err != nil {
			continue // taken: try another
		}
		a := l.Addr().(*net.TCPAddr)
		if err := l.Close(); err != nil {
			return nil, fmt.Errorf("loopback: %w", err)
		}
		return a, nil
	}
	return nil, errors.New("loopback: no free port in 20000-31999")
}
