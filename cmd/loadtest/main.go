// Command loadtest sends a burst of upsizes to a running service and reports what became of each: it
// makes its own users, keys and images through the admin API, sends with vegeta, cancels a share of the
// requests, follows 202 answers to their outcome, samples the queue backlog in Redis until it drains,
// and writes a JSON and a Markdown report with an SVG chart. With -scenario it runs instead one of the
// scenarios of the cost-aware queueing (scenario.go). See docs/loadtest.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"upsize/internal/redisconn"
)

var (
	errInterrupted = errors.New("interrupted")
	errMaxDuration = errors.New("-max-duration reached")
)

func main() {
	ctx, stop := interruptible(context.Background())
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

// interruptible ends ctx at the first Ctrl-C or SIGTERM, so that the run stops and still writes its
// report; a second one kills the process as usual.
func interruptible(parent context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(parent)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		select {
		case <-sig:
			signal.Stop(sig)
			cancel(errInterrupted)
		case <-ctx.Done():
		}
	}()
	return ctx, func() { signal.Stop(sig); cancel(nil) }
}

// run is the whole tool: setup, then attack (with its cancels and follow-ups) while sampling the
// backlog, then the report.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, stderr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeoutCause(ctx, cfg.MaxDuration, errMaxDuration)
	defer cancel()

	rdb, err := redisconn.Open(cfg.RedisURL, 0)
	if err != nil {
		return err
	}
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis %s: %w", redisconn.Redact(cfg.RedisURL), err)
	}
	var fl fleet
	hc := &http.Client{Timeout: time.Minute}
	if cfg.Scenario == "" {
		if fl, err = setup(ctx, cfg, hc, stderr); err != nil {
			return fmt.Errorf("setup: %w", err)
		}
	} else if cfg.Configure { // a scenario makes its users as it goes
		if err := configure(ctx, cfg, hc); err != nil {
			return fmt.Errorf("setup: %w", err)
		}
	}

	res := runResult{Cfg: cfg, Started: time.Now()}
	rec := &recorder{}
	done := make(chan struct{})
	sampled := make(chan []sample)
	go func() { sampled <- sampleBacklog(ctx, cfg, rdb, rec, done, stderr) }()
	fmt.Fprintf(stderr, "attack: %s against %s\n", mode(cfg), cfg.Base)
	var scen *scenarioReport
	var runErr error
	if cfg.Scenario == "" {
		res.Metrics, res.Plans = attack(ctx, cfg, fl, rec)
	} else {
		res.Metrics, res.Plans, scen, runErr = runScenario(ctx, cfg, rdb, rec, stderr)
	}
	close(done)
	fmt.Fprintln(stderr, "attack: every request has an outcome; waiting for the backlog to drain")
	res.Samples = <-sampled
	res.Finished = time.Now()
	res.Requests, res.LastSent = rec.result()
	res.StopReason = stopReason(ctx)

	rep := buildReport(res)
	rep.Scenario = scen
	if err := writeReport(cfg.Out, &rep, res); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d requests at %.1f/s, error ratio %.3f, peak backlog %d, %s; stopped: %s; report %s\n",
		rep.Requests, rep.AchievedRate, rep.ErrorRatio, rep.Backlog.Peak, drainText(rep.Backlog), rep.StopReason, cfg.Out)
	if scen != nil {
		fmt.Fprintln(stdout, scenarioLine(scen))
	}
	return runErr
}

func stopReason(ctx context.Context) string {
	if ctx.Err() == nil {
		return "done"
	}
	return context.Cause(ctx).Error()
}
