package main

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// trickleEvery is the review's pace: one byte of body every 5 s, enough to keep a connection alive
// against any idle timeout, never enough to finish.
const trickleEvery = 5 * time.Second

// unauthBudget: an unauthenticated request is answered from its headers and its connection closed at
// once; 2 s leaves room for 2,000 of them arriving together on two shared cores.
const unauthBudget = 2 * time.Second

// 4. Slow bodies without a key: nothing is to be read from a client that is refused anyway.
var trickleUnauthAttack = attack{
	name:   "trickle-unauth",
	review: "2,000 unauthenticated connections trickling 1 byte every 5 s were all still open after 130 s",
	what: func(c *config) string {
		return fmt.Sprintf("%d connections at once: POST /api/images headers with Content-Length 100000, no key, then 1 byte every 5 s", c.scaled(2000, 20))
	},
	setup: func(ctx context.Context, e *env, r *result) (func(), error) {
		return func() { trickleUnauth(ctx, e, r) }, nil
	},
	judge: func(e *env, r *result, m *memory) {
		n := int64(e.cfg.scaled(2000, 20))
		peakWithin(r, m, 16<<20+n*perConnAllowance, fmt.Sprintf("16 MB + %d connections × %s", n, fmtBytes(perConnAllowance)))
	},
}

func trickleUnauth(ctx context.Context, e *env, r *result) {
	n := e.cfg.scaled(2000, 20)
	head := "POST /api/images HTTP/1.1\r\nHost: hostile\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n"
	c, slowest := newCounter(), &durations{}
	stop := make(chan struct{})
	dials := make(chan struct{}, 256) // the kernel's accept queue is not the subject here
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			dials <- struct{}{}
			conn, err := dialRaw(ctx, hostPort(e.cfg.Base))
			<-dials
			if err != nil {
				c.add("dial " + errKind(err))
				return
			}
			defer conn.Close()
			start := time.Now()
			if _, err := conn.Write([]byte(head)); err != nil {
				c.add("write " + errKind(err))
				return
			}
			go conn.trickle(trickleEvery, stop)
			res, _, closed, err := conn.readAnswer("POST", 30*time.Second, 30*time.Second)
			took := time.Since(start)
			slowest.add(took)
			switch {
			case err != nil:
				c.add("no answer: " + errKind(err))
			case !closed:
				c.add(strconv.Itoa(res.StatusCode) + " left open")
			case took > unauthBudget:
				c.add(strconv.Itoa(res.StatusCode) + " closed late")
			default:
				c.add(strconv.Itoa(res.StatusCode) + " closed")
			}
		})
	}
	wg.Wait()
	close(stop)
	r.note("connections: %s; the last was closed %s after its headers", c.t, fmtDur(slowest.longest))
	r.expect("answered and closed", c.t["403 closed"] == n,
		fmt.Sprintf("all %d: 403 and closed by the server within %s", n, fmtDur(unauthBudget)),
		fmt.Sprintf("%d of %d", c.t["403 closed"], n))
}

// 4. Slow bodies with a key (and the admin token): cut off at BODY_TIMEOUT, whatever the route.
var trickleAuthAttack = attack{
	name:   "trickle-auth",
	review: "an authenticated upload trickling 1 byte every 5 s was held for 150 s (and would have been for longer)",
	what: func(c *config) string {
		return "authenticated POST /api/images, /api/images/1/upsize and /admin/users, each trickling 1 byte every 5 s, in parallel"
	},
	setup: setupTrickleAuth,
	judge: func(e *env, r *result, m *memory) { peakWithin(r, m, 16<<20, "three connections") },
}

func setupTrickleAuth(ctx context.Context, e *env, r *result) (func(), error) {
	u, err := e.svc.newUser(ctx, 0)
	if err != nil {
		return nil, err
	}
	heads := []struct{ path, auth, ctype, length string }{
		{"/api/images", "X-Api-Key: " + u.Key, "multipart/form-data; boundary=b", "100000"},
		{"/api/images/1/upsize", "X-Api-Key: " + u.Key, "application/json", "1000"},
		{"/admin/users", "Authorization: Bearer " + e.cfg.AdminToken, "application/json", "1000"},
	}
	bt := e.cfg.BodyTimeout
	return func() {
		var wg sync.WaitGroup
		stop := make(chan struct{})
		defer close(stop)
		for _, h := range heads {
			wg.Go(func() {
				head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: hostile\r\n%s\r\nContent-Type: %s\r\nContent-Length: %s\r\n\r\n",
					h.path, h.auth, h.ctype, h.length)
				got, took := trickleOne(ctx, e, head, bt+30*time.Second, stop)
				ok := got == "408 request_timeout closed" && took >= bt-time.Second && took <= bt+3*time.Second
				r.expect(h.path, ok, fmt.Sprintf("408 request_timeout and closed at BODY_TIMEOUT (%s, -1 s/+3 s)", fmtDur(bt)),
					got+" after "+fmtDur(took))
			})
		}
		wg.Wait()
	}, nil
}

// trickleOne sends head, trickles, and says what came back ("408 request_timeout closed") and when.
func trickleOne(ctx context.Context, e *env, head string, wait time.Duration, stop <-chan struct{}) (string, time.Duration) {
	conn, err := dialRaw(ctx, hostPort(e.cfg.Base))
	if err != nil {
		return "dial " + errKind(err), 0
	}
	defer conn.Close()
	start := time.Now()
	if _, err := conn.Write([]byte(head)); err != nil {
		return "write " + errKind(err), 0
	}
	go conn.trickle(trickleEvery, stop)
	res, body, closed, err := conn.readAnswer("POST", wait, 2*time.Second)
	took := time.Since(start)
	if err != nil {
		return "no answer: " + errKind(err), took
	}
	got := strconv.Itoa(res.StatusCode) + " " + envelopeReason(body)
	if closed {
		return got + " closed", took
	}
	return got + " left open", took
}
