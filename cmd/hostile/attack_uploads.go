package main

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"upsize/internal/testimg"
)

// 3. Upload bodies are held whole (libvips validates from memory). Without a bound, 40 clients sending
// 30 MB each make the API hold 1.2 GB of bodies plus their decodes. Now bodies are admitted against
// UPLOAD_MEMORY (at their declared length) and decodes against VALIDATE_MEMORY; past either, after
// UPLOAD_WAIT, 503 server_busy with Retry-After.
var bigUploadsAttack = attack{
	name:   "big-uploads",
	review: "40 concurrent 30 MB uploads took the API to 2.25 GB",
	what: func(c *config) string {
		return fmt.Sprintf("%d concurrent uploads of a 30 MB PNG of noise (a valid image)", c.scaled(40, 4))
	},
	setup: setupBigUploads,
	judge: func(e *env, r *result, m *memory) {
		n := int64(e.cfg.scaled(40, 4))
		bound := e.cfg.UploadMemory + e.cfg.ValidateMemory + n*perConnAllowance
		peakWithin(r, m, bound, fmt.Sprintf("UPLOAD_MEMORY %s + VALIDATE_MEMORY %s + %d connections",
			fmtBytes(e.cfg.UploadMemory), fmtBytes(e.cfg.ValidateMemory), n))
	},
}

// perConnAllowance is what the bounds allow an open connection in memory expectations (the measured
// cost is about a tenth of it; see the connections attack).
const perConnAllowance = 64 << 10

func setupBigUploads(ctx context.Context, e *env, r *result) (func(), error) {
	n := e.cfg.scaled(40, 4)
	u, err := e.svc.newUser(ctx, 0)
	if err != nil {
		return nil, err
	}
	// Noise does not compress: 3300×3000 RGB is 29.7 MB of PNG, under MAX_UPLOAD_BYTES (32 MiB).
	png := e.img.get("noise PNG 3300×3000", r, func() []byte { return testimg.PNG(3300, 3000, false, false) })
	ct, body := multipartFile(png)
	hc := newClient(n, 5*time.Minute)
	base := e.cfg.Base.String()
	return func() {
		c, slowest := newCounter(), &durations{}
		var noRetryAfter atomic.Int64
		fanOut(n, n, func(int) {
			a := doWith(ctx, hc, base, "", call{method: http.MethodPost, path: "/api/images", key: u.Key, body: body, contentType: ct})
			c.add(a.label())
			slowest.add(a.Took)
			if a.Status == 503 && a.Header.Get("Retry-After") == "" {
				noRetryAfter.Add(1)
			}
		})
		r.note("each body is %s; the slowest answer came after %s", fmtBytes(int64(len(body))), fmtDur(slowest.longest))
		r.expect("answers", c.t.only("201", "503 server_busy") && c.t["201"] > 0,
			"201 or 503 server_busy, at least one 201", c.t.String())
		r.expect("503 answers say when to come back", noRetryAfter.Load() == 0, "all with Retry-After",
			fmt.Sprintf("%d without", noRetryAfter.Load()))
	}, nil
}
