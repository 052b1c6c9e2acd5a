package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"upsize/internal/testimg"
)

// bombBudget is how fast a scan bomb must be refused: from its structure, before any decode, so the
// time is that of sending 1 MB on loopback and walking its markers (before the fix: 65 s of decode).
// Eight at once share two cores: bombsBudget.
const (
	bombBudget  = 100 * time.Millisecond
	bombsBudget = 500 * time.Millisecond
)

// 2. A progressive JPEG may repeat tiny scans thousands of times; each makes libjpeg visit every block
// of the image again. The API now counts scans from the structure (more than 64: invalid_image).
var scanBombUploadAttack = attack{
	name:   "scan-bomb-upload",
	review: "a 1 MB 7000² progressive JPEG with ~3000 repeated scans cost libvips 65 s CPU and 333 MB; 8 at once ran ~710 s each and took the API to 2.48 GB",
	what: func(*config) string {
		return "uploads of a flat 7000² progressive JPEG with 3000 extra scans: 1 alone, then 8 at once"
	},
	setup: setupScanBomb,
	judge: func(e *env, r *result, m *memory) {
		peakWithin(r, m, 64<<20, "8 bodies of 1 MB, no decode")
	},
}

func scanBombFile(e *env, r *result) []byte {
	return e.img.get("scan bomb 7000² +3000 scans", r, func() []byte { return testimg.ScanBomb(7000, 7000, 3000) })
}

func setupScanBomb(ctx context.Context, e *env, r *result) (func(), error) {
	u, err := e.svc.newUser(ctx, 0)
	if err != nil {
		return nil, err
	}
	bomb := scanBombFile(e, r)
	r.note("the bomb has %d scans (the limit is 64)", testimg.Scans(bomb))
	return func() {
		a := e.svc.upload(ctx, u.Key, bomb)
		r.expect("one bomb", a.is(422, "invalid_image") && a.Took < bombBudget,
			"422 invalid_image in < "+fmtDur(bombBudget), a.label()+" in "+fmtDur(a.Took))

		c, slowest := newCounter(), &durations{}
		fanOut(8, 8, func(int) {
			a := e.svc.upload(ctx, u.Key, bomb)
			c.add(a.label())
			slowest.add(a.Took)
		})
		r.expect("8 bombs at once", c.t["422 invalid_image"] == 8 && slowest.longest < bombsBudget,
			"8× 422 invalid_image, the slowest in < "+fmtDur(bombsBudget), c.t.String()+", the slowest in "+fmtDur(slowest.longest))
	}, nil
}

// 2, in the worker. A costly but admissible progressive JPEG (within 64 scans) takes seconds to decode;
// a cancel must stop that decode (between scans), so that the worker's slots serve the next request.
var bombWorkerAttack = attack{
	name:   "bomb-worker",
	review: "a 5000² bomb kept decoding 13-17 s after its cancel, so a normal 2x upsize behind it waited 13.5 s",
	what: func(*config) string {
		return "two 2x upsizes of a flat 5000² progressive JPEG with 60 scans, canceled 200 ms into their run; then a 2x of a 64² image"
	},
	setup: setupBombWorker,
	judge: func(e *env, r *result, m *memory) {
		peakWithin(r, m, 64<<20, "the API only waits for outcomes")
	},
}

// cancelBudget: the small upsize after the cancels must not wait for the canceled decodes. SPEC gives
// a canceled task 250 ms to leave its slot; the rest is a 64² upsize.
const cancelBudget = time.Second

func setupBombWorker(ctx context.Context, e *env, r *result) (func(), error) {
	u, err := e.svc.newUser(ctx, 1000)
	if err != nil {
		return nil, err
	}
	// 50 scans more than libjpeg's 10: 60, within the limit of 64, so it is admitted and the worker
	// decodes it. One image serves both upsizes (two request ids, two tasks).
	big := e.img.get("costly JPEG 5000² 60 scans", r, func() []byte { return testimg.ScanBomb(5000, 5000, 50) })
	start := time.Now()
	bigID, err := e.svc.uploadOK(ctx, u.Key, big)
	if err != nil {
		return nil, err
	}
	r.note("the costly JPEG (%d scans) was validated and admitted by the API in %s", testimg.Scans(big), fmtDur(time.Since(start)))
	smallID, err := e.svc.uploadOK(ctx, u.Key, testimg.JPEG(64, 64, testimg.JPEGOptions{}))
	if err != nil {
		return nil, err
	}
	// A first small upsize, so that the one measured later pays no first-time costs.
	warm := e.svc.upsize(ctx, u.Key, smallID, "2x", e.run+"-warm")
	if !warm.is(201, "") {
		return nil, fmt.Errorf("warm-up upsize: %s", warm.label())
	}
	r.note("a 64² 2x upsize on an idle worker: %s", fmtDur(warm.Took))
	// What an idle worker burns (its 4 ms polls of Redis), to read the CPU figure after the cancels by.
	if e.cfg.Worker != nil {
		c0, err0 := workerCPU(ctx, e)
		time.Sleep(2 * time.Second)
		c1, err1 := workerCPU(ctx, e)
		if err := errors.Join(err0, err1); err != nil {
			return nil, err
		}
		r.note("an idle worker uses %.2f s of CPU in 2 s", c1-c0)
	}
	return func() { bombWorker(ctx, e, r, u, bigID, smallID) }, nil
}

func bombWorker(ctx context.Context, e *env, r *result, u user, bigID, smallID int64) {
	rids := []string{e.run + "-bomb-1", e.run + "-bomb-2"}
	answers := make([]answer, len(rids))
	answered := make([]time.Time, len(rids))
	var wg sync.WaitGroup
	for i, rid := range rids {
		wg.Go(func() {
			answers[i] = e.svc.upsize(ctx, u.Key, bigID, "2x", rid)
			answered[i] = time.Now()
		})
	}
	defer wg.Wait()
	for _, rid := range rids {
		if _, err := e.svc.waitState(ctx, u.Key, rid, 30*time.Second, "running"); err != nil {
			r.fail(fmt.Errorf("%w (the worker never ran it: is it up?)", err))
			for _, rid := range rids {
				e.svc.cancel(ctx, u.Key, rid)
			}
			return
		}
	}
	time.Sleep(200 * time.Millisecond)
	cpu0, cpuErr := workerCPU(ctx, e)
	canceledAt := time.Now()
	for _, rid := range rids {
		a := e.svc.cancel(ctx, u.Key, rid)
		r.expect("cancel "+rid, a.is(200, ""), "200 canceled", a.label()+" in "+fmtDur(a.Took))
	}
	wg.Wait()
	for i, a := range answers {
		r.expect("canceled upsize "+rids[i], a.is(409, "user_canceled_request"), "409 user_canceled_request",
			fmt.Sprintf("%s, %s after the first cancel was sent", a.label(), fmtDur(answered[i].Sub(canceledAt))))
	}
	small := e.svc.upsize(ctx, u.Key, smallID, "2x", e.run+"-after-bombs")
	r.expect("64² 2x upsize right after", small.is(201, "") && small.Took < cancelBudget,
		"201 in < "+fmtDur(cancelBudget)+" (not behind the canceled decodes)", small.label()+" in "+fmtDur(small.Took))

	// Canceled decodes that went on would burn a core each: about 4 s of CPU in 2 s on two cores.
	if e.cfg.Worker == nil {
		r.note("worker CPU after the cancels: not measured (no -worker)")
		return
	}
	time.Sleep(time.Until(canceledAt.Add(2 * time.Second)))
	cpu1, err := workerCPU(ctx, e)
	if err = errors.Join(cpuErr, err); err != nil {
		r.fail(fmt.Errorf("worker CPU: %w", err))
		return
	}
	r.expect("worker CPU in the 2 s after the cancels", cpu1-cpu0 < 1, "< 1 s (the decodes stopped)", fmt.Sprintf("%.2f s", cpu1-cpu0))
}

// workerCPU is the worker's process_cpu_seconds_total.
func workerCPU(ctx context.Context, e *env) (float64, error) {
	if e.cfg.Worker == nil {
		return 0, nil
	}
	a := doWith(ctx, e.mem.hc, e.cfg.Worker.String(), "", call{method: http.MethodGet, path: "/metrics"})
	if a.Err != nil || a.Status != 200 {
		return 0, fmt.Errorf("worker /metrics: %s", a.label())
	}
	return metricValue(a.Body, "process_cpu_seconds_total")
}
