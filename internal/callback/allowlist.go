package callback

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// ErrNotAllowed wraps every reason Check refuses a URL (the API answers 400 callback_not_allowed).
var ErrNotAllowed = errors.New("callback: URL not allowed")

// MaxURLLength bounds a callback URL: it is kept in the request's state for REQUEST_TTL.
const MaxURLLength = 2048

// Allowlist is the set of hosts completion callbacks may call (CALLBACK_ALLOWED_HOSTS). The zero value
// allows nothing. It is immutable once made, so it may be shared.
//
// An entry is a host name, an IPv4 literal, an IPv6 literal (bare, or in brackets), each optionally with
// ":port". Matching:
//   - An entry WITHOUT a port allows the URL scheme's default port only (80 for http, 443 for https),
//     not any port: a name listed for its web endpoint does not open every other service of that host
//     (an admin port, a database speaking HTTP) to URLs chosen by clients. Another port must be listed
//     as host:port; such an entry allows that port under either scheme.
//   - Hosts compare after normalisation, the same for entries and URLs: case-folded, one trailing dot
//     removed, internationalised names converted to their ASCII (punycode) form by the IDNA lookup
//     profile, IP literals in canonical form (so [::1], [0:0::1] and [::0001] are one host).
//   - A host name never matches an IP entry, nor the reverse: "localhost" listed does not allow
//     127.0.0.1, and the other way round.
//
// "Listed explicitly", for the private-address rule of the SPEC, means an IP literal entry: a URL whose
// host is that literal may reach it even if it is loopback, private or link-local. A host name is never
// allowed to reach such an address, whatever it resolves to (dial.go).
type Allowlist struct {
	hosts map[hostPort]struct{}
}

// hostPort is a normalised entry; port 0 means the entry has no port (the scheme's default only).
type hostPort struct {
	host string // normalised: ASCII name, or canonical IP literal without brackets
	port uint16
}

// NewAllowlist reads the configured entries (config.Config.CallbackAllowedHosts). Blank entries are
// skipped; a malformed one (a URL, a path, a bad port, a name IDNA refuses) is an error, so that a typo
// fails the process at start instead of silently refusing every callback.
func NewAllowlist(entries []string) (Allowlist, error) {
	a := Allowlist{hosts: map[hostPort]struct{}{}}
	for _, e := range entries {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		hp, err := parseEntry(e)
		if err != nil {
			return Allowlist{}, fmt.Errorf("CALLBACK_ALLOWED_HOSTS entry %q: %w", e, err)
		}
		a.hosts[hp] = struct{}{}
	}
	return a, nil
}

// Empty reports whether nothing is allowed (every callback is refused).
func (a Allowlist) Empty() bool { return len(a.hosts) == 0 }

func parseEntry(e string) (hostPort, error) {
	host, port, bracketed := e, "", false
	switch {
	case strings.HasPrefix(e, "["):
		bracketed = true
		if strings.HasSuffix(e, "]") {
			host = e[1 : len(e)-1]
			break
		}
		h, p, err := net.SplitHostPort(e)
		if err != nil {
			return hostPort{}, err
		}
		host, port = h, p
	case strings.Count(e, ":") > 1:
		// A bare IPv6 literal: it cannot carry a port without brackets.
	case strings.Contains(e, ":"):
		h, p, err := net.SplitHostPort(e)
		if err != nil {
			return hostPort{}, err
		}
		host, port = h, p
	}
	h, err := normHost(host, bracketed)
	if err != nil {
		return hostPort{}, err
	}
	hp := hostPort{host: h}
	if port != "" || strings.HasSuffix(e, ":") {
		n, err := parsePort(port)
		if err != nil {
			return hostPort{}, err
		}
		hp.port = n
	}
	return hp, nil
}

// Check says whether rawURL may be called: an absolute http or https URL, without user info, whose host
// and port an entry allows. It does no I/O (no DNS): where a name leads is checked when connecting.
func (a Allowlist) Check(rawURL string) error {
	_, err := a.target(rawURL)
	return err
}

// target checks rawURL and returns it with its host normalised: what is checked is exactly what the
// client dials (its own IDNA conversion or a trailing dot cannot make it reach another name).
func (a Allowlist) target(rawURL string) (*url.URL, error) {
	if len(rawURL) > MaxURLLength {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrNotAllowed, MaxURLLength)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%w: not a URL", ErrNotAllowed)
	}
	var defaultPort uint16
	switch u.Scheme { // url.Parse lower-cases the scheme
	case "http":
		defaultPort = 80
	case "https":
		defaultPort = 443
	default:
		return nil, fmt.Errorf("%w: not an absolute http or https URL", ErrNotAllowed)
	}
	if u.Opaque != "" || u.Host == "" {
		return nil, fmt.Errorf("%w: no host", ErrNotAllowed)
	}
	if u.User != nil {
		return nil, fmt.Errorf("%w: user info in the URL", ErrNotAllowed)
	}
	host, err := normHost(u.Hostname(), strings.HasPrefix(u.Host, "["))
	if err != nil {
		return nil, fmt.Errorf("%w: host: %v", ErrNotAllowed, err)
	}
	port := defaultPort
	if p := u.Port(); p != "" {
		if port, err = parsePort(p); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrNotAllowed, err)
		}
	}
	_, exact := a.hosts[hostPort{host, port}]
	_, bare := a.hosts[hostPort{host, 0}]
	if !exact && !(bare && port == defaultPort) {
		return nil, fmt.Errorf("%w: host %s port %d is not in CALLBACK_ALLOWED_HOSTS", ErrNotAllowed, host, port)
	}
	out := *u
	out.Host = joinHostPort(host, port, defaultPort)
	return &out, nil
}

// listsIP reports whether an IP literal entry names ip (on any port: Check has settled the port).
func (a Allowlist) listsIP(ip netip.Addr) bool {
	s := ip.String()
	for hp := range a.hosts {
		if hp.host == s {
			return true
		}
	}
	return false
}

func joinHostPort(host string, port, defaultPort uint16) string {
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port == defaultPort {
		return host
	}
	return host + ":" + strconv.Itoa(int(port))
}

func parsePort(p string) (uint16, error) {
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 || strings.TrimLeft(p, "0123456789") != "" {
		return 0, fmt.Errorf("bad port %q", p)
	}
	return uint16(n), nil
}

// lookup is IDNA's lookup profile (UTS #46 mapping: case folding, width folding; BiDi and label
// rules), as browsers and Go's HTTP client apply it to a URL's host.
var lookup = idna.Lookup

// normHost is the canonical form of a host: an IP literal's canonical text (without brackets), or an
// ASCII host name. bracketed: the host was written in brackets, so it must be an IPv6 literal.
func normHost(h string, bracketed bool) (string, error) {
	if bracketed || strings.Contains(h, ":") {
		ip, err := netip.ParseAddr(h)
		if err != nil || !ip.Is6() {
			return "", fmt.Errorf("bad IPv6 literal %q", h)
		}
		if ip.Zone() != "" {
			return "", errors.New("IPv6 zones are not allowed")
		}
		return ip.String(), nil
	}
	if ip, err := netip.ParseAddr(h); err == nil {
		return ip.String(), nil // IPv4 in strict dotted decimal
	}
	h = strings.TrimSuffix(h, ".")
	if h == "" || !utf8.ValidString(h) {
		return "", errors.New("empty host, or not UTF-8")
	}
	a, err := lookup.ToASCII(h)
	if err != nil {
		return "", fmt.Errorf("host name: %v", err)
	}
	a = strings.ToLower(a)
	// The result must be a name IDNA accepts as it is (a fixed point), so that the name dialed, and any
	// later check of it, is this one.
	if again, err := lookup.ToASCII(a); err != nil || again != a {
		return "", fmt.Errorf("host name %q is not a valid IDNA name", a)
	}
	if err := validName(a); err != nil {
		return "", err
	}
	return a, nil
}

// validName accepts ASCII host names of letters, digits, '-' and '_' labels. A name whose last label is
// a number (decimal or 0x hex) is refused: resolvers and URL parsers read such names ("127.1",
// "2130706433", "0x7f.1") as IPv4 addresses, which would make a name behave as an unlisted literal.
func validName(a string) error {
	if len(a) > 253 {
		return errors.New("host name longer than 253 bytes")
	}
	labels := strings.Split(a, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 {
			return fmt.Errorf("bad label in host name %q", a)
		}
		for _, c := range []byte(l) {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("bad character in host name %q", a)
			}
		}
	}
	last := labels[len(labels)-1]
	if strings.Trim(last, "0123456789") == "" ||
		strings.HasPrefix(last, "0x") && strings.Trim(last[2:], "0123456789abcdef") == "" {
		return fmt.Errorf("host name %q reads as a number", a)
	}
	return nil
}
