package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"
)

// config is one run's settings, from the flags. The bounds (BodyTimeout, MaxTombstones, ...) are what
// the service under attack was started with: the tool cannot read them from the service, so it is told,
// and judges the answers against them.
type config struct {
	Base       *url.URL
	Worker     *url.URL // nil: the worker checks are skipped
	AdminToken string
	RedisURL   string // "": the tombstone count is skipped
	Only       []string
	Scale      float64
	JSONOut    string
	APIPid     int

	BodyTimeout    time.Duration
	MaxTombstones  int64
	UploadMemory   int64
	ValidateMemory int64
	MaxConnections int64
	IdleConns      int // connections of the connections attack (0: 2000, scaled)
	Settle         time.Duration
}

func parseConfig(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("hostile", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: hostile [flags]   (see docs/security.md)")
		fmt.Fprintln(stderr, "attacks:", strings.Join(attackNames(), ", "))
		fs.PrintDefaults()
	}
	c := &config{}
	base := fs.String("base", "http://127.0.0.1:8080", "API base URL (loopback only)")
	worker := fs.String("worker", "", "worker health URL, e.g. http://127.0.0.1:9090 (its 404 and CPU checks; empty: skipped)")
	// The environment is read after parsing, so that -h never prints a token.
	fs.StringVar(&c.AdminToken, "admin-token", "", "admin bearer token (default $ADMIN_TOKEN)")
	fs.StringVar(&c.RedisURL, "redis", "", "the service's Redis URL, to count a user's request keys (tombstones); empty: that count is skipped")
	only := fs.String("only", "", "comma-separated attacks to run (default: all)")
	fs.Float64Var(&c.Scale, "scale", 1, "fraction of the review's counts to send (0.1 for a quick run)")
	fs.StringVar(&c.JSONOut, "json", "", "write a machine-readable report to this file")
	fs.IntVar(&c.APIPid, "api-pid", 0, "the API's process id: adds VmHWM/VmRSS from /proc (peak reset before each attack)")
	fs.DurationVar(&c.BodyTimeout, "body-timeout", 60*time.Second, "the service's BODY_TIMEOUT")
	fs.Int64Var(&c.MaxTombstones, "max-tombstones", 1000, "the service's MAX_TOMBSTONES_PER_USER")
	fs.Int64Var(&c.UploadMemory, "upload-memory", 128<<20, "the service's UPLOAD_MEMORY (bytes)")
	fs.Int64Var(&c.ValidateMemory, "validate-memory", 512<<20, "the service's VALIDATE_MEMORY (bytes)")
	fs.Int64Var(&c.MaxConnections, "max-connections", 8192, "the service's MAX_CONNECTIONS (for the memory bound)")
	fs.IntVar(&c.IdleConns, "idle-conns", 0, "idle connections the connections attack opens (0: 2000 × -scale; stay under MAX_CONNECTIONS)")
	fs.DurationVar(&c.Settle, "settle", 2*time.Second, "pause after each attack before its 'after' memory is read")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	c.AdminToken = cmp.Or(c.AdminToken, os.Getenv("ADMIN_TOKEN"))
	var err error
	if c.Base, err = parseBase("-base", *base); err != nil {
		return nil, err
	}
	if *worker != "" {
		if c.Worker, err = parseBase("-worker", *worker); err != nil {
			return nil, err
		}
		// A health URL names the process; the tool wants its root.
		c.Worker.Path = strings.TrimSuffix(strings.TrimSuffix(c.Worker.Path, "/healthz"), "/readyz")
	}
	if c.Only, err = parseOnly(*only); err != nil {
		return nil, err
	}
	return c, c.check()
}

func (c *config) check() error {
	switch {
	case c.AdminToken == "":
		return errors.New("an admin token is needed (-admin-token or ADMIN_TOKEN)")
	case c.Scale <= 0 || c.Scale > 1:
		return errors.New("-scale lies in (0, 1]")
	case c.BodyTimeout <= 0 || c.Settle < 0:
		return errors.New("-body-timeout must be positive, -settle not negative")
	case c.MaxTombstones < 1 || c.UploadMemory < 1 || c.ValidateMemory < 1 || c.MaxConnections < 1:
		return errors.New("-max-tombstones, -upload-memory, -validate-memory and -max-connections must be positive")
	case c.IdleConns < 0:
		return errors.New("-idle-conns must not be negative")
	case c.APIPid < 0:
		return errors.New("-api-pid must be a process id")
	}
	return nil
}

// parseBase refuses a host that is not loopback. Unlike cmd/loadtest there is no way around it: these
// are attacks (thousands of hanging connections, decode bombs), never to be aimed at a shared service.
func parseBase(flagName, raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	// Plain http only: several attacks write requests by hand on a TCP connection, and a local build
	// serves no TLS.
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("%s %q is not an http:// URL", flagName, raw)
	}
	if !isLoopback(u.Hostname()) {
		return nil, fmt.Errorf("%s %q is not a loopback address (127.0.0.0/8, ::1, localhost): the attacks run only against a local build", flagName, raw)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	return u, nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// parseOnly reads -only: known attack names, each once.
func parseOnly(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var names []string
	for part := range strings.SplitSeq(s, ",") {
		name := strings.TrimSpace(part)
		if !slices.Contains(attackNames(), name) {
			return nil, fmt.Errorf("-only: unknown attack %q (known: %s)", name, strings.Join(attackNames(), ", "))
		}
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names, nil
}

// scaled shrinks one of the review's counts by -scale, never below min.
func (c *config) scaled(n, min int) int {
	return max(min, int(math.Round(float64(n)*c.Scale)))
}

// selected reports whether an attack is to run.
func (c *config) selected(name string) bool {
	return len(c.Only) == 0 || slices.Contains(c.Only, name)
}
