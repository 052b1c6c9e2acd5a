package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"upsize/internal/jobs"
)

// config is one run's settings, from the flags.
type config struct {
	Base           *url.URL
	AdminToken     string
	RedisURL       string
	Configure      bool
	Model          string
	Costs          map[string]int
	Credits        int64
	FreeShare      float64
	Sizes          mix
	Scales         mix
	Burst          bool
	N              int
	Rate           int
	Duration       time.Duration
	CancelShare    float64
	CancelMaxDelay time.Duration
	Timeout        time.Duration
	Follow         string // how a 202 is followed: followPoll or followSSE
	PollInterval   time.Duration
	FollowTimeout  time.Duration
	SampleInterval time.Duration
	DrainTimeout   time.Duration
	MaxDuration    time.Duration
	Seed           uint64
	Out            string
	// Scenario, when set, replaces the mix above (-burst, -rate, -sizes, -scales, -free-share,
	// -cancel-share) with one of the scenarios of scenario.go.
	Scenario     string
	Heavy        jobSpec  // heavy-burst-small-stream: the burst's upsize
	HeavyN       int      // … how many of it at once
	Small        jobSpec  // … the stream's upsize
	SmallN       int      // … how many the idle phase sends, one after another
	Phases       []string // … which phases run, in order (phasesAll)
	Large        jobSpec  // fairness: the upsize every user sends
	BacklogUsers int      // … users who each send BacklogN at once
	BacklogN     int
	LoneUsers    int  // … users who each send one once the backlog is queued
	Trials       int  // … how many times, with new users each time
	KeepBacklog  bool // … let the backlog run to the end instead of canceling it once the lone requests end
}

// The scenarios (docs/loadtest.md, "Scenarios").
const (
	scenarioHeavyBurst = "heavy-burst-small-stream"
	scenarioFairness   = "fairness"
)

// The phases of heavy-burst-small-stream: the small stream alone, the heavy burst with the stream, and
// the heavy burst alone.
const (
	phaseIdle  = "idle"
	phaseBurst = "burst"
	phaseHeavy = "heavy"
)

var phasesAll = []string{phaseIdle, phaseBurst, phaseHeavy}

func parseConfig(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: loadtest [flags]   (see docs/loadtest.md)")
		fs.PrintDefaults()
	}
	c := &config{}
	base := fs.String("base", "http://127.0.0.1:8080", "API base URL")
	allowRemote := fs.Bool("allow-remote", false, "allow a -base that is not a loopback address")
	// The environment is read after parsing, so that -h never prints a token or a Redis password.
	fs.StringVar(&c.AdminToken, "admin-token", "", "admin bearer token (default $ADMIN_TOKEN)")
	fs.StringVar(&c.RedisURL, "redis", "", "the service's Redis, to sample the queue backlog (default $REDIS_URL, else redis://127.0.0.1:6379/0)")
	fs.BoolVar(&c.Configure, "configure", false, "set the upsize model and credit costs before the run")
	fs.StringVar(&c.Model, "model", "lanczos3", "upsize model set by -configure")
	costs := fs.String("costs", "2x:1,4x:2,8x:4", "credit costs set by -configure")
	fs.Int64Var(&c.Credits, "credits", 1_000_000, "credits of each test user")
	fs.Float64Var(&c.FreeShare, "free-share", 0, "share of requests sent by a free-plan user (0: no free user)")
	sizes := fs.String("sizes", "256x256,512x512,1024x1024", "source image sizes with optional weights, e.g. 256x256:3,1024x1024:1")
	scales := fs.String("scales", "2x:70,4x:25,8x:5", "scales with weights")
	fs.BoolVar(&c.Burst, "burst", false, "send -n requests at once instead of -rate for -duration")
	fs.IntVar(&c.N, "n", 100, "requests of a -burst")
	fs.IntVar(&c.Rate, "rate", 10, "requests per second, without -burst")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "how long to send at -rate")
	fs.Float64Var(&c.CancelShare, "cancel-share", 0.1, "share of requests canceled after being sent")
	fs.DurationVar(&c.CancelMaxDelay, "cancel-max-delay", 2*time.Second, "a cancel is sent at a random moment up to this long after its request")
	fs.DurationVar(&c.Timeout, "timeout", 2*time.Minute, "HTTP timeout of one upsize (keep it above the service's UPSIZE_WAIT_TIMEOUT)")
	fs.StringVar(&c.Follow, "follow", followPoll, "how a 202 answer is followed: poll (GET /api/requests/{id} every -poll-interval) or sse (its event stream, polling as the fallback)")
	fs.DurationVar(&c.PollInterval, "poll-interval", 500*time.Millisecond, "how often a 202 answer is polled (with -follow sse: once fallen back to polling)")
	fs.DurationVar(&c.FollowTimeout, "follow-timeout", 10*time.Minute, "how long a 202 answer is followed before it counts as unresolved")
	fs.DurationVar(&c.SampleInterval, "sample-interval", time.Second, "how often the backlog is sampled")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 5*time.Minute, "how long after the last request to wait for the backlog to drain")
	fs.DurationVar(&c.MaxDuration, "max-duration", 30*time.Minute, "the whole run stops after this long, report included")
	fs.Uint64Var(&c.Seed, "seed", 0, "seed of the request mix (0: a random one; the report names it)")
	fs.StringVar(&c.Out, "out", "report.json", "JSON report; the Markdown report and the SVG chart go next to it (.md, .svg)")
	fs.StringVar(&c.Scenario, "scenario", "", "run a scenario instead of the mix: "+scenarioHeavyBurst+" or "+scenarioFairness+" (docs/loadtest.md)")
	heavy := fs.String("heavy", "1024x1024:png:8x:noise", "heavy-burst-small-stream: the burst's upsize, <width>x<height>:<png|jpeg>:<scale>[:noise|gradient]")
	fs.IntVar(&c.HeavyN, "heavy-n", 12, "heavy-burst-small-stream: heavy upsizes sent at once")
	small := fs.String("small", "64x64:jpeg:2x", "heavy-burst-small-stream: the small stream's upsize")
	fs.IntVar(&c.SmallN, "small-n", 40, "heavy-burst-small-stream: small upsizes of the idle phase, one after another (during the burst the stream runs until the burst ends)")
	phases := fs.String("phases", strings.Join(phasesAll, ","), "heavy-burst-small-stream: phases to run, in order: idle (the stream alone), burst (the burst with the stream), heavy (the burst alone)")
	large := fs.String("large", "1280x1280:png:4x", "fairness: the upsize every user sends (must be large: estimated over jobs.SmallWork)")
	fs.IntVar(&c.BacklogUsers, "backlog-users", 1, "fairness: users who each send -backlog-n upsizes at once")
	fs.IntVar(&c.BacklogN, "backlog-n", 100, "fairness: upsizes of each backlog user")
	fs.IntVar(&c.LoneUsers, "lone-users", 1, "fairness: users who each send one upsize once the backlog is queued")
	fs.IntVar(&c.Trials, "trials", 1, "fairness: trials, each with new users")
	fs.BoolVar(&c.KeepBacklog, "keep-backlog", false, "fairness: let the backlog run to its end (by default what is still open is canceled once the lone requests have their outcome)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	c.AdminToken = cmp.Or(c.AdminToken, os.Getenv("ADMIN_TOKEN"))
	c.RedisURL = cmp.Or(c.RedisURL, os.Getenv("REDIS_URL"), "redis://127.0.0.1:6379/0")
	if c.Seed == 0 {
		c.Seed = rand.Uint64()
	}
	var err error
	if c.Base, err = parseBase(*base, *allowRemote); err != nil {
		return nil, err
	}
	if c.Sizes, err = parseMix(*sizes, parseSize); err != nil {
		return nil, fmt.Errorf("-sizes: %w", err)
	}
	if c.Scales, err = parseMix(*scales, parseScale); err != nil {
		return nil, fmt.Errorf("-scales: %w", err)
	}
	if c.Costs, err = parseCosts(*costs); err != nil {
		return nil, fmt.Errorf("-costs: %w", err)
	}
	for _, f := range []struct {
		name string
		raw  string
		to   *jobSpec
	}{{"-heavy", *heavy, &c.Heavy}, {"-small", *small, &c.Small}, {"-large", *large, &c.Large}} {
		if *f.to, err = parseJobSpec(f.raw); err != nil {
			return nil, fmt.Errorf("%s: %w", f.name, err)
		}
	}
	if c.Phases, err = parsePhases(*phases); err != nil {
		return nil, fmt.Errorf("-phases: %w", err)
	}
	return c, c.check()
}

func (c *config) check() error {
	switch {
	case c.AdminToken == "":
		return errors.New("an admin token is needed (-admin-token or ADMIN_TOKEN)")
	case c.Burst && c.N < 1:
		return errors.New("-burst needs -n of at least 1")
	case !c.Burst && (c.Rate < 1 || c.Duration <= 0):
		return errors.New("-rate and -duration must be positive (or use -burst)")
	case c.FreeShare < 0 || c.FreeShare > 1 || c.CancelShare < 0 || c.CancelShare > 1:
		return errors.New("-free-share and -cancel-share lie between 0 and 1")
	case c.Follow != followPoll && c.Follow != followSSE:
		return fmt.Errorf("-follow %q is not %s or %s", c.Follow, followPoll, followSSE)
	case filepath.Ext(c.Out) != ".json":
		return errors.New("-out names the JSON report and ends in .json (the .md and .svg go next to it)")
	case c.CancelMaxDelay < 0 || c.Timeout <= 0 || c.PollInterval <= 0 || c.FollowTimeout <= 0 ||
		c.SampleInterval <= 0 || c.DrainTimeout < 0 || c.MaxDuration <= 0:
		return errors.New("durations must be positive")
	}
	return c.checkScenario()
}

// checkScenario refuses a scenario whose upsizes would not test what it is about: the classes come from
// the service's own work model (policy.DefaultWork) and threshold (jobs.SmallWork).
func (c *config) checkScenario() error {
	switch c.Scenario {
	case "":
		return nil
	case scenarioHeavyBurst:
		switch {
		case c.HeavyN < 1 || c.SmallN < 1:
			return errors.New("-heavy-n and -small-n must be at least 1")
		case c.Heavy.small():
			return fmt.Errorf("-heavy %s is estimated at %s, a small task (at most jobs.SmallWork, %s): it would not hold the general slots", c.Heavy, c.Heavy.estimate(), jobs.SmallWork)
		case !c.Small.small():
			return fmt.Errorf("-small %s is estimated at %s, a large task (over jobs.SmallWork, %s): it would not use the slot kept for small tasks", c.Small, c.Small.estimate(), jobs.SmallWork)
		}
		return nil
	case scenarioFairness:
		switch {
		case c.BacklogUsers < 1 || c.BacklogN < 1 || c.LoneUsers < 1 || c.Trials < 1:
			return errors.New("-backlog-users, -backlog-n, -lone-users and -trials must be at least 1")
		case c.Large.small():
			return fmt.Errorf("-large %s is estimated at %s, a small task (at most jobs.SmallWork, %s): small tasks have no lanes", c.Large, c.Large.estimate(), jobs.SmallWork)
		}
		return nil
	}
	return fmt.Errorf("-scenario %q is not %s or %s", c.Scenario, scenarioHeavyBurst, scenarioFairness)
}

// parsePhases reads "idle,burst,heavy" (any of them, each once, in the order given).
func parsePhases(s string) ([]string, error) {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		p = strings.TrimSpace(p)
		if !slices.Contains(phasesAll, p) {
			return nil, fmt.Errorf("%q is not one of %s", p, strings.Join(phasesAll, ", "))
		}
		if slices.Contains(out, p) {
			return nil, fmt.Errorf("%q given twice", p)
		}
		out = append(out, p)
	}
	return out, nil
}

// parseBase refuses a host that is not loopback unless allowRemote: a load test sent to a shared or
// production service by a typo costs real money and real users' time.
func parseBase(raw string, allowRemote bool) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("-base %q is not an http(s) URL", raw)
	}
	if !allowRemote && !isLoopback(u.Hostname()) {
		return nil, fmt.Errorf("-base %q is not a loopback address (127.0.0.0/8, ::1, localhost); pass -allow-remote to target it", raw)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	return u, nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// mix is a weighted choice between names.
type mix []choice

type choice struct {
	Name   string
	Weight int
}

// parseMix reads "a:3,b:1" ("a" alone weighs 1); check validates each name.
func parseMix(s string, check func(string) error) (mix, error) {
	var m mix
	total := 0
	for part := range strings.SplitSeq(s, ",") {
		name, weight, err := splitPair(part, 1)
		if err != nil {
			return nil, err
		}
		if err := check(name); err != nil {
			return nil, err
		}
		m = append(m, choice{name, weight})
		total += weight
	}
	if total == 0 {
		return nil, fmt.Errorf("%q has no positive weight", s)
	}
	return m, nil
}

func splitPair(part string, def int) (string, int, error) {
	name, num, hasNum := strings.Cut(strings.TrimSpace(part), ":")
	if name == "" {
		return "", 0, fmt.Errorf("empty name in %q", part)
	}
	if !hasNum {
		return name, def, nil
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 0 {
		return "", 0, fmt.Errorf("%q: %q is not a whole number ≥ 0", part, num)
	}
	return name, n, nil
}

// pick draws a name with probability weight/total.
func (m mix) pick(r *rand.Rand) string {
	total := 0
	for _, c := range m {
		total += c.Weight
	}
	n := r.IntN(total)
	for _, c := range m {
		if n < c.Weight {
			return c.Name
		}
		n -= c.Weight
	}
	panic("unreachable: n < total")
}

func parseSize(s string) error {
	_, _, err := dimensions(s)
	return err
}

// dimensions reads "<width>x<height>".
func dimensions(s string) (int, int, error) {
	ws, hs, ok := strings.Cut(s, "x")
	w, errW := strconv.Atoi(ws)
	h, errH := strconv.Atoi(hs)
	if !ok || errW != nil || errH != nil || w < 1 || h < 1 {
		return 0, 0, fmt.Errorf("%q is not <width>x<height>", s)
	}
	return w, h, nil
}

func parseScale(s string) error {
	if s != "2x" && s != "4x" && s != "8x" {
		return fmt.Errorf("scale %q is not 2x, 4x or 8x", s)
	}
	return nil
}

func parseCosts(s string) (map[string]int, error) {
	costs := map[string]int{}
	for part := range strings.SplitSeq(s, ",") {
		scale, cost, err := splitPair(part, -1)
		if err == nil && cost < 0 {
			err = fmt.Errorf("%q has no cost", part)
		}
		if err == nil {
			err = parseScale(scale)
		}
		if err != nil {
			return nil, err
		}
		costs[scale] = cost
	}
	return costs, nil
}
