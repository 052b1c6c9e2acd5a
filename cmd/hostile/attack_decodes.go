package main

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"upsize/internal/testimg"
)

// Not an item of the review, but the other half of item 3: small files that are legitimately costly
// to decode. A 7000² Adam7 PNG is a few hundred KB (nothing against UPLOAD_MEMORY), and libvips decodes
// it whole into memory (~190 MiB each) to validate it. Only VALIDATE_MEMORY, counted from each file's
// structure, stands between many of them at once and the API's memory.
var bigDecodesAttack = attack{
	name:   "big-decodes",
	review: "(not in the review) with VALIDATE_MEMORY=10^12 (no bound), these 16 uploads decoded all at once: +2.6 to 2.8 GiB, the slowest answered after 15 to 22 s",
	what: func(c *config) string {
		return fmt.Sprintf("%d concurrent uploads of a flat 7000² interlaced PNG (a small file, a whole-image decode)", c.scaled(16, 3))
	},
	setup: setupBigDecodes,
	judge: func(e *env, r *result, m *memory) {
		n := int64(e.cfg.scaled(16, 3))
		bound := e.cfg.UploadMemory + e.cfg.ValidateMemory + n*perConnAllowance
		peakWithin(r, m, bound, fmt.Sprintf("UPLOAD_MEMORY %s + VALIDATE_MEMORY %s + %d connections",
			fmtBytes(e.cfg.UploadMemory), fmtBytes(e.cfg.ValidateMemory), n))
	},
}

func setupBigDecodes(ctx context.Context, e *env, r *result) (func(), error) {
	n := e.cfg.scaled(16, 3)
	u, err := e.svc.newUser(ctx, 0)
	if err != nil {
		return nil, err
	}
	png := e.img.get("interlaced PNG 7000²", r, func() []byte { return testimg.InterlacedPNG(7000, 7000) })
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
		r.note("the slowest answer came after %s", fmtDur(slowest.longest))
		r.expect("answers", c.t.only("201", "503 server_busy") && c.t["201"] > 0,
			"201 or 503 server_busy, at least one 201", c.t.String())
		r.expect("503 answers say when to come back", noRetryAfter.Load() == 0, "all with Retry-After",
			fmt.Sprintf("%d without", noRetryAfter.Load()))
	}, nil
}
