package callback

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestForbiddenAddresses(t *testing.T) {
	for _, s := range []string{
		"127.0.0.1", "127.255.255.254", "::1", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
		"100.64.0.1", "100.127.255.255", "fc00::1", "fd12:3456::1", "169.254.169.254", "169.254.0.1", "fe80::1",
		"0.0.0.0", "0.1.2.3", "::", "224.0.0.1", "239.255.255.250", "ff02::1", "255.255.255.255", "240.0.0.1",
		"::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "::127.0.0.1",
		"64:ff9b::a9fe:a9fe", // NAT64 of 169.254.169.254
		"2002:7f00:1::",      // 6to4 of 127.0.0.1
		"fd00:ec2::254",      // AWS metadata over IPv6
		"fec0::1",
	} {
		if !Forbidden(netip.MustParseAddr(s)) {
			t.Errorf("%s is not forbidden", s)
		}
	}
	for _, s := range []string{
		"8.8.8.8", "1.1.1.1", "93.184.216.34", "172.32.0.1", "172.15.255.255", "100.128.0.1", "169.255.0.1",
		"2606:4700:4700::1111", "64:ff9b::808:808", "2002:808:808::", "::ffff:8.8.8.8",
	} {
		if Forbidden(netip.MustParseAddr(s)) {
			t.Errorf("%s is forbidden", s)
		}
	}
}

// (d) A name listed in the allowlist that resolves to loopback is refused when connecting; the
// receiver is never reached, even with its IP literal listed too.
func TestNameResolvingToLoopbackIsRefusedAtConnect(t *testing.T) {
	rc := newReceiver(t, nil)
	port := rc.hostPort()[strings.LastIndex(rc.hostPort(), ":"):]
	allow, err := NewAllowlist([]string{"localhost" + port, rc.hostPort()})
	if err != nil {
		t.Fatal(err)
	}
	target := "http://localhost" + port + "/hook"
	if err := allow.Check(target); err != nil {
		t.Fatalf("the allowlist itself refuses %s: %v", target, err)
	}
	client := newHTTPClient(allow, 2*time.Second)
	res, err := client.Post(target, "application/json", bytes.NewReader([]byte("{}")))
	if err == nil {
		res.Body.Close()
		t.Fatalf("connected to %s: %s", target, res.Status)
	}
	if !errors.Is(err, ErrForbiddenAddress) {
		t.Fatalf("err = %v, want ErrForbiddenAddress", err)
	}
	// The literal, listed explicitly, is allowed.
	res, err = client.Post(rc.url("/hook"), "application/json", bytes.NewReader([]byte("{}")))
	if err != nil {
		t.Fatalf("the listed literal %s: %v", rc.hostPort(), err)
	}
	res.Body.Close()
	if n := len(rc.deliveries()); n != 1 {
		t.Errorf("%d requests reached the receiver, want 1 (the literal's)", n)
	}
}

// (d) Through the whole delivery path: a callback to a name that resolves to loopback fails at every
// attempt and is given up, the receiver never called.
func TestCallbackToLoopbackNameIsNeverSent(t *testing.T) {
	f := newFixture(t)
	rc := newReceiver(t, nil)
	port := rc.hostPort()[strings.LastIndex(rc.hostPort(), ":"):]
	d := f.deliverer([]string{"localhost" + port}, WithMaxRetry(1))
	f.cancelReq(f.user, "ssrf-1", "http://localhost"+port+"/hook")
	waitFor(t, 10*time.Second, "the last attempt", func() bool { return counter(d, resultGaveUp) == 1 })
	if n := len(rc.deliveries()); n != 0 {
		t.Errorf("%d requests reached the receiver", n)
	}
	if !strings.Contains(f.logs.String(), "address not allowed") {
		t.Errorf("the refusal is not logged:\n%s", f.logs.String())
	}
}

// (d) The cloud metadata address, and other forbidden ones, are refused by the dialer before any
// packet is sent, whatever Check said; listed explicitly as a literal, one is allowed.
func TestDialerRefusesForbiddenAddresses(t *testing.T) {
	allow, _ := NewAllowlist([]string{"hooks.example.com"})
	for _, addr := range []string{"169.254.169.254:80", "[::ffff:169.254.169.254]:80", "[fd00:ec2::254]:80", "10.0.0.1:443", "[::1]:80", "0.0.0.0:80"} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := dialChecked(ctx, allow, "tcp", addr)
		cancel()
		if err == nil {
			conn.Close()
			t.Errorf("dialed %s", addr)
		} else if !errors.Is(err, ErrForbiddenAddress) {
			t.Errorf("%s: %v, want ErrForbiddenAddress", addr, err)
		}
	}
	client := newHTTPClient(allow, 2*time.Second)
	if _, err := client.Get("http://169.254.169.254/latest/meta-data/"); !errors.Is(err, ErrForbiddenAddress) {
		t.Errorf("metadata: %v", err)
	}

	listed := netip.MustParseAddr("169.254.169.254")
	if err := checkConnect("tcp4", "169.254.169.254:80", listed); err != nil {
		t.Errorf("the listed literal is refused: %v", err)
	}
	if err := checkConnect("tcp4", "169.254.169.253:80", listed); !errors.Is(err, ErrForbiddenAddress) {
		t.Errorf("another address than the listed literal: %v", err)
	}
	if err := checkConnect("udp4", "8.8.8.8:53", netip.Addr{}); !errors.Is(err, ErrForbiddenAddress) {
		t.Errorf("udp: %v", err)
	}
	if err := checkConnect("tcp4", "8.8.8.8:443", netip.Addr{}); err != nil {
		t.Errorf("a public address: %v", err)
	}
}

// No proxy from the environment: it would hide the real destination from the dialer.
func TestClientIgnoresProxyEnvironment(t *testing.T) {
	t.Setenv("HTTP_PROXY", "http://10.0.0.1:3128")
	t.Setenv("HTTPS_PROXY", "http://10.0.0.1:3128")
	rc := newReceiver(t, nil)
	allow, _ := NewAllowlist([]string{rc.hostPort()})
	res, err := newHTTPClient(allow, 2*time.Second).Post(rc.url("/"), "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK || len(rc.deliveries()) != 1 {
		t.Errorf("status %d, %d deliveries", res.StatusCode, len(rc.deliveries()))
	}
}
