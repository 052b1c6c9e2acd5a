package callback

import (
	"errors"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

var testEntries = []string{
	"hooks.example.com", "api.example.org:8443", "127.0.0.1:9000", "[::1]:9001", "bücher.example",
	"2001:db8::5", "10.0.0.7", "Upper.Example.NET.",
}

func TestAllowlistCheck(t *testing.T) {
	a, err := NewAllowlist(testEntries)
	if err != nil {
		t.Fatal(err)
	}
	allowed := []string{
		"https://hooks.example.com/x",
		"http://hooks.example.com/x?y=1#frag",
		"https://HOOKS.Example.COM./x",
		"HTTPS://hooks.example.com/",
		"https://hooks.example.com:443/x",
		"https://hooks.example.com:/x", // empty port: the default
		"http://hooks.example.com:80/",
		"https://hooks。example。com/", // IDNA maps the ideographic full stop to '.'
		"https://api.example.org:8443/",
		"http://api.example.org:8443/",
		"http://127.0.0.1:9000/",
		"http://[::1]:9001/",
		"http://[0:0::1]:9001/",
		"https://bücher.example/",
		"https://BÜCHER.example/",
		"https://xn--bcher-kva.example/",
		"https://[2001:db8::5]/",
		"https://[2001:0db8:0:0::5]/",
		"https://10.0.0.7/",
		"https://upper.example.net/",
	}
	for _, u := range allowed {
		if err := a.Check(u); err != nil {
			t.Errorf("Check(%q) = %v, want allowed", u, err)
		}
	}
	refused := []string{
		"",
		"hooks.example.com",
		"/relative",
		"//hooks.example.com/x",
		"ftp://hooks.example.com/",
		"https:hooks.example.com",
		"https://hooks.example.com:8443/",  // a bare entry allows the default port only
		"http://hooks.example.com:443/",    // http's default is 80
		"https://hooks.example.com:0/",     // no port 0
		"https://hooks.example.com:99999/", // out of range
		"https://api.example.org/",         // an entry with a port allows that port only
		"https://user:pw@hooks.example.com/",
		"https://user@hooks.example.com/",
		`https://hooks.example.com\@evil.com/`,
		"https://evil.com/?x=hooks.example.com",
		"https://evil.com/hooks.example.com",
		"https://hooks.example.com.evil.com/",
		"https://evilhooks.example.com/",
		"https://sub.hooks.example.com/",
		"https://hooks.example.com%2eevil.com/",
		"https://hooks.example.com../",
		"http://127.0.0.1/",
		"http://127.0.0.1:9001/",
		"http://localhost:9000/",
		"http://[::1]:9000/",
		"http://[::ffff:127.0.0.1]:9000/",
		"http://2130706433:9000/",
		"http://0x7f000001:9000/",
		"http://127.1:9000/",
		"http://127.000.000.001:9000/",
		"https://[fe80::1%25eth0]/",
		"http://[10.0.0.7]/",
		"https://[2001:db8::5]:8443/",
		"https://" + strings.Repeat("a", MaxURLLength) + ".hooks.example.com/",
		"https://hooks.example.com/" + strings.Repeat("a", MaxURLLength),
		"https://hooks example.com/",
		"https://hooks.example.com\x00/",
	}
	for _, u := range refused {
		if err := a.Check(u); !errors.Is(err, ErrNotAllowed) {
			t.Errorf("Check(%q) = %v, want ErrNotAllowed", u, err)
		}
	}
}

// What is dialed is the checked host, normalised.
func TestAllowlistTargetIsNormalised(t *testing.T) {
	a, _ := NewAllowlist(testEntries)
	for raw, want := range map[string]string{
		"https://HOOKS.example.com.:443/p?q": "https://hooks.example.com/p?q",
		"https://bücher.example/p":           "https://xn--bcher-kva.example/p",
		"http://[0:0::1]:9001/":              "http://[::1]:9001/",
		"http://api.example.org:08443/":      "http://api.example.org:8443/",
	} {
		u, err := a.target(raw)
		if err != nil || u.String() != want {
			t.Errorf("target(%q) = %v %v, want %s", raw, u, err, want)
		}
	}
}

func TestNewAllowlistRefusesMalformedEntries(t *testing.T) {
	for _, e := range []string{
		"https://x.example", "x.example/path", "x.example:abc", "x.example:0", "x.example:70000", "x.example:",
		"[::1", "[::1]x", "fe80::1%eth0", "exa mple.com", "-bad.example", "127.1", "user@x.example", "[10.0.0.1]",
	} {
		if _, err := NewAllowlist([]string{e}); err == nil {
			t.Errorf("NewAllowlist(%q) accepted", e)
		}
	}
	a, err := NewAllowlist([]string{"", "  ", "ok.example"})
	if err != nil || a.Empty() || a.Check("https://ok.example/") != nil {
		t.Errorf("blank entries: %v", err)
	}
	var zero Allowlist
	if !zero.Empty() || zero.Check("https://ok.example/") == nil {
		t.Error("the zero Allowlist allows something")
	}
}

// FuzzAllowlistCheck: Check never panics, and an accepted URL's host (the one dialed) is always one
// of the entries, on a port the entry allows, and is the host the URL names.
func FuzzAllowlistCheck(f *testing.F) {
	f.Add("hooks.example.com,127.0.0.1:9000", "https://hooks.example.com/x")
	f.Add("[::1]:9001", "http://[0:0::1]:9001/")
	f.Fuzz(func(t *testing.T, entries, raw string) {
		a, err := NewAllowlist(strings.Split(entries, ","))
		if err != nil {
			return
		}
		u, err := a.target(raw)
		if (err == nil) != (a.Check(raw) == nil) {
			t.Fatal("Check and target disagree")
		}
		if err != nil {
			if !errors.Is(err, ErrNotAllowed) {
				t.Fatalf("error %v does not wrap ErrNotAllowed", err)
			}
			return
		}
		if u.Scheme != "http" && u.Scheme != "https" || u.User != nil {
			t.Fatalf("accepted %q: scheme %q, user %v", raw, u.Scheme, u.User)
		}
		def := uint16(80)
		if u.Scheme == "https" {
			def = 443
		}
		port := def
		if p := u.Port(); p != "" {
			n, err := strconv.ParseUint(p, 10, 16)
			if err != nil {
				t.Fatalf("accepted %q: port %q", raw, p)
			}
			port = uint16(n)
		}
		host := u.Hostname()
		_, exact := a.hosts[hostPort{host, port}]
		_, bare := a.hosts[hostPort{host, 0}]
		if !exact && !(bare && port == def) {
			t.Fatalf("accepted %q: %s port %d is no entry of %q", raw, host, port, entries)
		}
		// It is the host the URL names (for ASCII names: the same but for case and a trailing dot).
		orig, err := url.Parse(raw)
		if err != nil {
			t.Fatalf("accepted %q that does not parse", raw)
		}
		h0 := orig.Hostname()
		if ip, err := netip.ParseAddr(h0); err == nil {
			if ip.String() != host {
				t.Fatalf("accepted %q: literal %s dialed as %s", raw, h0, host)
			}
		} else if isASCII(h0) && strings.ToLower(strings.TrimSuffix(h0, ".")) != host {
			t.Fatalf("accepted %q: host %q dialed as %q", raw, h0, host)
		}
		// Normalising is idempotent: the dialed host passes again, unchanged.
		u2, err := a.target(u.Scheme + "://" + u.Host + "/")
		if err != nil || u2.Host != u.Host {
			t.Fatalf("normalised host %q of %q: %v %v", u.Host, raw, u2, err)
		}
	})
}

func isASCII(s string) bool {
	for i := range len(s) {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
