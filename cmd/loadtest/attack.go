package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// plan is one upsize request, drawn before it is sent.
type plan struct {
	RequestID   string
	Group       string // a scenario's name for the request's role ("heavy-burst", "lone", …); "" in the mix
	Account     *account
	Source      source
	Scale       string
	Cancel      bool
	CancelDelay time.Duration
	// CancelAnswer is what the cancel got ("200 canceled", "409 request_already_completed", an error
	// or "not sent"); written by the cancel's goroutine, read once every cancel is over.
	CancelAnswer string
}

// planner draws the request mix: one generator behind a lock, so a seed gives the same plans in the
// same order whatever the workers' timing.
type planner struct {
	mu    sync.Mutex
	rng   *rand.Rand
	cfg   *config
	fleet fleet
	n     int
}

func newPlanner(cfg *config, fl fleet) *planner {
	return &planner{rng: rand.New(rand.NewPCG(cfg.Seed, 0)), cfg: cfg, fleet: fl}
}

func (p *planner) next() *plan {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	acct := p.fleet.Paid
	if p.fleet.Free != nil && p.rng.Float64() < p.cfg.FreeShare {
		acct = p.fleet.Free
	}
	sources := acct.Sources[p.cfg.Sizes.pick(p.rng)]
	pl := &plan{
		RequestID: "lt-" + strconv.Itoa(p.n), // the users are new every run, so ids only need to differ within it
		Account:   acct,
		Source:    sources[p.rng.IntN(len(sources))],
		Scale:     p.cfg.Scales.pick(p.rng),
	}
	if p.rng.Float64() < p.cfg.CancelShare {
		pl.Cancel = true
		pl.CancelDelay = time.Duration(p.rng.Int64N(int64(p.cfg.CancelMaxDelay) + 1))
	}
	return pl
}

func upsizeTarget(base string, p *plan) vegeta.Target {
	return vegeta.Target{
		Method: http.MethodPost,
		URL:    base + "/api/images/" + strconv.FormatInt(p.Source.ID, 10) + "/upsize",
		Body:   []byte(`{"scaleSize":"` + p.Scale + `"}`),
		Header: http.Header{
			"X-Api-Key":    {p.Account.Key},
			"X-Request-Id": {p.RequestID},
			"Content-Type": {"application/json"},
		},
	}
}

// tracker is the transport under vegeta's client. It sees each request as it really leaves, so it
// links vegeta's sequence number (vegeta's X-Vegeta-Seq header) to the plan, starts the plan's cancel
// clock, and binds the request to the run's context so that Ctrl-C aborts it in flight.
type tracker struct {
	ctx     context.Context
	next    http.RoundTripper
	timeout time.Duration
	onSend  func(*plan)

	mu    sync.Mutex
	drawn map[string]*plan // by request id: drawn by the targeter, not sent yet
	sent  map[uint64]*plan // by vegeta sequence number
}

func newTracker(ctx context.Context, timeout time.Duration, onSend func(*plan)) *tracker {
	return &tracker{ctx: ctx, next: newTransport(), timeout: timeout, onSend: onSend,
		drawn: map[string]*plan{}, sent: map[uint64]*plan{}}
}

func newTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 1024 // a burst opens many connections at once; keep them for the next requests
	return t
}

func (t *tracker) targeter(base string, next func() *plan) vegeta.Targeter {
	return func(tgt *vegeta.Target) error {
		pl := next()
		t.mu.Lock()
		t.drawn[pl.RequestID] = pl
		t.mu.Unlock()
		*tgt = upsizeTarget(base, pl)
		return nil
	}
}

func (t *tracker) RoundTrip(req *http.Request) (*http.Response, error) {
	rid := req.Header.Get("X-Request-Id")
	seq, seqErr := strconv.ParseUint(req.Header.Get("X-Vegeta-Seq"), 10, 64)
	t.mu.Lock()
	pl := t.drawn[rid]
	delete(t.drawn, rid)
	if pl != nil && seqErr == nil {
		t.sent[seq] = pl
	}
	t.mu.Unlock()
	if pl != nil {
		t.onSend(pl)
	}
	ctx, cancel := context.WithTimeout(t.ctx, t.timeout)
	resp, err := t.next.RoundTrip(req.WithContext(ctx))
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = cancelOnClose{resp.Body, cancel}
	return resp, nil
}

// cancelOnClose releases a request's context once vegeta has read the answer.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c cancelOnClose) Close() error {
	defer c.cancel()
	return c.ReadCloser.Close()
}

func (t *tracker) plan(seq uint64) *plan {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.sent[seq]
}

func (t *tracker) plans() []*plan {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*plan, 0, len(t.sent))
	for _, p := range t.sent {
		out = append(out, p)
	}
	return out
}

// runner is one run's moving parts: it sends waves of upsizes and gives each request an outcome.
type runner struct {
	ctx   context.Context
	cfg   *config
	rec   *recorder
	api   *http.Client   // cancels and follow-ups, beside vegeta's client
	sse   *http.Client   // event streams (-follow sse): no overall timeout, a stream lasts as long as its request
	first firstAnswerLog // vegeta's view of every first answer, over all waves
	bg    sync.WaitGroup // cancels in flight
}

func newRunner(ctx context.Context, cfg *config, rec *recorder) *runner {
	streams := newTransport()
	streams.ResponseHeaderTimeout = 30 * time.Second
	return &runner{ctx: ctx, cfg: cfg, rec: rec, api: &http.Client{Transport: newTransport(), Timeout: 30 * time.Second},
		sse: &http.Client{Transport: streams}}
}

// wave is one vegeta attack of a run: where its requests come from, their pace, and how many vegeta
// workers send them.
type wave struct {
	name     string
	next     func() *plan
	pacer    vegeta.Pacer
	duration time.Duration // 0: until the pacer stops
	// workers at the start (0: vegeta's default) and at most (0: no bound). A burst has one per
	// request; a closed loop has one, at most.
	workers, maxWorkers uint64
	// ended, if set, sees each request of the wave with its outcome.
	ended func(request)
}

// attack sends the upsizes of the mix with vegeta and gives every one an outcome; it returns once all
// have one and every cancel is over. The metrics are vegeta's, of the first answers.
func attack(ctx context.Context, cfg *config, fl fleet, rec *recorder) (vegeta.Metrics, []*plan) {
	r := newRunner(ctx, cfg, rec)
	pacer, duration := pace(cfg)
	w := wave{name: "upsize", next: newPlanner(cfg, fl).next, pacer: pacer, duration: duration}
	if cfg.Burst {
		w.workers = uint64(cfg.N) // one worker per request: all leave at once
	}
	plans := r.send(w)
	r.bg.Wait()
	return r.first.close(), plans
}

// send runs a wave and returns once every request it sent has an outcome (its cancels may still be
// under way: r.bg).
func (r *runner) send(w wave) []*plan {
	tr := newTracker(r.ctx, r.cfg.Timeout, r.sent)
	opts := []func(*vegeta.Attacker){vegeta.Client(&http.Client{Transport: tr})}
	if w.workers > 0 {
		opts = append(opts, vegeta.Workers(w.workers))
	}
	if w.maxWorkers > 0 {
		opts = append(opts, vegeta.MaxWorkers(w.maxWorkers))
	}
	atk := vegeta.NewAttacker(opts...)
	defer context.AfterFunc(r.ctx, func() { atk.Stop() })()
	var follows sync.WaitGroup
	for res := range atk.Attack(tr.targeter(r.cfg.Base.String(), w.next), w.pacer, w.duration, w.name) {
		r.first.add(res)
		r.handle(tr, res, &follows, w.ended)
	}
	follows.Wait()
	return tr.plans()
}

// firstAnswerLog collects vegeta's metrics of the first answers; waves may run at once.
type firstAnswerLog struct {
	mu sync.Mutex
	m  vegeta.Metrics
}

func (f *firstAnswerLog) add(res *vegeta.Result) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m.Add(res)
}

func (f *firstAnswerLog) close() vegeta.Metrics {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m.Close()
	return f.m
}

// pace is -n at once with -burst, else -rate per second for -duration.
func pace(cfg *config) (vegeta.Pacer, time.Duration) {
	if cfg.Burst {
		return burstPacer{uint64(cfg.N)}, 0
	}
	return vegeta.ConstantPacer{Freq: cfg.Rate, Per: time.Second}, cfg.Duration
}

// burstPacer lets n requests go without spacing, then stops.
type burstPacer struct{ n uint64 }

func (b burstPacer) Pace(_ time.Duration, hits uint64) (time.Duration, bool) { return 0, hits >= b.n }
func (b burstPacer) Rate(time.Duration) float64                              { return math.Inf(1) }

// loopPacer paces a closed loop (a wave of one vegeta worker at most, so that each request leaves once
// the one before has its first answer): it stops after n requests (n > 0), or once stop is closed.
type loopPacer struct {
	n    uint64
	stop <-chan struct{}
}

func (l loopPacer) Pace(_ time.Duration, hits uint64) (time.Duration, bool) {
	return 0, (l.n > 0 && hits >= l.n) || isClosed(l.stop)
}
func (l loopPacer) Rate(time.Duration) float64 { return math.Inf(1) }

// sent runs as a request leaves.
func (r *runner) sent(p *plan) {
	r.rec.opened()
	if !p.Cancel {
		return
	}
	r.bg.Go(func() {
		t := time.NewTimer(p.CancelDelay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.ctx.Done(): // a stopped run does not wait out -cancel-max-delay
		}
		p.CancelAnswer = r.cancel(p)
	})
}

// cancel is POST /api/images/cancel with the request's id, as its user.
func (r *runner) cancel(p *plan) string {
	if r.ctx.Err() != nil {
		return "not sent"
	}
	hdr := http.Header{"X-Api-Key": {p.Account.Key}, "X-Request-Id": {p.RequestID}}
	code, body, err := send(r.ctx, r.api, http.MethodPost, r.cfg.Base.String()+"/api/images/cancel", hdr, nil)
	if err != nil {
		return "error: " + err.Error()
	}
	return strconv.Itoa(code) + " " + reason(body)
}

// handle records an upsize's first answer, or follows it (in follows) when it is a 202; ended, if set,
// sees the request with its outcome.
func (r *runner) handle(tr *tracker, res *vegeta.Result, follows *sync.WaitGroup, ended func(request)) {
	done := func(req request, wasOpen bool) {
		r.rec.add(req, wasOpen)
		if ended != nil {
			ended(req)
		}
	}
	p := tr.plan(res.Seq)
	if p == nil { // vegeta gave up before the request left: nothing was sent, nothing is open
		done(request{Sent: res.Timestamp, Latency: res.Latency, Outcome: transportError, Reason: res.Error}, false)
		return
	}
	req := request{
		RequestID: p.RequestID, Group: p.Group, UserID: p.Account.ID, Plan: p.Account.Plan, Size: p.Source.Size,
		Format: p.Source.Format, Scale: p.Scale, CancelPlanned: p.Cancel, Sent: res.Timestamp, Latency: res.Latency,
		FirstCode: int(res.Code),
	}
	req.Outcome, req.Reason = classify(res)
	if res.Code == 0 && r.ctx.Err() != nil {
		req.Outcome = interrupted
	}
	if req.Outcome != accepted {
		done(req, true)
		return
	}
	follows.Go(func() {
		f := r.follow(p, res.Timestamp.Add(res.Latency))
		req.Outcome, req.Reason, req.FollowedBy, req.Reconnects = f.Outcome, f.Reason, f.By, f.Reconnects
		req.FirstEvent, req.FinalEvent = f.FirstEvent, f.FinalEvent
		req.Latency = time.Since(req.Sent)
		done(req, true)
	})
}

// classify reads an upsize's first answer; accepted (202) is not final.
func classify(res *vegeta.Result) (outcome, string) {
	switch c := int(res.Code); {
	case c == 0:
		return transportError, res.Error
	case c == http.StatusCreated:
		return completed, ""
	case c == http.StatusAccepted:
		return accepted, ""
	case c == http.StatusConflict:
		return canceled, reason(res.Body)
	case c == http.StatusTooManyRequests:
		return queueFull, reason(res.Body)
	case c == http.StatusPaymentRequired:
		return noCredit, reason(res.Body)
	case c >= 400 && c < 500:
		return rejected, fmt.Sprintf("%d %s", c, reason(res.Body))
	case c >= 500:
		return serverError, fmt.Sprintf("%d %s", c, reason(res.Body))
	default:
		return unexpected, "HTTP " + strconv.Itoa(c)
	}
}

// recorder collects what the concurrent steps learn.
type recorder struct {
	mu       sync.Mutex
	requests []request
	open     int // sent, without an outcome yet
	lastSent time.Time
}

// opened and state read the clock under the lock, so that a sample either counts a request as open
// or is older than it: never a request sent before a sample but missing from it.
func (r *recorder) opened() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.open++
	r.lastSent = time.Now()
}

// add records an outcome; wasOpen says whether its request had been sent.
func (r *recorder) add(req request, wasOpen bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests = append(r.requests, req)
	if wasOpen {
		r.open--
	}
}

func (r *recorder) state() (now time.Time, open int, lastSent time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return time.Now(), r.open, r.lastSent
}

func (r *recorder) result() ([]request, time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]request(nil), r.requests...), r.lastSent
}
