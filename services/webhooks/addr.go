package webhooks

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
)

// errPrivate is why the sender refuses to connect.
var errPrivate = errors.New("callback address is loopback, private or link-local")

// privateHost reports whether host is "localhost" or an IP literal that is
// not a public unicast address.
func privateHost(host string) bool {
	h := strings.ToLower(strings.TrimSuffix(host, "."))
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	ip, err := netip.ParseAddr(strings.Trim(h, "[]"))
	if err != nil {
		return false // a name: checked when the sender connects
	}
	return privateAddr(ip)
}

// privateAddr reports whether ip must not receive notifications: loopback,
// private (RFC 1918, ULA), link-local, unspecified, multicast, or the
// shared address space of carrier-grade NAT.
func privateAddr(ip netip.Addr) bool {
	ip = ip.Unmap()
	return ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsInterfaceLocalMulticast() || ip.IsMulticast() || ip.IsUnspecified() ||
		cgnat.Contains(ip)
}

var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// dialControl refuses connections to private addresses. It runs after name
// resolution, on the address actually dialed, so a public name that
// resolves (or re-resolves) to an internal address is refused too.
func dialControl(_, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("dial %s: %w", address, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("dial %s: %w", address, err)
	}
	if privateAddr(ip) {
		return errPrivate
	}
	return nil
}
