package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"
)

// 1. Every request is measured by method, route, status and platform: if a label took what the client
// sent, each made-up method or path would be a new series, kept forever.
var methodsAttack = attack{
	name:   "methods",
	review: "30,000 requests with made-up methods (no key) grew /metrics to 66 MB and the API from 122 to 264 MB RSS, for good",
	what: func(c *config) string {
		return fmt.Sprintf("%d requests with made-up methods, paths and X-Platform, no API key", c.scaled(30000, 100))
	},
	setup: setupMethods,
	judge: func(e *env, r *result, m *memory) {
		r.expect("RSS after", m.After-m.Before <= 32<<20, "≤ before + 32 MB (nothing kept per request)",
			fmt.Sprintf("%s → %s", fmtBytes(m.Before), fmtBytes(m.After)))
	},
}

func setupMethods(ctx context.Context, e *env, r *result) (func(), error) {
	n := e.cfg.scaled(30000, 100)
	const workers = 32
	hc := newClient(workers, 10*time.Second)
	base := e.cfg.Base.String()
	send := func(count int, c *counter) {
		fanOut(count, workers, func(int) {
			a := doWith(ctx, hc, base, "", call{method: madeUpMethod(), path: madeUpPath(),
				header: map[string]string{"X-Platform": junk(6)}})
			c.add(a.label())
		})
	}
	// The first made-up requests may add the few series of the fixed sets ("unmatched", "other"); a
	// warm-up takes them, so that what follows must add none.
	send(300, newCounter())
	before, err := e.mem.metrics(ctx)
	if err != nil {
		return nil, err
	}
	return func() {
		c := newCounter()
		start := time.Now()
		send(n, c)
		took := time.Since(start)
		r.note("answers: %s (%.0f requests/s)", c.t, float64(n)/took.Seconds())
		r.expect("answers", c.t.only("404 not_found", "405 method_not_allowed"),
			"only 404 not_found / 405 method_not_allowed", c.t.String())
		after, err := e.mem.metrics(ctx)
		if err != nil {
			r.fail(err)
			return
		}
		sb, sa := seriesCount(before), seriesCount(after)
		r.expect("/metrics series", sa-sb <= 100, "unchanged (≤ +100: label values come from fixed sets)",
			fmt.Sprintf("%d → %d", sb, sa))
		r.expect("/metrics size", len(after)-len(before) <= 64<<10, "≤ before + 64 KB",
			fmt.Sprintf("%s → %s", fmtBytes(int64(len(before))), fmtBytes(int64(len(after)))))
	}, nil
}

const letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// junk is n random letters.
func junk(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = letters[rand.IntN(len(letters))]
	}
	return string(b)
}

// madeUpMethod is a token of 3 to 10 letters that is not a standard method (one in 8,800 three-letter
// draws would be GET or PUT, and would reach a handler).
func madeUpMethod() string {
	for {
		m := strings.ToUpper(junk(3 + rand.IntN(8)))
		if !slices.Contains(standardMethods, m) {
			return m
		}
	}
}

var standardMethods = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}

// madeUpPath is a random path, or a known route template with a random id, so that both the 404
// (unmatched) and the 405 (a route, another method) answers are exercised.
func madeUpPath() string {
	switch rand.IntN(4) {
	case 0:
		return "/api/images/" + junk(10) + "/upsize"
	case 1:
		return "/admin/users/" + strconv.Itoa(rand.IntN(1e9))
	case 2:
		return "/metrics"
	default:
		return "/" + junk(12) + "/" + junk(8)
	}
}
