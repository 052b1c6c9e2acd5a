// Package config reads the service's settings from environment variables. Every setting has a default
// that works on one machine; SPEC.md names the shared ones.
package config

import (
	"fmt"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Config is the settings of the API and the worker.
type Config struct {
	RedisURL      string
	RedisPoolSize int // connections per process; 0 lets go-redis choose (10 per CPU)
	// RedisWaitReplicas: after every write that moves credits or decides an outcome, wait until this many
	// replicas have it (Redis WAIT) before acting on it or answering; 0 does not wait (one Redis, or a
	// loss window accepted). RedisWaitTimeout bounds that wait: past it the write counts as failed.
	RedisWaitReplicas int
	RedisWaitTimeout  time.Duration
	HTTPAddr          string
	AdminToken        string
	// BlobURL is where image bytes live: file:///abs, file://./rel, or an object store (s3://bucket?…).
	// BLOB_DIR=path is the older spelling of file://path. BlobDir is the directory of a file:// URL ("" for
	// an object store).
	BlobURL string
	BlobDir string
	// BlobRedirect > 0: GET /api/images/{id}/file answers 307 to a presigned URL of the object store valid
	// that long, instead of streaming the bytes through the API. Off by default.
	BlobRedirect time.Duration

	WorkerConcurrency  int
	WorkerPollInterval time.Duration // how often an idle worker asks Redis for a task
	VipsConcurrency    int           // threads one libvips evaluation may use
	ShutdownTimeout    time.Duration // worker: how long in-flight tasks may finish on SIGTERM
	TaskRetryDelay     time.Duration // worker: first retry of a task that failed for a passing reason; doubles

	UpsizeWaitTimeout time.Duration
	MaxInputPixels    int64
	MaxOutputPixels   int64
	QueueMaxBacklog   int64
	// QueueMaxBacklogWork bounds the backlog in estimated work-seconds (QUEUE_MAX_BACKLOG_SECONDS; 0: none).
	QueueMaxBacklogWork time.Duration
	MaxUploadBytes      int64
	RequestTTL          time.Duration
	// MaxQueuedPerUser bounds one user's queued + running requests (rule 13); MaxTombstonesPerUser bounds
	// the cancel tombstones one user can leave.
	MaxQueuedPerUser     int64
	MaxTombstonesPerUser int64

	// Bounds of what clients can make the API hold. BodyTimeout: a request body must arrive within it
	// (a trickled body is cut off). UploadMemory: bytes of upload bodies held at once; ValidateMemory:
	// estimated decode memory of uploads being validated at once; ValidateTimeout: one validation's time.
	// MaxConnections: open client connections. Together they bound the API's memory (README).
	BodyTimeout     time.Duration
	UploadMemory    int64
	ValidateMemory  int64
	ValidateTimeout time.Duration
	UploadWait      time.Duration // how long an upload may wait for its share of memory before 503
	MaxConnections  int64

	// QueuesUIReadOnly keeps asynqmon (/admin/queues) to viewing (QUEUES_UI_READONLY, default true).
	QueuesUIReadOnly bool

	// EventHeartbeat is how often an idle event stream (GET /api/requests/{id}/events) gets a comment
	// line, so that proxies do not close it.
	EventHeartbeat time.Duration

	// CallbackAllowedHosts are the hosts (or host:port) completion callbacks may call (CALLBACK_ALLOWED_HOSTS,
	// comma-separated; empty: callbacks are refused). An IP literal listed here may be private or loopback;
	// a host name never reaches such an address.
	CallbackAllowedHosts []string

	// The janitor removes stale partial writes and image bytes without a record, older than JanitorGrace,
	// every JanitorInterval (one run at a time across replicas).
	JanitorInterval time.Duration
	JanitorGrace    time.Duration

	// DrainDelay is how long the API keeps serving after SIGTERM with readiness already 503, so that
	// load balancers stop sending first; DrainTimeout then bounds how long waiting requests may finish.
	DrainDelay   time.Duration
	DrainTimeout time.Duration
	LogLevel     string
}

// Load reads the configuration. role is "api" or "worker": they differ only in the default HTTPAddr.
func Load(role string, getenv func(string) string) (Config, error) {
	r := reader{getenv: getenv}
	addr := ":8080"
	if role == "worker" {
		addr = ":9090"
	}
	c := Config{
		RedisURL:             r.str("REDIS_URL", "redis://127.0.0.1:6379/0"),
		RedisPoolSize:        int(r.int("REDIS_POOL_SIZE", 0, 0)),
		RedisWaitReplicas:    int(r.int("REDIS_WAIT_REPLICAS", 0, 0)),
		RedisWaitTimeout:     r.dur("REDIS_WAIT_TIMEOUT", time.Second),
		HTTPAddr:             r.str("HTTP_ADDR", addr),
		AdminToken:           getenv("ADMIN_TOKEN"),
		BlobURL:              r.str("BLOB_URL", ""),
		BlobDir:              r.str("BLOB_DIR", ""),
		BlobRedirect:         r.dur("BLOB_REDIRECT_TTL", 0),
		WorkerConcurrency:    int(r.int("WORKER_CONCURRENCY", int64(runtime.NumCPU()), 1)),
		WorkerPollInterval:   r.dur("WORKER_POLL_INTERVAL", 4*time.Millisecond),
		VipsConcurrency:      int(r.int("VIPS_CONCURRENCY", 0, 0)),
		ShutdownTimeout:      r.dur("SHUTDOWN_TIMEOUT", 50*time.Second),
		TaskRetryDelay:       r.dur("TASK_RETRY_DELAY", time.Second),
		UpsizeWaitTimeout:    r.dur("UPSIZE_WAIT_TIMEOUT", 60*time.Second),
		MaxInputPixels:       r.int("MAX_INPUT_PIXELS", 50_000_000, 1),
		MaxOutputPixels:      r.int("MAX_OUTPUT_PIXELS", 100_000_000, 1),
		QueueMaxBacklog:      r.int("QUEUE_MAX_BACKLOG", 10_000, 0),
		QueueMaxBacklogWork:  time.Duration(r.int("QUEUE_MAX_BACKLOG_SECONDS", 7200, 0)) * time.Second,
		MaxUploadBytes:       r.int("MAX_UPLOAD_BYTES", 32<<20, 1),
		RequestTTL:           r.dur("REQUEST_TTL", 24*time.Hour),
		MaxQueuedPerUser:     r.int("MAX_QUEUED_PER_USER", 100, 0),
		MaxTombstonesPerUser: r.int("MAX_TOMBSTONES_PER_USER", 1000, 1),
		BodyTimeout:          r.dur("BODY_TIMEOUT", 60*time.Second),
		UploadMemory:         r.int("UPLOAD_MEMORY", 128<<20, 1),
		ValidateMemory:       r.int("VALIDATE_MEMORY", 512<<20, 1),
		ValidateTimeout:      r.dur("VALIDATE_TIMEOUT", 30*time.Second),
		MaxConnections:       r.int("MAX_CONNECTIONS", 8192, 1),
		UploadWait:           r.dur("UPLOAD_WAIT", 5*time.Second),
		JanitorInterval:      r.dur("JANITOR_INTERVAL", 10*time.Minute),
		JanitorGrace:         r.dur("JANITOR_GRACE", time.Hour),
		CallbackAllowedHosts: r.list("CALLBACK_ALLOWED_HOSTS"),
		EventHeartbeat:       r.dur("EVENT_HEARTBEAT", 15*time.Second),
		QueuesUIReadOnly:     r.bool("QUEUES_UI_READONLY", true),
		DrainDelay:           r.dur("DRAIN_DELAY", 0),
		DrainTimeout:         r.dur("DRAIN_TIMEOUT", 25*time.Second),
		LogLevel:             r.str("LOG_LEVEL", "info"),
	}
	if r.err != nil {
		return Config{}, r.err
	}
	if c.WorkerPollInterval < time.Millisecond {
		return Config{}, fmt.Errorf("WORKER_POLL_INTERVAL %s: must be at least 1ms", c.WorkerPollInterval)
	}
	// WAIT 0 would block for ever, and a wait past the Redis client's 3 s read timeout would be cut off.
	if c.RedisWaitReplicas > 0 && (c.RedisWaitTimeout < time.Millisecond || c.RedisWaitTimeout > 2*time.Second) {
		return Config{}, fmt.Errorf("REDIS_WAIT_TIMEOUT %s: must be between 1ms and 2s", c.RedisWaitTimeout)
	}
	if err := c.resolveBlobURL(); err != nil {
		return Config{}, err
	}
	if c.UploadMemory < c.MaxUploadBytes {
		return Config{}, fmt.Errorf("UPLOAD_MEMORY %d: must be at least MAX_UPLOAD_BYTES (%d)", c.UploadMemory, c.MaxUploadBytes)
	}
	if c.BodyTimeout < time.Second {
		return Config{}, fmt.Errorf("BODY_TIMEOUT %s: must be at least 1s", c.BodyTimeout)
	}
	if c.RequestTTL < time.Minute {
		return Config{}, fmt.Errorf("REQUEST_TTL %s: must be at least 1m", c.RequestTTL)
	}
	return c, nil
}

// resolveBlobURL settles BLOB_URL and its older spelling BLOB_DIR: one or the other, not both.
func (c *Config) resolveBlobURL() error {
	switch {
	case c.BlobURL != "" && c.BlobDir != "":
		return fmt.Errorf("BLOB_URL and BLOB_DIR both set: BLOB_DIR=path is the older spelling of BLOB_URL=file://path; keep one")
	case c.BlobURL == "" && c.BlobDir == "":
		c.BlobURL = "file://./var/blobs"
	case c.BlobURL == "":
		c.BlobURL = "file://" + c.BlobDir
	}
	u, err := url.Parse(c.BlobURL)
	if err != nil || u.Scheme == "" {
		return fmt.Errorf("BLOB_URL %q: want file:///path, file://./path or an object store URL such as s3://bucket?region=…", c.BlobURL)
	}
	c.BlobDir = ""
	if u.Scheme == "file" {
		c.BlobDir = u.Host + u.Path // file://./var/blobs has host "." and path "/var/blobs"
		if c.BlobDir == "" {
			return fmt.Errorf("BLOB_URL %q: no directory", c.BlobURL)
		}
	}
	return nil
}

// reader collects the first parse error so Load reads like a table.
type reader struct {
	getenv func(string) string
	err    error
}

func (r *reader) str(name, def string) string {
	if v := r.getenv(name); v != "" {
		return v
	}
	return def
}

func (r *reader) bool(name string, def bool) bool {
	v := r.getenv(name)
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		r.fail(fmt.Errorf("%s=%q: want true or false", name, v))
		return def
	}
	return b
}

// list reads a comma-separated list (spaces around items ignored, empty items dropped).
func (r *reader) list(name string) []string {
	var out []string
	for _, v := range strings.Split(r.getenv(name), ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, strings.ToLower(v))
		}
	}
	return out
}

func (r *reader) int(name string, def, min int64) int64 {
	v := r.getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < min {
		r.fail(fmt.Errorf("%s=%q: want an integer ≥ %d", name, v, min))
		return def
	}
	return n
}

func (r *reader) dur(name string, def time.Duration) time.Duration {
	v := r.getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		r.fail(fmt.Errorf("%s=%q: want a duration such as 60s", name, v))
		return def
	}
	return d
}

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

// Names lists every environment variable Load reads (for checks of deployment manifests).
func Names() []string {
	var names []string
	_, _ = Load("api", func(n string) string { names = append(names, n); return "" })
	return names
}
