package main

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// The README bounds the API's memory: RSS ≤ baseline + UPLOAD_MEMORY + VALIDATE_MEMORY +
// MAX_CONNECTIONS × (what one open connection costs). This measures the last factor with idle
// keep-alive connections (each has sent one request: its buffers and goroutine exist), and checks the
// bound against the peaks of the attacks run before it.
var connectionsAttack = attack{
	name:   "connections",
	review: "(not in the review: the per-connection cost of the README's memory bound)",
	what: func(c *config) string {
		return fmt.Sprintf("%d idle keep-alive connections, each after one GET /healthz", idleConns(c))
	},
	setup: func(ctx context.Context, e *env, r *result) (func(), error) {
		return func() { measureConnections(ctx, e, r) }, nil
	},
}

func idleConns(c *config) int {
	if c.IdleConns > 0 {
		return c.IdleConns
	}
	return c.scaled(2000, 100)
}

func measureConnections(ctx context.Context, e *env, r *result) {
	n := idleConns(e.cfg)
	before, err := e.mem.now(ctx)
	if err != nil {
		r.fail(err)
		return
	}
	conns := make([]*rawConn, n)
	failed := newCounter()
	var wg sync.WaitGroup
	dials := make(chan struct{}, 128)
	for i := range n {
		wg.Go(func() {
			dials <- struct{}{}
			defer func() { <-dials }()
			c, err := dialRaw(ctx, hostPort(e.cfg.Base))
			if err != nil {
				failed.add("dial " + errKind(err))
				return
			}
			if _, err := c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: hostile\r\n\r\n")); err != nil {
				failed.add("write " + errKind(err))
				c.Close()
				return
			}
			if res, _, _, err := c.readAnswer("GET", 10*time.Second, 0); err != nil || res.StatusCode != 200 {
				failed.add("no 200")
				c.Close()
				return
			}
			conns[i] = c
		})
	}
	wg.Wait()
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	time.Sleep(time.Second) // let the server's goroutines settle into their idle reads
	open, err := e.mem.now(ctx)
	if err != nil {
		r.fail(err)
		return
	}
	opened := n - failed.t.total()
	if opened == 0 {
		r.fail(fmt.Errorf("no connection opened: %s", failed.t))
		return
	}
	per := (open - before) / int64(opened)
	r.note("%d connections open (failed: %s): RSS %s → %s (%s)", opened, failed.t, fmtBytes(before), fmtBytes(open), e.mem.source())
	r.expect("cost of one idle connection", per <= perConnAllowance, "≤ "+fmtBytes(perConnAllowance), fmtBytes(per))
	checkBound(e, r, per)
}

// checkBound compares the README's bound, with the measured per-connection cost, to the highest RSS
// any attack of this run reached.
func checkBound(e *env, r *result, perConn int64) {
	c := e.cfg
	bound := e.baseline + c.UploadMemory + c.ValidateMemory + c.MaxConnections*perConn
	r.note("bound: baseline %s + UPLOAD_MEMORY %s + VALIDATE_MEMORY %s + MAX_CONNECTIONS %d × %s = %s",
		fmtBytes(e.baseline), fmtBytes(c.UploadMemory), fmtBytes(c.ValidateMemory), c.MaxConnections, fmtBytes(perConn), fmtBytes(bound))
	var worst int64
	worstName := "none"
	for _, res := range e.results {
		if res.Memory == nil {
			continue
		}
		if p := res.Memory.absolutePeak(); p > worst {
			worst, worstName = p, res.Name
		}
	}
	if worst == 0 {
		r.note("no earlier attack to compare the bound with (run them in the same invocation)")
		return
	}
	r.expect("highest RSS of this run against the bound", worst <= bound, "≤ "+fmtBytes(bound),
		fmt.Sprintf("%s (%s)", fmtBytes(worst), worstName))
}
