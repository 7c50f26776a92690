package webhooks

import (
	"errors"
	"net/netip"
	"testing"
)

func TestPublicAddr(t *testing.T) {
	cases := []struct {
		addr   string
		public bool
	}{
		{"93.184.216.34", true},
		{"8.8.8.8", true},
		{"2606:4700:4700::1111", true},
		{"2a00:1450:4001:82b::200e", true},
		{"2002:5db8:d822::1", true}, // 6to4 of 93.184.216.34

		{"0.0.0.0", false},
		{"0.1.2.3", false},
		{"10.1.2.3", false},
		{"100.64.0.1", false},
		{"100.127.255.254", false},
		{"127.0.0.1", false},
		{"169.254.169.254", false},
		{"172.16.0.1", false},
		{"172.31.255.255", false},
		{"192.0.0.8", false},
		{"192.0.2.10", false},
		{"192.88.99.1", false},
		{"192.168.1.1", false},
		{"198.18.0.1", false},
		{"198.19.255.255", false},
		{"198.51.100.7", false},
		{"203.0.113.9", false},
		{"224.0.0.1", false},
		{"239.255.255.250", false},
		{"240.0.0.1", false},
		{"255.255.255.255", false},

		{"::", false},
		{"::1", false},
		{"::ffff:127.0.0.1", false},
		{"::ffff:10.0.0.1", false},
		{"::ffff:93.184.216.34", false}, // IPv4-mapped: refused outright
		{"::127.0.0.1", false},          // IPv4-compatible
		{"::93.184.216.34", false},
		{"64:ff9b::a9fe:a9fe", false},  // NAT64 of 169.254.169.254
		{"64:ff9b::5db8:d822", false},  // NAT64, even of a public address
		{"64:ff9b:1::a00:1", false},    // local-use NAT64
		{"2002:a9fe:a9fe::1", false},   // 6to4 of 169.254.169.254
		{"2002:7f00:1::1", false},      // 6to4 of 127.0.0.1
		{"2002:c0a8:101::1", false},    // 6to4 of 192.168.1.1
		{"2001:0:4136:e378::1", false}, // Teredo
		{"2001:2::1", false},           // benchmarking
		{"2001:db8::1", false},         // documentation
		{"3fff::1", false},             // documentation
		{"fc00::1", false},             // ULA
		{"fd12:3456::1", false},        // ULA
		{"fe80::1", false},             // link-local
		{"fe80::1%eth0", false},        // zoned
		{"ff02::1", false},             // multicast
		{"ff0e::1", false},             // global multicast
		{"100::1", false},              // discard-only
		{"2620:fe::fe%eth0", false},    // a zone is never public
	}
	for _, c := range cases {
		ip := netip.MustParseAddr(c.addr)
		if got := publicAddr(ip); got != c.public {
			t.Errorf("publicAddr(%s) = %v, want %v", c.addr, got, c.public)
		}
		if got := privateHost(c.addr); got == c.public {
			t.Errorf("privateHost(%s) = %v, want %v", c.addr, got, !c.public)
		}
	}
}

func TestDialControl(t *testing.T) {
	cases := []struct {
		address string
		want    error
	}{
		{"93.184.216.34:443", nil},
		{"[2606:4700:4700::1111]:443", nil},
		{"93.184.216.34:8443", errPort},
		{"93.184.216.34:80", errPort},
		{"[2606:4700:4700::1111]:22", errPort},
		{"127.0.0.1:443", errPrivate},
		{"100.64.1.1:443", errPrivate},
		{"[::ffff:169.254.169.254]:443", errPrivate},
		{"[64:ff9b::a9fe:a9fe]:443", errPrivate},
	}
	for _, c := range cases {
		if err := dialControl("tcp", c.address, nil); !errors.Is(err, c.want) {
			t.Errorf("dialControl(%s) = %v, want %v", c.address, err, c.want)
		}
	}
}

func TestCheckURLPortsAndRanges(t *testing.T) {
	cases := []struct {
		url               string
		insecure, private bool
		okay              bool
	}{
		{"https://ehr.example.org/hooks", false, false, true},
		{"https://ehr.example.org:443/hooks", false, false, true},
		{"https://ehr.example.org:8443/hooks", false, false, false},
		{"https://ehr.example.org:22/hooks", false, false, false},
		{"https://ehr.example.org:8443/hooks", false, true, true},
		{"http://ehr.example.org:8080/hooks", true, false, true},
		{"https://100.64.0.1/hooks", false, false, false},
		{"https://0.0.0.0/hooks", false, false, false},
		{"https://198.18.0.1/hooks", false, false, false},
		{"https://240.0.0.1/hooks", false, false, false},
		{"https://255.255.255.255/hooks", false, false, false},
		{"https://224.0.0.1/hooks", false, false, false},
		{"https://[::ffff:a9fe:a9fe]/hooks", false, false, false},
		{"https://[64:ff9b::a9fe:a9fe]/hooks", false, false, false},
		{"https://[2002:a9fe:a9fe::1]/hooks", false, false, false},
		{"https://[2001:0:4136:e378::1]/hooks", false, false, false},
		{"https://93.184.216.34/hooks", false, false, true},
	}
	for _, c := range cases {
		err := CheckURL(c.url, c.insecure, c.private)
		if (err == nil) != c.okay {
			t.Errorf("CheckURL(%q, insecure=%v, private=%v) = %v, want ok=%v", c.url, c.insecure, c.private, err, c.okay)
		}
	}
}
