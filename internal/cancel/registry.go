// Package cancel is the registry of upsize requests: one Redis hash per (user, request id) holding the
// request's state, and the only place where a request's outcome is decided.
//
// Every transition is one Lua script, so admission (credit reservation), start, completion, failure and
// cancel are atomic with respect to each other: a request id ends completed, canceled or failed exactly
// once, credits are refunded exactly when it does not complete, and whoever loses a race reads the
// winner's outcome. Outcomes are announced on a pub/sub channel that wakes the waiting API requests
// (Hub); cancels of running work reach the workers on another (Running).
package cancel

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"upsize/internal/store"
)

// State is where a request is in its life.
type State string

const (
	Queued    State = "queued"
	Running   State = "running"
	Completed State = "completed"
	Canceled  State = "canceled"
	Failed    State = "failed"
)

// Terminal reports whether the state is an outcome.
func (s State) Terminal() bool { return s == Completed || s == Canceled || s == Failed }

// Request is one user's upsize request.
type Request struct {
	UserID    int64
	ID        string
	State     State
	Tombstone bool   // canceled before it arrived: no upsize was ever admitted for it
	ImageID   int64  // source image
	Scale     string // "2x", "4x", "8x"
	Model     string
	Cost      int64
	Work      time.Duration // estimated worker time
	ResultID  int64         // id the result image gets when it completes
	Queue     string
	TaskID    string
	Callback  string // completion callback URL, or ""
	ErrCode   int    // failed only
	ErrData   string // failed only
	Attempts  int
	Created   time.Time
	Started   time.Time
	Finished  time.Time
}

// Registry reads and changes request states.
type Registry struct {
	rdb  redis.UniversalClient
	keys store.Keys
	set  Settings
}

// Settings bound what the registry keeps.
type Settings struct {
	// TTL (REQUEST_TTL) is how long a request's outcome and a cancel tombstone stay readable. A queued or
	// running request never expires.
	TTL time.Duration
	// MaxOpen (MAX_QUEUED_PER_USER) is how many queued or running requests one user may have; 0: no limit.
	MaxOpen int64
	// MaxTombstones (MAX_TOMBSTONES_PER_USER) bounds one user's tombstones: past it the oldest go.
	MaxTombstones int64
	// WaitReplicas (REDIS_WAIT_REPLICAS): every script that moves credits or decides an outcome is
	// followed by WAIT for this many replicas, within WaitTimeout (REDIS_WAIT_TIMEOUT), before its result is
	// acted on; 0: no wait. See replicated.
	WaitReplicas int
	WaitTimeout  time.Duration
}

// DefaultWaitTimeout is WaitTimeout when WaitReplicas is set and WaitTimeout is not.
const DefaultWaitTimeout = time.Second

// DefaultMaxTombstones keeps ample room for the cancel-before-upsize race (seconds) while a client
// that cancels made-up ids at full speed holds at most this many keys (about 200 bytes each).
const DefaultMaxTombstones = 1000

// NewRegistry makes a registry; zero MaxTombstones takes DefaultMaxTombstones.
func NewRegistry(rdb redis.UniversalClient, keys store.Keys, s Settings) *Registry {
	if s.MaxTombstones <= 0 {
		s.MaxTombstones = DefaultMaxTombstones
	}
	if s.WaitReplicas > 0 && s.WaitTimeout <= 0 {
		s.WaitTimeout = DefaultWaitTimeout // WAIT 0 would block for ever
	}
	return &Registry{rdb: rdb, keys: keys, set: s}
}

// signal is the pub/sub message naming a request: the user id has no ':', so the first one splits.
func signal(userID int64, requestID string) string {
	return strconv.FormatInt(userID, 10) + ":" + requestID
}

func nowMS() string { return strconv.FormatInt(time.Now().UnixMilli(), 10) }

// ErrNotFound: no request with that id for that user.
var ErrNotFound = errors.New("cancel: no such request")

// ErrNotReplicated: WaitReplicas replicas did not acknowledge within WaitTimeout. The write may have
// been applied on the master and may still survive, or be lost in a failover: the caller must not act
// on it, and may repeat the call (every script is idempotent).
var ErrNotReplicated = errors.New("cancel: not acknowledged by enough Redis replicas")

// Get reads a request. An outcome (a terminal state) is what callers tell clients (201, 409, GET
// /api/requests), and it may have been decided a moment ago by another process whose own WAIT has not
// returned yet: with WaitReplicas set, Get returns an outcome only once replicas have it (durable), else
// an error (the API then re-reads it or answers 503). Other states need no wait.
func (r *Registry) Get(ctx context.Context, userID int64, requestID string) (Request, error) {
	m, err := r.rdb.HGetAll(ctx, r.keys.Request(userID, requestID)).Result()
	if err != nil {
		return Request{}, err
	}
	if len(m) == 0 {
		return Request{}, ErrNotFound
	}
	req := fromHash(userID, requestID, m)
	if err := r.durable(ctx, req.State); err != nil {
		return Request{}, err
	}
	return req, nil
}

// durable returns once replicas have everything the master had done, when st (just read) is an outcome
// and WaitReplicas is set: an outcome is acted on (answered, or a task skipped) only once a failover
// cannot lose it.
func (r *Registry) durable(ctx context.Context, st State) error {
	if !st.Terminal() || r.set.WaitReplicas <= 0 {
		return nil
	}
	_, err := r.replicated(ctx, nil)
	return err
}

// run runs one of the scripts that move credits or decide an outcome (admit, complete, fail, lost,
// cancel). With WaitReplicas set, its answer is returned only once that many replicas have everything
// it read and wrote (replicated); otherwise its error says why not, and the caller treats it as it
// treats any Redis error: the API answers 503 or 202 and tells no outcome, the worker retries
// (jobs.record). Such an error may come after the script was applied on the master; repeating the call
// is safe, because every script is idempotent: a second admit finds the request ("exists"), a second
// complete/fail/cancel finds the outcome already decided and returns it, a second lost finds the request
// (-1). No client is told an outcome that a failover could still lose.
func (r *Registry) run(ctx context.Context, s *redis.Script, keys []string, args ...any) *redis.Cmd {
	if r.set.WaitReplicas <= 0 {
		return s.Run(ctx, r.rdb, keys, args...)
	}
	cmd, err := r.replicated(ctx, func(p redis.Pipeliner) *redis.Cmd { return s.EvalSha(ctx, p, keys, args...) })
	if cmd.Err() != nil && redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
		// Not in this master's script cache (a new master after a failover, a restart): send the body.
		cmd, err = r.replicated(ctx, func(p redis.Pipeliner) *redis.Cmd { return s.Eval(ctx, p, keys, args...) })
	}
	if err != nil && cmd.Err() == nil {
		cmd.SetErr(err)
	}
	return cmd
}

// replicated sends, on one connection (a pipeline): the script call that script adds (none for durable),
// a PUBLISH on a channel nobody listens to, and WAIT WaitReplicas WaitTimeout. WAIT is documented to
// cover "the previous write commands" of its connection, so the PUBLISH (the cheapest write Redis
// replicates) makes it cover everything the master had done by then: the script's own writes and, when
// the script wrote nothing because the outcome was already decided (a cancel after a cancel, an admit of
// a taken id, a complete that lost the race) or for Get, the writes of whoever decided it. (Redis 7.0
// happens to stamp a connection with the master's offset after any command; newer servers only after a
// write.) Fewer replicas than asked within WaitTimeout is ErrNotReplicated.
func (r *Registry) replicated(ctx context.Context, script func(redis.Pipeliner) *redis.Cmd) (*redis.Cmd, error) {
	pipe := r.rdb.Pipeline()
	var cmd *redis.Cmd
	if script != nil {
		cmd = script(pipe)
	}
	pipe.Publish(ctx, r.keys.Prefix+"fence", "")
	wait := pipe.Do(ctx, "WAIT", r.set.WaitReplicas, r.set.WaitTimeout.Milliseconds())
	if _, err := pipe.Exec(ctx); err != nil {
		return cmd, err
	}
	if n, _ := wait.Int64(); n < int64(r.set.WaitReplicas) {
		return cmd, fmt.Errorf("%w: %d of %d within %s", ErrNotReplicated, n, r.set.WaitReplicas, r.set.WaitTimeout)
	}
	return cmd, nil
}

func fromHash(userID int64, requestID string, m map[string]string) Request {
	i64 := func(k string) int64 { n, _ := strconv.ParseInt(m[k], 10, 64); return n }
	ms := func(k string) time.Time {
		if n := i64(k); n > 0 {
			return time.UnixMilli(n)
		}
		return time.Time{}
	}
	return Request{
		UserID: userID, ID: requestID, State: State(m["state"]), Tombstone: m["tombstone"] == "1",
		ImageID: i64("image"), Scale: m["scale"], Model: m["model"], Cost: i64("cost"), Work: time.Duration(i64("work")) * time.Millisecond, ResultID: i64("result"),
		Queue: m["queue"], TaskID: m["task"], Callback: m["callback"], ErrCode: int(i64("code")), ErrData: m["data"], Attempts: int(i64("attempts")),
		Created: ms("created"), Started: ms("started"), Finished: ms("finished"),
	}
}

// hashResult turns a script's flat HGETALL reply into a map.
func hashResult(v any) map[string]string {
	arr, _ := v.([]any)
	m := make(map[string]string, len(arr)/2)
	for i := 0; i+1 < len(arr); i += 2 {
		k, _ := arr[i].(string)
		val, _ := arr[i+1].(string)
		m[k] = val
	}
	return m
}

// Admission is what an upsize that passed every rule asks to reserve.
type Admission struct {
	UserID    int64
	RequestID string
	ImageID   int64
	Scale     string
	Model     string
	Cost      int64
	Work      time.Duration // estimated worker time (policy.WorkModel)
	// Queue is the request's queue; with QueueMore set, a user who already has Lane requests in either
	// goes to QueueMore instead (the admission decides, atomically, and Request.Queue says which).
	Queue     string
	QueueMore string
	Lane      int
	TaskID    string
	// CallbackURL, when set, is POSTed the request's final state when it ends (package callback).
	CallbackURL string
}

// AdmitResult says what Admit did.
type AdmitResult struct {
	Admitted bool
	Request  Request // the new request, or the one that already had this id
	Exists   bool    // the id was taken meanwhile (by a concurrent upsize or a cancel): apply rule 3 to Request
	TooMany  bool    // the user has MaxOpen requests queued or running (rule 13)
	NoCredit bool
}

// Admit is rules 13 (the user's open requests) and 14: reserve the cost and record the request as
// queued, atomically.
func (r *Registry) Admit(ctx context.Context, a Admission) (AdmitResult, error) {
	k := r.keys
	v, err := r.run(ctx, admitScript,
		[]string{k.Request(a.UserID, a.RequestID), k.User(a.UserID), k.ImageSeq(), k.Unenqueued(), k.Open(a.UserID), k.Work()},
		a.Cost, r.set.MaxOpen, a.ImageID, a.Scale, a.Model, a.Queue, a.TaskID, nowMS(), signal(a.UserID, a.RequestID),
		a.RequestID, max(a.Work.Milliseconds(), 1), a.QueueMore, a.Lane, a.CallbackURL).Slice()
	if err != nil {
		return AdmitResult{}, err
	}
	verdict, _ := v[0].(string)
	req := fromHash(a.UserID, a.RequestID, hashResult(v[1]))
	switch verdict {
	case "ok":
		return AdmitResult{Admitted: true, Request: req}, nil
	case "exists":
		return AdmitResult{Exists: true, Request: req}, nil
	case "toomany":
		return AdmitResult{TooMany: true}, nil
	case "nocredit":
		return AdmitResult{NoCredit: true}, nil
	}
	return AdmitResult{}, fmt.Errorf("cancel: admit answered %q", verdict)
}

// OpenCount is how many requests of the user are queued or running.
func (r *Registry) OpenCount(ctx context.Context, userID int64) (int64, error) {
	return r.rdb.HLen(ctx, r.keys.Open(userID)).Result()
}

// MaxOpen is the configured bound of OpenCount (0: none).
func (r *Registry) MaxOpen() int64 { return r.set.MaxOpen }

// Enqueued records that the request's task is on the queue: the sweeper no longer needs to look at it.
func (r *Registry) Enqueued(ctx context.Context, userID int64, requestID string) error {
	return r.rdb.ZRem(ctx, r.keys.Unenqueued(), signal(userID, requestID)).Err()
}

// Unenqueued lists up to limit requests admitted before `before` whose enqueue was never confirmed.
func (r *Registry) Unenqueued(ctx context.Context, before time.Time, limit int64) ([]Request, error) {
	members, err := r.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{
		Key: r.keys.Unenqueued(), ByScore: true, Start: "-inf", Stop: strconv.FormatInt(before.UnixMilli(), 10), Count: limit,
	}).Result()
	if err != nil {
		return nil, err
	}
	out := make([]Request, 0, len(members))
	for _, m := range members {
		uid, rid, ok := parseSignal(m)
		if !ok {
			r.rdb.ZRem(ctx, r.keys.Unenqueued(), m)
			continue
		}
		req, err := r.Get(ctx, uid, rid)
		if errors.Is(err, ErrNotFound) {
			req = Request{UserID: uid, ID: rid} // lost: State "" tells the sweeper to drop it
		} else if err != nil {
			return nil, err
		}
		out = append(out, req)
	}
	return out, nil
}

// Start marks the request running. run is false when it must not run: canceled or already finished.
// ErrNotFound: the request's state is gone (see Lost).
func (r *Registry) Start(ctx context.Context, userID int64, requestID string) (req Request, run bool, err error) {
	v, err := startScript.Run(ctx, r.rdb, []string{r.keys.Request(userID, requestID)}, nowMS(), r.keys.Events(), signal(userID, requestID)).Result()
	if err != nil {
		return Request{}, false, err
	}
	m := hashResult(v)
	if len(m) == 0 {
		return Request{}, false, ErrNotFound
	}
	req = fromHash(userID, requestID, m)
	// A task skipped for an outcome that a failover then lost would leave its request without one.
	if err := r.durable(ctx, req.State); err != nil {
		return Request{}, false, err
	}
	return req, req.State == Running, nil
}

// Complete is the worker's side of the race with cancel. It returns Completed when the result image is
// now visible, or the state that won (Canceled, Failed): the caller must then delete the result's bytes.
func (r *Registry) Complete(ctx context.Context, req Request, img store.Image) (State, error) {
	k := r.keys
	args := append([]any{k.Events(), signal(req.UserID, req.ID), nowMS(), r.set.TTL.Milliseconds(), req.ID}, img.Fields()...)
	st, err := r.run(ctx, completeScript,
		[]string{k.Request(req.UserID, req.ID), k.Image(img.ID), k.Open(req.UserID), k.Work(), k.WorkDone(), k.Callbacks()}, args...).Text()
	return State(st), err
}

// Fail ends the request with an error envelope (code, data) and refunds it. It returns Failed, or the
// state that had already won.
func (r *Registry) Fail(ctx context.Context, userID int64, requestID string, code int, data string) (State, error) {
	k := r.keys
	st, err := r.run(ctx, failScript, []string{k.Request(userID, requestID), k.User(userID), k.Open(userID), k.Work(), k.Callbacks()},
		k.Events(), signal(userID, requestID), nowMS(), code, data, r.set.TTL.Milliseconds(), requestID).Text()
	return State(st), err
}

// Lost settles a request whose state is gone while its task still runs: the reservation it held is
// refunded and it is recorded as failed (code, data). It returns the refunded cost; exists is true when
// the request turned out to exist after all (nothing was done).
func (r *Registry) Lost(ctx context.Context, userID int64, requestID string, code int, data string) (refunded int64, exists bool, err error) {
	k := r.keys
	n, err := r.run(ctx, lostScript, []string{k.Request(userID, requestID), k.User(userID), k.Open(userID), k.Work()},
		k.Events(), signal(userID, requestID), nowMS(), code, data, r.set.TTL.Milliseconds(), requestID).Int64()
	if err != nil {
		return 0, false, err
	}
	if n < 0 {
		return 0, true, nil
	}
	return n, false, nil
}

// CancelResult says what Cancel found and did.
type CancelResult struct {
	State   State   // the request's state now: Canceled, or Completed/Failed when cancel came too late
	Was     State   // the state before: "" for an id not seen yet (a tombstone was left)
	Request Request // the request as it is now
}

// Cancel cancels the user's request id: a queued or running request is canceled and refunded (the
// workers are told), an unknown id gets a tombstone, and a finished request is left as it is.
func (r *Registry) Cancel(ctx context.Context, userID int64, requestID string) (CancelResult, error) {
	k := r.keys
	v, err := r.run(ctx, cancelScript,
		[]string{k.Request(userID, requestID), k.User(userID), k.Open(userID), k.Tombstones(userID), k.Work(), k.Callbacks()},
		k.Events(), k.Cancels(), signal(userID, requestID), nowMS(), r.set.TTL.Milliseconds(), requestID,
		r.set.MaxTombstones, k.Request(userID, "")).Slice()
	if err != nil {
		return CancelResult{}, err
	}
	now, _ := v[0].(string)
	was, _ := v[1].(string)
	if was == "none" {
		was = ""
	}
	return CancelResult{State: State(now), Was: State(was), Request: fromHash(userID, requestID, hashResult(v[2]))}, nil
}

// DueCallbacks lists up to limit requests whose completion callback is due, oldest first.
func (r *Registry) DueCallbacks(ctx context.Context, limit int64) ([]Request, error) {
	members, err := r.rdb.ZRange(ctx, r.keys.Callbacks(), 0, limit-1).Result()
	if err != nil {
		return nil, err
	}
	out := make([]Request, 0, len(members))
	for _, m := range members {
		uid, rid, ok := parseSignal(m)
		if !ok {
			r.rdb.ZRem(ctx, r.keys.Callbacks(), m)
			continue
		}
		out = append(out, Request{UserID: uid, ID: rid})
	}
	return out, nil
}

// CallbackQueued records that a due callback's delivery task exists.
func (r *Registry) CallbackQueued(ctx context.Context, userID int64, requestID string) error {
	return r.rdb.ZRem(ctx, r.keys.Callbacks(), signal(userID, requestID)).Err()
}
