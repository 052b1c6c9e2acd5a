package callback

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"
)

// ErrForbiddenAddress: the connection would reach an address callbacks must never reach (loopback,
// private, link-local, …) and the URL's host is not that address listed as an IP literal.
var ErrForbiddenAddress = errors.New("callback: address not allowed")

// Bounds of one attempt.
const (
	// DefaultAttemptTimeout bounds one attempt, from dialing to the end of the response's headers and
	// the part of its body that is read.
	DefaultAttemptTimeout = 10 * time.Second
	// MaxResponseBody is how much of a receiver's answer is read (and thrown away) before closing.
	MaxResponseBody = 64 << 10
	dialTimeout     = 5 * time.Second
)

// forbidden are the ranges netip's predicates do not cover and a callback must not reach by name.
var forbidden = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),      // "this network"; 0.0.0.0 reaches the local host on Linux
	netip.MustParsePrefix("100.64.0.0/10"),  // carrier-grade NAT (shared address space)
	netip.MustParsePrefix("192.0.0.0/24"),   // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"),  // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),    // reserved, and the broadcast address
	netip.MustParsePrefix("::/96"),          // IPv4-compatible (deprecated), with :: and ::1
	netip.MustParsePrefix("fec0::/10"),      // site-local (deprecated)
	netip.MustParsePrefix("100::/64"),       // discard-only
	netip.MustParsePrefix("2001:db8::/32"),  // documentation
	netip.MustParsePrefix("64:ff9b:1::/48"), // local-use NAT64
}

// nat64 and sixToFour embed an IPv4 address, which is then judged as itself.
var (
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// Forbidden reports whether a callback reached by a host name must not connect to ip: loopback,
// private (10/8, 172.16/12, 192.168/16, fc00::/7), shared 100.64/10, link-local (169.254/16 with the
// cloud metadata address 169.254.169.254, fe80::/10), unspecified, multicast, reserved, and IPv6 forms
// that embed such an IPv4 address (IPv4-mapped, NAT64, 6to4).
func Forbidden(ip netip.Addr) bool {
	ip = ip.WithZone("").Unmap()
	if ip.Is6() {
		b := ip.As16()
		switch {
		case nat64.Contains(ip):
			return Forbidden(netip.AddrFrom4([4]byte(b[12:16])))
		case sixToFour.Contains(ip):
			return Forbidden(netip.AddrFrom4([4]byte(b[2:6])))
		}
	}
	if !ip.IsValid() || ip.IsLoopback() || ip.IsPrivate() || ip.IsUnspecified() || ip.IsMulticast() ||
		ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsInterfaceLocalMulticast() {
		return true
	}
	for _, p := range forbidden {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// newHTTPClient is the client of deliveries. Its safety does not rest on Check alone:
//   - every address is checked when the socket connects (net.Dialer.Control), after DNS: a name that
//     resolves, or re-resolves (DNS rebinding), to a forbidden address is refused on every try of it;
//   - the one exception is a URL whose host is an IP literal listed in the allowlist: that literal, and
//     only it, may be connected to whatever its range (the operator named it);
//   - no proxy (HTTP_PROXY would hide the real destination), no redirects (a 3xx is the answer, and a
//     failure), bounded time per attempt.
func newHTTPClient(allow Allowlist, timeout time.Duration) *http.Client {
	tr := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialChecked(ctx, allow, network, addr)
		},
		ForceAttemptHTTP2:      true,
		TLSHandshakeTimeout:    timeout,
		ResponseHeaderTimeout:  timeout,
		MaxResponseHeaderBytes: 64 << 10,
		MaxIdleConns:           64,
		MaxIdleConnsPerHost:    4,
		IdleConnTimeout:        60 * time.Second,
	}
	return &http.Client{
		Transport:     tr,
		Timeout:       timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// dialChecked connects to addr (the URL's host:port), refusing forbidden addresses unless the host is a
// listed IP literal.
func dialChecked(ctx context.Context, allow Allowlist, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	var listed netip.Addr // the one address that may be forbidden-range, or invalid for none
	if ip, err := netip.ParseAddr(host); err == nil && allow.listsIP(ip) {
		listed = ip
	}
	d := &net.Dialer{
		Timeout:   dialTimeout,
		KeepAlive: 30 * time.Second,
		Control: func(network, address string, _ syscall.RawConn) error {
			return checkConnect(network, address, listed)
		},
	}
	return d.DialContext(ctx, network, addr)
}

// checkConnect runs for every socket about to connect: address is the resolved ip:port.
func checkConnect(network, address string, listed netip.Addr) error {
	if network != "tcp4" && network != "tcp6" {
		return fmt.Errorf("%w: network %s", ErrForbiddenAddress, network)
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %s", ErrForbiddenAddress, address)
	}
	ip := ap.Addr()
	if listed.IsValid() && ip.WithZone("").Unmap() == listed.Unmap() {
		return nil
	}
	if Forbidden(ip) {
		return fmt.Errorf("%w: %s", ErrForbiddenAddress, ip)
	}
	return nil
}
