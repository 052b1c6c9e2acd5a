package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	vegeta "github.com/tsenart/vegeta/v12/lib"

	"upsize/internal/cancel"
	"upsize/internal/jobs"
	"upsize/internal/store"
)

// The scenarios of the cost-aware queueing (docs/loadtest.md, "Scenarios"):
//
//   - heavy-burst-small-stream: a paid user's small upsizes one after another, on an idle service
//     (phase idle) and while another paid user's burst of heavy upsizes is served (phase burst); and the
//     heavy burst alone (phase heavy), for its throughput without the stream.
//   - fairness: backlog users each send many large upsizes at once; once they are queued, lone users
//     send one each. How long a lone request waits, and how many tasks are served ahead of it, against
//     the bound the lanes give.
//
// Each role is a group of requests ("small-idle", "heavy-burst", "lone", …), named in the report's
// per-request entries.
const (
	groupWarmup     = "warmup"
	groupSmallIdle  = "small-idle"
	groupSmallBurst = "small-burst"
	groupHeavyBurst = "heavy-burst"
	groupHeavyOnly  = "heavy-only"
	groupBacklog    = "backlog"
	groupLone       = "lone"
)

// warmupRequests small upsizes go first and are not counted: the first requests of a fresh service
// open its connections.
const warmupRequests = 5

// phaseGap separates phases, once the backlog is empty, so that one phase's last writes do not fall
// into the next one's figures.
const phaseGap = 2 * time.Second

// queuedWithin bounds the wait for a burst's tasks to be queued before the next group is sent.
const queuedWithin = 30 * time.Second

// scenarioReport is the scenario's section of the report.
type scenarioReport struct {
	Name       string            `json:"name"`
	HeavyBurst *heavyBurstReport `json:"heavyBurst,omitempty"`
	Fairness   *fairnessReport   `json:"fairness,omitempty"`
}

// jobInfo is a scenario's upsize as the service classes it (policy.DefaultWork, jobs.QueuesFor).
type jobInfo struct {
	Spec       string  `json:"spec"`
	EstimateMs float64 `json:"estimateMs"`
	Class      string  `json:"class"`               // small or large
	Queue      string  `json:"queue"`               // a paid user's queue (a large task's first one)
	MoreQueue  string  `json:"moreQueue,omitempty"` // a large task's "more" queue
}

func infoOf(j jobSpec) jobInfo {
	first, more := j.queues()
	return jobInfo{Spec: j.String(), EstimateMs: ms(j.estimate()), Class: j.class(), Queue: first, MoreQueue: more}
}

type heavyBurstReport struct {
	Heavy  jobInfo  `json:"heavy"`
	Small  jobInfo  `json:"small"`
	HeavyN int      `json:"heavyN"`
	Phases []string `json:"phases"`
	// Idle: the small stream alone. During: the small requests sent while the heavy burst was served.
	Idle   *latencySummary `json:"idle,omitempty"`
	During *latencySummary `json:"during,omitempty"`
	// Burst: the heavy burst with the small stream; HeavyOnly: the same burst alone.
	Burst     *throughput `json:"burst,omitempty"`
	HeavyOnly *throughput `json:"heavyOnly,omitempty"`
	// SmallBoundMs is the target for During's p95 (2 × Idle's p95 + 100 ms); SmallTargetMet whether
	// it held. Both need the idle and burst phases.
	SmallBoundMs   *float64 `json:"smallBoundMs,omitempty"`
	SmallTargetMet *bool    `json:"smallTargetMet,omitempty"`
}

type fairnessReport struct {
	Large         jobInfo     `json:"large"`
	BacklogUsers  int         `json:"backlogUsers"`
	BacklogN      int         `json:"backlogN"`
	LoneUsers     int         `json:"loneUsers"`
	KeepBacklog   bool        `json:"keepBacklog"`
	Lane          int         `json:"lane"`
	FirstWeight   int         `json:"firstWeight"`
	MoreWeight    int         `json:"moreWeight"`
	DrawFirst     float64     `json:"drawFirst"` // chance a draw between the two picks the first queue
	BoundQuantile float64     `json:"boundQuantile"`
	Trials        []fairTrial `json:"trials"`
	Summary       fairSummary `json:"summary"`
}

// scenario is a scenario's run.
type scenario struct {
	ctx   context.Context
	cfg   *config
	r     *runner
	rdb   redis.UniversalClient
	reg   *cancel.Registry // read only: the service's record of each request
	hc    *http.Client     // setup
	log   io.Writer
	seq   atomic.Int64 // request ids
	plans []*plan      // every request sent
	mu    sync.Mutex   // plans
	files map[string]sourceFile
}

// runScenario runs cfg.Scenario; it returns vegeta's metrics of every first answer, every plan sent, and
// the scenario's section of the report.
func runScenario(ctx context.Context, cfg *config, rdb redis.UniversalClient, rec *recorder, log io.Writer) (vegeta.Metrics, []*plan, *scenarioReport, error) {
	s := &scenario{ctx: ctx, cfg: cfg, r: newRunner(ctx, cfg, rec), rdb: rdb, log: log,
		reg: cancel.NewRegistry(rdb, store.DefaultKeys, cancel.Settings{}), hc: &http.Client{Timeout: time.Minute},
		files: map[string]sourceFile{}}
	rep := &scenarioReport{Name: cfg.Scenario}
	var err error
	switch cfg.Scenario {
	case scenarioHeavyBurst:
		rep.HeavyBurst, err = s.heavyBurst()
	case scenarioFairness:
		rep.Fairness, err = s.fairness()
	}
	s.r.bg.Wait()
	if err != nil && ctx.Err() != nil {
		err = nil // stopped: the report says so, with what was measured
	}
	return s.r.first.close(), s.plans, rep, err
}

// user makes a paid user who uploads the source of j.
func (s *scenario) user(j jobSpec) (*account, error) {
	f, ok := s.files[j.String()]
	if !ok {
		var err error
		if f, err = specFile(j); err != nil {
			return nil, err
		}
		s.files[j.String()] = f
	}
	return newAccount(s.ctx, s.cfg, s.hc, "paid", []sourceFile{f})
}

// users makes n paid users who upload the source of j.
func (s *scenario) users(n int, j jobSpec) ([]*account, error) {
	var out []*account
	for range n {
		a, err := s.user(j)
		if err != nil {
			return nil, fmt.Errorf("setup: %w", err)
		}
		out = append(out, a)
	}
	return out, nil
}

// planner gives the plans of a group: its users take turns, each upsizing its source of j.
func (s *scenario) planner(group string, users []*account, j jobSpec) func() *plan {
	var mu sync.Mutex
	i := 0
	return func() *plan {
		mu.Lock()
		a := users[i%len(users)]
		i++
		mu.Unlock()
		src, _ := a.source(j) // s.user uploaded it
		return &plan{RequestID: fmt.Sprintf("lt-%s-%d", group, s.seq.Add(1)), Group: group, Account: a, Source: src, Scale: j.Scale}
	}
}

// group is one group's wave as it runs.
type group struct {
	done  chan struct{} // closed once every request has its outcome
	mu    sync.Mutex
	reqs  []request // with their outcome
	drawn []*plan   // every plan the wave drew (sent, or about to be)
}

// send runs w in the background.
func (s *scenario) send(w wave) *group {
	g := &group{done: make(chan struct{})}
	next := w.next
	w.next = func() *plan {
		p := next()
		g.mu.Lock()
		g.drawn = append(g.drawn, p)
		g.mu.Unlock()
		return p
	}
	w.ended = func(r request) {
		g.mu.Lock()
		g.reqs = append(g.reqs, r)
		g.mu.Unlock()
	}
	go func() {
		defer close(g.done)
		plans := s.r.send(w)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.plans = append(s.plans, plans...)
	}()
	return g
}

// wait returns the group's requests once each has its outcome (or the run stopped: then interrupted
// ones are among them).
func (g *group) wait() []request {
	<-g.done
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.reqs
}

// ended is how many of the group's requests have their outcome.
func (g *group) ended() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.reqs)
}

// open is the plans drawn that have no outcome yet.
func (g *group) open() []*plan {
	g.mu.Lock()
	defer g.mu.Unlock()
	ended := map[string]bool{}
	for _, r := range g.reqs {
		ended[r.RequestID] = true
	}
	var out []*plan
	for _, p := range g.drawn {
		if !ended[p.RequestID] {
			out = append(out, p)
		}
	}
	return out
}

func (s *scenario) burst(name string, n int, next func() *plan) *group {
	return s.send(wave{name: name, next: next, pacer: burstPacer{uint64(n)}, workers: uint64(n)})
}

// loop sends one request after another: n of them, or (n = 0) until stop is closed.
func (s *scenario) loop(name string, n int, stop <-chan struct{}, next func() *plan) *group {
	return s.send(wave{name: name, next: next, pacer: loopPacer{n: uint64(n), stop: stop}, workers: 1, maxWorkers: 1})
}

// waitQueued returns once want tasks of g are in the service's queues or done (asynq's pending and
// active lists count every queue, so nothing else may be queued then), or g is over, or queuedWithin.
func (s *scenario) waitQueued(g *group, want int) {
	deadline := time.Now().Add(queuedWithin)
	for s.ctx.Err() == nil && !isClosed(g.done) {
		n, err := backlog(s.ctx, s.rdb)
		n += int64(g.ended())
		if err == nil && n >= int64(want) {
			return
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(s.log, "scenario: only %d of %d tasks queued after %s; going on\n", n, want, queuedWithin)
			return
		}
		sleep(s.ctx, 5*time.Millisecond)
	}
}

// settle waits for an empty backlog (at most -drain-timeout), then phaseGap.
func (s *scenario) settle() {
	deadline := time.Now().Add(s.cfg.DrainTimeout)
	for s.ctx.Err() == nil && time.Now().Before(deadline) {
		if n, err := backlog(s.ctx, s.rdb); err == nil && n == 0 {
			break
		}
		sleep(s.ctx, 50*time.Millisecond)
	}
	sleep(s.ctx, phaseGap)
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// records reads the service's record of each request (by recKey); requests without one are left out.
func (s *scenario) records(reqs []request) map[string]taskRecord {
	recs := map[string]taskRecord{}
	for _, r := range reqs {
		if r.UserID == 0 || s.ctx.Err() != nil {
			continue
		}
		req, err := s.reg.Get(s.ctx, r.UserID, r.RequestID)
		if err != nil {
			if !errors.Is(err, cancel.ErrNotFound) {
				fmt.Fprintf(s.log, "scenario: record of %s: %v\n", r.RequestID, err)
			}
			continue
		}
		recs[recKey(r.UserID, r.RequestID)] = taskRecord{Queue: req.Queue, State: string(req.State),
			Created: req.Created, Started: req.Started, Finished: req.Finished}
	}
	return recs
}

// heavyBurst runs the phases of heavy-burst-small-stream.
func (s *scenario) heavyBurst() (*heavyBurstReport, error) {
	cfg := s.cfg
	rep := &heavyBurstReport{Heavy: infoOf(cfg.Heavy), Small: infoOf(cfg.Small), HeavyN: cfg.HeavyN, Phases: cfg.Phases}
	heavyUser, err := s.user(cfg.Heavy)
	if err != nil {
		return rep, fmt.Errorf("setup: %w", err)
	}
	smallUser, err := s.user(cfg.Small)
	if err != nil {
		return rep, fmt.Errorf("setup: %w", err)
	}
	fmt.Fprintf(s.log, "scenario %s: heavy %s (estimated %s, %s) by user %d ×%d; small %s (estimated %s, %s) by user %d\n",
		cfg.Scenario, cfg.Heavy, cfg.Heavy.estimate(), cfg.Heavy.class(), heavyUser.ID, cfg.HeavyN,
		cfg.Small, cfg.Small.estimate(), cfg.Small.class(), smallUser.ID)
	heavy := func(group string) func() *plan { return s.planner(group, []*account{heavyUser}, cfg.Heavy) }
	small := func(group string) func() *plan { return s.planner(group, []*account{smallUser}, cfg.Small) }

	s.loop(groupWarmup, warmupRequests, nil, small(groupWarmup)).wait()
	for i, phase := range cfg.Phases {
		if i > 0 {
			s.settle()
		}
		if s.ctx.Err() != nil {
			break
		}
		fmt.Fprintf(s.log, "phase %s\n", phase)
		switch phase {
		case phaseIdle:
			reqs := s.loop(groupSmallIdle, cfg.SmallN, nil, small(groupSmallIdle)).wait()
			sum := summarize(reqs, s.records(reqs))
			rep.Idle = &sum
		case phaseBurst:
			hg := s.burst(groupHeavyBurst, cfg.HeavyN, heavy(groupHeavyBurst))
			s.waitQueued(hg, cfg.HeavyN)
			sg := s.loop(groupSmallBurst, 0, hg.done, small(groupSmallBurst))
			heavyReqs := hg.wait()
			smallReqs := sg.wait()
			// the loop's last request may leave after the burst's end: it is not "during"
			during := sentBefore(smallReqs, ended(heavyReqs))
			sum, tp := summarize(during, s.records(during)), throughputOf(heavyReqs, s.records(heavyReqs))
			rep.During, rep.Burst = &sum, &tp
		case phaseHeavy:
			reqs := s.burst(groupHeavyOnly, cfg.HeavyN, heavy(groupHeavyOnly)).wait()
			tp := throughputOf(reqs, s.records(reqs))
			rep.HeavyOnly = &tp
		}
	}
	if rep.Idle != nil && rep.During != nil {
		bound, met := smallTarget(*rep.Idle, *rep.During)
		rep.SmallBoundMs, rep.SmallTargetMet = &bound, &met
	}
	return rep, nil
}

// fairness runs the fairness trials.
func (s *scenario) fairness() (*fairnessReport, error) {
	cfg := s.cfg
	first, more := cfg.Large.queues()
	p := drawFirst(jobs.QueueWeights[first], jobs.QueueWeights[more])
	rep := &fairnessReport{Large: infoOf(cfg.Large), BacklogUsers: cfg.BacklogUsers, BacklogN: cfg.BacklogN,
		LoneUsers: cfg.LoneUsers, KeepBacklog: cfg.KeepBacklog, Lane: jobs.Lane,
		FirstWeight: jobs.QueueWeights[first], MoreWeight: jobs.QueueWeights[more], DrawFirst: p, BoundQuantile: boundQuantile}
	fmt.Fprintf(s.log, "scenario %s: %s (estimated %s, %s: queues %s, %s), %d user(s) × %d, then %d lone, %d trial(s)\n",
		cfg.Scenario, cfg.Large, cfg.Large.estimate(), cfg.Large.class(), first, more,
		cfg.BacklogUsers, cfg.BacklogN, cfg.LoneUsers, cfg.Trials)
	var err error
	for trial := 1; trial <= cfg.Trials && s.ctx.Err() == nil; trial++ {
		if trial > 1 {
			s.settle()
		}
		var t fairTrial
		if t, err = s.fairTrial(trial, first, more, p); err != nil {
			break
		}
		rep.Trials = append(rep.Trials, t)
		for _, l := range t.Lone {
			fmt.Fprintf(s.log, "trial %d: lone %s %s in %.0f ms; %d tasks served ahead (%d from %s; bound %d), %d backlog tasks completed before it\n",
				trial, l.RequestID, l.Outcome, l.LatencyMs, l.ServedAhead, l.MoreAhead, more, l.BoundAhead, l.BacklogDoneBefore)
		}
	}
	rep.Summary = fairSummaryOf(rep.Trials, cfg.BacklogUsers*jobs.Lane+cfg.LoneUsers-1, p)
	return rep, err
}

func (s *scenario) fairTrial(trial int, first, more string, p float64) (fairTrial, error) {
	cfg := s.cfg
	backlogUsers, err := s.users(cfg.BacklogUsers, cfg.Large)
	if err != nil {
		return fairTrial{}, err
	}
	loneUsers, err := s.users(cfg.LoneUsers, cfg.Large)
	if err != nil {
		return fairTrial{}, err
	}
	total := cfg.BacklogUsers * cfg.BacklogN
	fmt.Fprintf(s.log, "trial %d: %d backlog upsizes at once\n", trial, total)
	bg := s.burst(groupBacklog, total, s.planner(groupBacklog, backlogUsers, cfg.Large))
	s.waitQueued(bg, total)
	lone := s.burst(groupLone, cfg.LoneUsers, s.planner(groupLone, loneUsers, cfg.Large)).wait()
	canceled := map[*plan]string{}
	if !cfg.KeepBacklog {
		canceled = s.cancelOpen(bg)
	}
	backlogReqs := bg.wait()
	for p, ans := range canceled { // every request of the group has its outcome: nothing else reads its plan now
		p.Cancel, p.CancelAnswer = true, ans
	}
	all := append(append([]request(nil), backlogReqs...), lone...)
	return fairTrialOf(backlogReqs, lone, s.records(all), first, more, p), nil
}

// cancelOpen cancels the group's requests that have no outcome yet, 16 at a time, and returns the
// answer of each cancel sent.
func (s *scenario) cancelOpen(g *group) map[*plan]string {
	open := g.open()
	answers := make([]string, len(open))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i, p := range open {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			answers[i] = s.r.cancel(p)
		})
	}
	wg.Wait()
	out := map[*plan]string{}
	for i, p := range open {
		out[p] = answers[i]
	}
	fmt.Fprintf(s.log, "canceled the %d backlog requests still open: %s\n", len(open), counts(tallyAll(answers)))
	return out
}

func tallyAll(xs []string) map[string]int {
	m := map[string]int{}
	for _, x := range xs {
		tally(m, strings.TrimSpace(x))
	}
	return m
}
