package callback

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"upsize/internal/cancel"
	"upsize/internal/dto"
	"upsize/internal/obs"
	"upsize/internal/store"
)

const (
	// TypeCallback is the asynq task type of a delivery.
	TypeCallback = "upsize:callback"
	// Queue is the deliveries' own queue: only the callback server (NewServer) takes from it, and it takes
	// from no other, so receivers that fail or hang hold callback slots only, never upsize slots.
	Queue = "upsize_callbacks"
	// DefaultSlots is how many deliveries one worker runs at once. They wait on the network, not the CPU.
	DefaultSlots = 8
	// MaxRetry: with RetryDelay, 13 attempts over 4,230 s (70.5 min) of delays, plus the attempts' own
	// time (at most 10 s each): more than the SPEC's hour. Then asynq archives the task (kept there, and
	// re-runnable by an operator, for its archive's keep time).
	MaxRetry = 12
	// Retention keeps a delivered task's id taken for a while, so that a dispatcher that read a due
	// callback just before another one enqueued it (and the delivery was already made) gets a conflict
	// instead of making a second delivery.
	Retention = 5 * time.Minute
	// DefaultDispatchInterval is how often each worker moves due callbacks into tasks.
	DefaultDispatchInterval = 500 * time.Millisecond
)

// RetryDelay is the wait before retry n+1 (n: retries made so far): 10 s doubling, capped at 10 min.
// Retries 1-6 wait 10, 20, 40, 80, 160, 320 s (630 s); each later one 600 s. With MaxRetry 12 the delays
// sum to 630 + 6×600 = 4,230 s. (asynq keeps retry times in whole seconds: each wait may be up to 1 s
// shorter.)
func RetryDelay(n int) time.Duration {
	return min(10*time.Second<<min(max(n, 0), 6), 10*time.Minute)
}

// payload is a delivery task's body: references only. Created (ms) tells one life of a request id from
// a later one (an id is free again once its state expires after REQUEST_TTL).
type payload struct {
	UserID    int64  `json:"u"`
	RequestID string `json:"r"`
	Created   int64  `json:"c,omitempty"`
}

// DeliveryID is the X-Upsize-Delivery of a request's callback: the same on every attempt, and different
// for a later request that reuses the id.
func DeliveryID(req cancel.Request) string {
	return "u" + strconv.FormatInt(req.UserID, 10) + ":" + req.ID + ":" + strconv.FormatInt(req.Created.UnixMilli(), 10)
}

func (p payload) deliveryID() string {
	return "u" + strconv.FormatInt(p.UserID, 10) + ":" + p.RequestID + ":" + strconv.FormatInt(p.Created, 10)
}

// taskID is deterministic: enqueuing a request's callback twice makes one task.
func taskID(req cancel.Request) string { return "cb:" + DeliveryID(req) }

// Deliverer turns due callbacks into tasks (RunDispatcher) and delivers them (Handler, run by the server
// of NewServer).
type Deliverer struct {
	rdb    redis.UniversalClient
	reg    *cancel.Registry
	st     *store.Store
	allow  Allowlist
	log    *slog.Logger
	client *asynq.Client
	http   *http.Client
	m      *prometheus.CounterVec // may be nil
	o      options
}

type options struct {
	retryDelay     func(n int) time.Duration
	maxRetry       int
	attemptTimeout time.Duration
	dispatchEvery  time.Duration
	pollInterval   time.Duration
	slots          int
}

// Option changes a default (tests shorten times).
type Option func(*options)

// WithRetryDelay replaces RetryDelay.
func WithRetryDelay(f func(n int) time.Duration) Option { return func(o *options) { o.retryDelay = f } }

// WithMaxRetry replaces MaxRetry for the tasks this Deliverer enqueues.
func WithMaxRetry(n int) Option { return func(o *options) { o.maxRetry = n } }

// WithAttemptTimeout replaces DefaultAttemptTimeout.
func WithAttemptTimeout(d time.Duration) Option { return func(o *options) { o.attemptTimeout = d } }

// WithDispatchInterval replaces DefaultDispatchInterval.
func WithDispatchInterval(d time.Duration) Option { return func(o *options) { o.dispatchEvery = d } }

// WithSlots replaces DefaultSlots.
func WithSlots(n int) Option { return func(o *options) { o.slots = n } }

// WithPollInterval is how often an idle callback server asks Redis for a task (default 100 ms).
func WithPollInterval(d time.Duration) Option { return func(o *options) { o.pollInterval = d } }

// Metric results: one per attempt (delivered, failed_attempt), or per task that is not delivered at all
// (dropped: the request expired, no secret, URL no longer allowed…; gave_up: its last attempt failed).
const (
	resultDelivered = "delivered"
	resultFailed    = "failed_attempt"
	resultDropped   = "dropped"
	resultGaveUp    = "gave_up"
)

// New makes a Deliverer. metrics may be nil; otherwise upsize_callback_deliveries_total{result} is
// registered there (or the one already registered is shared).
func New(rdb redis.UniversalClient, reg *cancel.Registry, st *store.Store, allow Allowlist, log *slog.Logger,
	metrics prometheus.Registerer, opts ...Option) *Deliverer {
	o := options{
		retryDelay: RetryDelay, maxRetry: MaxRetry, attemptTimeout: DefaultAttemptTimeout,
		dispatchEvery: DefaultDispatchInterval, pollInterval: 100 * time.Millisecond, slots: DefaultSlots,
	}
	for _, f := range opts {
		f(&o)
	}
	d := &Deliverer{
		rdb: rdb, reg: reg, st: st, allow: allow, log: log, o: o,
		client: asynq.NewClientFromRedisClient(rdb), http: newHTTPClient(allow, o.attemptTimeout),
	}
	if metrics != nil {
		d.m = registerCounter(metrics)
	}
	return d
}

func registerCounter(r prometheus.Registerer) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "upsize", Name: "callback_deliveries_total",
		Help: "Completion callback deliveries by result: delivered and failed_attempt per attempt; dropped (not deliverable: request expired, no webhook secret, URL no longer allowed) and gave_up (retries exhausted) per callback.",
	}, []string{"result"})
	for _, v := range []string{resultDelivered, resultFailed, resultDropped, resultGaveUp} {
		c.WithLabelValues(v) // every series exists from the start
	}
	if err := r.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
				return existing
			}
		}
		return nil
	}
	return c
}

func (d *Deliverer) count(result string) {
	if d.m != nil {
		d.m.WithLabelValues(result).Inc()
	}
}

// NewServer is the asynq server of deliveries: Queue only, DefaultSlots slots, RetryDelay between tries.
// Start it with a mux (or Handler) that routes TypeCallback to Handler.
func (d *Deliverer) NewServer(shutdownTimeout time.Duration) *asynq.Server {
	return asynq.NewServerFromRedisClient(d.rdb, asynq.Config{
		Concurrency:       d.o.slots,
		Queues:            map[string]int{Queue: 1},
		TaskCheckInterval: d.o.pollInterval,
		// Retries are looked for at least twice per first delay (asynq's default is every 5 s).
		DelayedTaskCheckInterval: min(max(d.o.retryDelay(0)/2, 10*time.Millisecond), time.Second),
		RetryDelayFunc:           func(n int, _ error, _ *asynq.Task) time.Duration { return d.o.retryDelay(n) },
		ShutdownTimeout:          shutdownTimeout,
		Logger:                   obs.AsynqLogger{L: d.log},
		LogLevel:                 asynq.WarnLevel,
	})
}

// Handler delivers one callback task per run; an error makes asynq retry it (up to MaxRetry).
func (d *Deliverer) Handler() asynq.Handler { return asynq.HandlerFunc(d.processTask) }

// errDrop ends a task without retries: asynq archives it, so an operator can run it again once the
// cause is fixed (a webhook secret made, the host allowed again).
func errDrop(format string, args ...any) error {
	return fmt.Errorf("%w: %s", asynq.SkipRetry, fmt.Sprintf(format, args...))
}

func (d *Deliverer) processTask(ctx context.Context, t *asynq.Task) error {
	var p payload
	if err := json.Unmarshal(t.Payload(), &p); err != nil || p.UserID <= 0 || p.RequestID == "" {
		d.count(resultDropped)
		d.log.Error("callback task with a bad payload dropped", "payload", string(t.Payload()))
		return errDrop("bad payload")
	}
	retried, _ := asynq.GetRetryCount(ctx)
	maxRetry, _ := asynq.GetMaxRetry(ctx)
	log := d.log.With("request_id", p.RequestID, "user_id", p.UserID, "attempt", retried+1, "delivery", p.deliveryID())

	drop := func(level slog.Level, why string, archive bool) error {
		d.count(resultDropped)
		log.Log(ctx, level, "callback dropped", "status", 0, "result", resultDropped, "reason", why)
		if archive {
			return errDrop("%s", why)
		}
		return nil
	}
	req, err := d.reg.Get(ctx, p.UserID, p.RequestID)
	switch {
	case errors.Is(err, cancel.ErrNotFound):
		return drop(slog.LevelWarn, "request state expired", false)
	case err != nil:
		return d.failed(ctx, log, 0, fmt.Errorf("reading the request: %w", err), retried, maxRetry)
	case p.Created != 0 && req.Created.UnixMilli() != p.Created:
		return drop(slog.LevelWarn, "request id reused by a later request", false)
	case !req.State.Terminal() || req.Tombstone:
		return drop(slog.LevelWarn, "request has no outcome", false)
	case req.Callback == "":
		return drop(slog.LevelWarn, "request has no callback URL", false)
	}
	log = log.With("state", string(req.State))
	// Checked again at each attempt: CALLBACK_ALLOWED_HOSTS may have changed since admission.
	target, err := d.allow.target(req.Callback)
	if err != nil {
		return drop(slog.LevelError, err.Error(), true)
	}
	log = log.With("host", target.Host) // never the path or query: they may hold the receiver's tokens
	state, err := dto.FromRequest(ctx, d.st, req)
	if errors.Is(err, store.ErrNotFound) {
		return drop(slog.LevelError, "result image record missing", true)
	} else if err != nil {
		return d.failed(ctx, log, 0, fmt.Errorf("reading the result image: %w", err), retried, maxRetry)
	}
	body, err := json.Marshal(state) // what GET /api/requests/{requestId} answers (gin writes json.Marshal's bytes)
	if err != nil {
		return drop(slog.LevelError, "encoding the body: "+err.Error(), true)
	}
	secret, err := d.st.WebhookSecret(ctx, p.UserID)
	if err != nil {
		return d.failed(ctx, log, 0, fmt.Errorf("reading the webhook secret: %w", err), retried, maxRetry)
	}
	if secret == "" {
		return drop(slog.LevelError, "the user has no webhook secret", true)
	}

	start := time.Now()
	status, err := d.post(ctx, target, secret, p.deliveryID(), string(req.State), body)
	if err != nil {
		return d.failed(ctx, log.With("duration_ms", time.Since(start).Milliseconds()), status, err, retried, maxRetry)
	}
	d.count(resultDelivered)
	log.Info("callback delivered", "status", status, "result", resultDelivered, "duration_ms", time.Since(start).Milliseconds())
	return nil
}

// failed records a failed attempt; the error returned makes asynq retry it, or archive it after the last.
func (d *Deliverer) failed(ctx context.Context, log *slog.Logger, status int, err error, retried, maxRetry int) error {
	d.count(resultFailed)
	if retried >= maxRetry {
		d.count(resultGaveUp)
		log.Error("callback failed for the last time: given up", "status", status, "result", resultGaveUp, "err", err)
		return err
	}
	log.Log(ctx, slog.LevelWarn, "callback attempt failed", "status", status, "result", resultFailed, "err", err,
		"retry_in_ms", d.o.retryDelay(retried).Milliseconds())
	return err
}

// post makes one attempt; status is the receiver's (0 when none came). Only a 2xx is a delivery.
func (d *Deliverer) post(ctx context.Context, target *url.URL, secret, delivery, event string, body []byte) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, d.o.attemptTimeout)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, target.String(), bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	hr.Header.Set("Content-Type", "application/json")
	hr.Header.Set("User-Agent", UserAgent)
	hr.Header.Set(HeaderDelivery, delivery)
	hr.Header.Set(HeaderEvent, event)
	hr.Header.Set(HeaderSignature, Sign(secret, time.Now(), body))
	res, err := d.http.Do(hr)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // its message holds the whole URL, query included: logs and asynq keep errors
		}
		return 0, err
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, MaxResponseBody))
	if res.StatusCode < 200 || res.StatusCode > 299 {
		return res.StatusCode, fmt.Errorf("receiver answered %d", res.StatusCode)
	}
	return res.StatusCode, nil
}
