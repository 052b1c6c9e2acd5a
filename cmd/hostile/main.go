// Command hostile runs the attacks of the security review against a running build and prints, for
// each, what the service answered, how long it took and what it cost the API in memory, against a
// stated expectation. It exits 1 if any expectation fails. It makes its own users, keys and images
// through the admin API, and refuses any -base that is not loopback. See docs/security.md;
// scripts/hostile.sh starts a fresh build and runs it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ok, err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "hostile:", err)
		os.Exit(1)
	case !ok:
		os.Exit(1)
	}
}

// env is what every attack shares: the settings, a client of the API, the memory sampler and the
// images made so far (some take seconds to make, and several attacks use them).
type env struct {
	cfg *config
	svc *service
	mem *memSampler
	run string // a run id, so that request ids of two runs never meet
	img *imageCache

	baseline int64     // the API's RSS before the first attack
	results  []*result // the attacks run so far (the connections attack compares their peaks)
}

// run is the whole tool: check the service, run each selected attack under the memory sampler, print
// as it goes, then the summary and the JSON report. ok is false when an expectation failed.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) (ok bool, err error) {
	cfg, err := parseConfig(args, stderr)
	if err != nil {
		return false, err
	}
	e := &env{
		cfg: cfg,
		svc: &service{base: cfg.Base.String(), admin: cfg.AdminToken, hc: newClient(16, 2*time.Minute)},
		mem: newMemSampler(cfg),
		run: fmt.Sprintf("h%d", time.Now().Unix()%1e6),
		img: newImageCache(),
	}
	if _, err := e.mem.rss(ctx); err != nil {
		return false, fmt.Errorf("the API's /metrics at %s: %w", cfg.Base, err)
	}
	// The upsize attacks need a model and credit costs (only what is unset is set).
	if err := e.svc.configure(ctx); err != nil {
		return false, fmt.Errorf("admin API: %w", err)
	}
	rep := report{Base: cfg.Base.String(), Scale: cfg.Scale, Started: time.Now(), CoveredByTests: coveredByTests}
	worker := "none (its checks are skipped)"
	if cfg.Worker != nil {
		rep.Worker = cfg.Worker.String()
		worker = rep.Worker
	}
	fmt.Fprintf(stdout, "hostile: API %s (pid %d), worker %s, scale %g\n", cfg.Base, cfg.APIPid, worker, cfg.Scale)
	if e.baseline, err = e.mem.now(ctx); err != nil {
		return false, err
	}
	for _, a := range attacks {
		if !cfg.selected(a.name) {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		r := runAttack(ctx, e, a)
		writeText(stdout, r)
		e.results = append(e.results, r)
	}
	rep.Attacks = e.results
	rep.Finished = time.Now()
	writeSummary(stdout, rep.Attacks)
	rep.Passed = ctx.Err() == nil
	for _, r := range rep.Attacks {
		rep.Passed = rep.Passed && r.passed()
	}
	if cfg.JSONOut != "" {
		if err := writeJSONFile(cfg.JSONOut, rep); err != nil {
			return false, err
		}
	}
	return rep.Passed, ctx.Err()
}

// runAttack runs one attack under the memory sampler (unless it has nothing to send: a skip).
func runAttack(ctx context.Context, e *env, a attack) *result {
	r := &result{Name: a.name, What: a.what(e.cfg), Review: a.review}
	if a.needs != nil {
		if why := a.needs(e.cfg); why != "" {
			r.Skipped = why
			return r
		}
	}
	// Setup (users, images) happens before the sampler starts: an attack's memory is its own.
	send, err := a.setup(ctx, e, r)
	if err != nil {
		r.fail(fmt.Errorf("setup: %w", err))
		return r
	}
	start := time.Now()
	mem, err := e.mem.watch(ctx, send)
	r.TookMS = float64(time.Since(start)-e.cfg.Settle) / float64(time.Millisecond)
	if err != nil {
		r.fail(fmt.Errorf("memory: %w", err))
	}
	r.Memory = mem
	if a.judge != nil && mem != nil {
		a.judge(e, r, mem)
	}
	return r
}
