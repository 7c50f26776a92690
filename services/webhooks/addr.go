package webhooks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"
)

// Why the sender refuses to connect.
var (
	errPrivate = errors.New("callback address is not a public unicast address")
	errPort    = errors.New("callback port must be 443")
)

// callbackPort is the only port callbacks may use outside development.
const callbackPort = "443"

// localNames are the special-use domains (RFC 6761, 6762, 8375, and ICANN's
// .internal) whose names never resolve to a public address.
var localNames = []string{"localhost", "local", "internal", "home.arpa"}

// privateHost reports whether host is a name in a special-use domain for
// local networks ("localhost", "ehr.clinic.internal") or an IP literal
// that is not a public unicast address.
func privateHost(host string) bool {
	h := strings.ToLower(strings.TrimSuffix(host, "."))
	for _, d := range localNames {
		if h == d || strings.HasSuffix(h, "."+d) {
			return true
		}
	}
	ip, err := netip.ParseAddr(strings.Trim(h, "[]"))
	if err != nil {
		return false // a name: see resolvesPrivate, and the sender's dialControl
	}
	return !publicAddr(ip)
}

// blocked4 are the IPv4 ranges that are not globally reachable unicast
// (RFC 6890 and its updates), or that must never be a receiver.
var blocked4 = prefixes(
	"0.0.0.0/8",       // "this network"
	"10.0.0.0/8",      // private
	"100.64.0.0/10",   // carrier-grade NAT
	"127.0.0.0/8",     // loopback
	"169.254.0.0/16",  // link-local (cloud metadata)
	"172.16.0.0/12",   // private
	"192.0.0.0/24",    // IETF protocol assignments
	"192.0.2.0/24",    // documentation
	"192.88.99.0/24",  // 6to4 relay anycast
	"192.168.0.0/16",  // private
	"198.18.0.0/15",   // benchmarking
	"198.51.100.0/24", // documentation
	"203.0.113.0/24",  // documentation
	"224.0.0.0/4",     // multicast
	"240.0.0.0/4",     // reserved, and 255.255.255.255 broadcast
)

// globalUnicast6 is the only IPv6 space receivers may be in; blocked6 are
// the special-purpose ranges inside it. Everything outside 2000::/3 is
// refused: loopback, unspecified, IPv4-mapped (::ffff:0:0/96) and
// IPv4-compatible (::/96) addresses, NAT64 (64:ff9b::/96, 64:ff9b:1::/48),
// discard-only, ULA, link-local and multicast.
var (
	globalUnicast6 = netip.MustParsePrefix("2000::/3")
	blocked6       = prefixes(
		"2001::/23",     // IETF protocol assignments, Teredo (2001::/32) among them
		"2001:db8::/32", // documentation
		"3fff::/20",     // documentation
	)
	sixToFour = netip.MustParsePrefix("2002::/16")
)

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// publicAddr reports whether ip may receive notifications: a globally
// reachable unicast address and nothing special-purpose. It is an allow
// rule, so that ranges this list forgets stay refused.
func publicAddr(ip netip.Addr) bool {
	if ip.Zone() != "" {
		return false
	}
	if ip.Is4() {
		return public4(ip)
	}
	if !ip.Is6() || !globalUnicast6.Contains(ip) {
		return false
	}
	for _, p := range blocked6 {
		if p.Contains(ip) {
			return false
		}
	}
	if sixToFour.Contains(ip) {
		// 2002:AABB:CCDD::/48 routes to the IPv4 address AA.BB.CC.DD.
		b := ip.As16()
		return public4(netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]}))
	}
	return true
}

func public4(ip netip.Addr) bool {
	for _, p := range blocked4 {
		if p.Contains(ip) {
			return false
		}
	}
	return true
}

// resolvesPrivate returns an error if host is a name whose every address,
// as resolve gives them, is not public: a subscription to it would fail
// every send, slowly (dialControl). A name that does not resolve now is
// let be: DNS may not have it yet, and the sender checks again.
func resolvesPrivate(ctx context.Context, resolve func(context.Context, string) ([]netip.Addr, error), host string) error {
	if _, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return nil // a literal: privateHost
	}
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	addrs, err := resolve(ctx, host)
	if err != nil || len(addrs) == 0 {
		return nil
	}
	for _, a := range addrs {
		if publicAddr(a) {
			return nil
		}
	}
	// The address is logged, not answered: told to the caller (an
	// outside system among them) it would map the network Handoff runs in.
	slog.WarnContext(ctx, "a webhook callback refused: its name resolves to no public address", "host", host, "address", addrs[0].Unmap().String())
	return errors.New("resolves only to addresses that are not public unicast addresses")
}

// resolveTimeout bounds the look-up of a callback's host at subscription.
const resolveTimeout = 3 * time.Second

// lookupHost resolves host with the system's resolver.
func lookupHost(ctx context.Context, host string) ([]netip.Addr, error) {
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

// dialControl refuses connections to addresses that are not public and to
// ports other than 443. It runs after name resolution, on the address
// actually dialed, so a public name that resolves (or re-resolves) to an
// internal address is refused too.
func dialControl(_, address string, _ syscall.RawConn) error {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("dial %s: %w", address, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("dial %s: %w", address, err)
	}
	if !publicAddr(ip) {
		return errPrivate
	}
	if port != callbackPort {
		return errPort
	}
	return nil
}
