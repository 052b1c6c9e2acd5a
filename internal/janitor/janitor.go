// Package janitor removes garbage from the blob store: unfinished writes that a crash left behind
// ("temporaries": a kill -9 leaves one per running task), and image bytes that have no image record
// ("orphans": a crash between writing the bytes and writing the record, or records lost by Redis).
// It runs in the workers, at start-up and then periodically, one run at a time across all replicas
// (a lock in Redis).
package janitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"upsize/internal/blob"
	"upsize/internal/metrics"
	"upsize/internal/store"
)

// Defaults of Config.
const (
	DefaultInterval       = 10 * time.Minute
	DefaultGrace          = time.Hour
	DefaultOrphanInterval = 6 * time.Hour
	DefaultBatchSize      = 500
	DefaultMaxRemovals    = 10_000
	DefaultLockTTL        = 30 * time.Second

	// MinGrace is the shortest grace period accepted: it must exceed a task's whole run (jobs.TaskTimeout,
	// 10 min) plus the recording of its outcome (20 s), and any clock skew with the shared filesystem.
	MinGrace = 15 * time.Minute
)

// Config tunes a Janitor; zero values take the defaults.
type Config struct {
	// Interval between two runs of this process; the first run is at once.
	Interval time.Duration
	// Grace: nothing written more recently is removed.
	Grace time.Duration
	// OrphanInterval: how often, across all replicas, the objects are walked for orphans; a walk stats
	// every object and looks up its record, so it is rarer than the cheap look at the temporaries.
	// Negative: never (e.g. while Redis is being restored from a backup).
	OrphanInterval time.Duration
	// BatchSize: image records looked up per round trip to Redis (pipelined EXISTS).
	BatchSize int
	// MaxRemovals bounds one run's removals; a run that reaches it leaves the rest to the next run.
	MaxRemovals int
	// LockTTL: how long the lock outlives a replica that died mid-run; it is renewed every third of it.
	LockTTL time.Duration
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.Interval, DefaultInterval)
	def(&c.Grace, DefaultGrace)
	def(&c.OrphanInterval, DefaultOrphanInterval)
	def(&c.LockTTL, DefaultLockTTL)
	if c.BatchSize <= 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.MaxRemovals <= 0 {
		c.MaxRemovals = DefaultMaxRemovals
	}
	return c
}

// Janitor sweeps one blob store against one Redis key space.
type Janitor struct {
	rdb     redis.UniversalClient
	keys    store.Keys
	blobs   blob.Walker
	cfg     Config
	log     *slog.Logger
	metrics *metrics.Janitor

	beforeRecheck func(key string) // tests: between the batch's look-up and the re-check
}

// New makes a janitor of blobs, whose image records live in rdb under keys. m may be nil.
func New(rdb redis.UniversalClient, keys store.Keys, blobs blob.Walker, cfg Config, log *slog.Logger, m *metrics.Janitor) (*Janitor, error) {
	cfg = cfg.withDefaults()
	if cfg.Grace < MinGrace {
		return nil, fmt.Errorf("janitor: grace period %s is shorter than %s", cfg.Grace, MinGrace)
	}
	if cfg.Interval < time.Second || cfg.LockTTL < 30*time.Millisecond {
		return nil, fmt.Errorf("janitor: interval %s or lock TTL %s too short", cfg.Interval, cfg.LockTTL)
	}
	return &Janitor{rdb: rdb, keys: keys, blobs: blobs, cfg: cfg, log: log, metrics: m}, nil
}

func (j *Janitor) lockKey() string  { return j.keys.Prefix + "janitor:lock" }
func (j *Janitor) sweptKey() string { return j.keys.Prefix + "janitor:orphans-swept" } // unix ms of the last full walk

// Report is what a run did.
type Report struct {
	Ran         bool // false: another replica held the lock
	Temps       int64
	TempBytes   int64
	Orphans     int64
	OrphanBytes int64
	OrphanSweep bool  // the objects were walked (every OrphanInterval)
	Checked     int64 // image objects past the grace period whose record was looked up
	Unknown     int64 // objects whose key is not an image's: kept
	Unissued    int64 // image objects with an id Redis never issued: kept
	Failed      int64 // removals that failed
	Capped      bool  // MaxRemovals reached: the rest is left to the next run

	unknownKey   string
	firstFailure error
}

// errFull stops a walk at MaxRemovals.
var errFull = errors.New("janitor: removal cap reached")

// Run runs the janitor now and then every Interval until ctx ends. A failed run is logged and counted;
// the next one tries again.
func (j *Janitor) Run(ctx context.Context) {
	t := time.NewTicker(j.cfg.Interval)
	defer t.Stop()
	for {
		j.RunOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// RunOnce runs the janitor once, unless another replica is running it, and logs and counts the result.
func (j *Janitor) RunOnce(ctx context.Context) (Report, error) {
	began := time.Now()
	rep, err := j.run(ctx)
	j.report(ctx, rep, err, time.Since(began))
	return rep, err
}

func (j *Janitor) run(ctx context.Context) (Report, error) {
	var rep Report
	l, err := acquire(ctx, j.rdb, j.lockKey(), j.cfg.LockTTL)
	if err != nil || l == nil {
		return rep, err
	}
	defer l.release()
	rep.Ran = true
	runCtx := l.hold(ctx)
	err = j.sweep(runCtx, &rep)
	if err != nil && ctx.Err() == nil && runCtx.Err() != nil {
		err = context.Cause(runCtx)
	}
	return rep, err
}

func (j *Janitor) sweep(ctx context.Context, rep *Report) error {
	// One cutoff for the whole run: whatever is written while it runs is younger still.
	cutoff := time.Now().Add(-j.cfg.Grace)

	// A temporary older than the grace period belongs to no write in progress: a write's temporary is
	// written to until it is renamed, within one task's run or one upload. Were one still open, removing
	// it would only fail that write, which is retried.
	err := j.blobs.WalkTemps(ctx, func(e blob.Entry) error {
		if e.ModTime.After(cutoff) {
			return nil
		}
		if j.full(rep) {
			return errFull
		}
		ok, err := j.blobs.RemoveTemp(ctx, e, cutoff)
		j.count(rep, metrics.JanitorTemp, e, ok, err)
		return nil
	})
	if err == nil {
		err = j.sweepOrphans(ctx, cutoff, rep)
	}
	if errors.Is(err, errFull) {
		rep.Capped = true
		return nil
	}
	return err
}

func (j *Janitor) orphansDue(ctx context.Context) (bool, error) {
	if j.cfg.OrphanInterval < 0 {
		return false, nil
	}
	last, err := j.rdb.Get(ctx, j.sweptKey()).Int64()
	if errors.Is(err, redis.Nil) {
		return true, nil
	}
	return err == nil && time.Since(time.UnixMilli(last)) >= j.cfg.OrphanInterval, err
}

type candidate struct {
	blob.Entry
	id int64
}

// sweepOrphans removes the bytes of images that have no record and were last written before cutoff.
//
// Why that is safe: a record is only ever written right after the bytes it describes. An upload writes its
// bytes, then its record, within milliseconds (httpapi). An upsize writes its result's bytes, then the
// registry's complete script writes the record, retried for at most 20 s; a run that ends before (crash,
// Redis down) is retried, and the retry writes the bytes again before completing. So bytes that have
// waited longer than the grace period (more than a whole task run) for their record will never get one
// unless they are written again, and a rewrite makes them young: DeleteIfOlder then keeps them. The only
// exception would be a process frozen between the two steps for longer than the grace period. (And the
// rewrite would have to land between DeleteIfOlder's check and its removal, two system calls apart, to be lost.)
//
// What it never removes: an object whose record exists (looked up in batches, then again just before the
// removal, in case records are being restored meanwhile); an object whose key is not an image's (counted
// and logged: never delete what is not understood); an image id above the image sequence, which this
// Redis never issued (it lost data or is the wrong database: without a sequence, nothing is removed).
func (j *Janitor) sweepOrphans(ctx context.Context, cutoff time.Time, rep *Report) error {
	if due, err := j.orphansDue(ctx); err != nil || !due {
		return err
	}
	rep.OrphanSweep = true
	// Read once, before the walk: an id issued during it belongs to bytes younger than the cutoff.
	seq, err := j.rdb.Get(ctx, j.keys.ImageSeq()).Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	batch := make([]candidate, 0, j.cfg.BatchSize)
	err = j.blobs.Walk(ctx, func(e blob.Entry) error {
		id, ok := imageID(e.Key)
		switch {
		case !ok:
			if rep.Unknown++; rep.unknownKey == "" {
				rep.unknownKey = e.Key
			}
			return nil
		case e.ModTime.After(cutoff):
			return nil
		case id > seq:
			rep.Unissued++
			return nil
		}
		if batch = append(batch, candidate{e, id}); len(batch) < cap(batch) {
			return nil
		}
		err := j.collect(ctx, batch, cutoff, rep)
		batch = batch[:0]
		return err
	})
	if err == nil {
		err = j.collect(ctx, batch, cutoff, rep)
	}
	if err != nil {
		return err // errFull included: not a whole walk, so the next run walks again
	}
	return j.rdb.Set(ctx, j.sweptKey(), time.Now().UnixMilli(), 0).Err()
}

// collect looks up a batch's records in one round trip and removes the bytes that have none.
func (j *Janitor) collect(ctx context.Context, batch []candidate, cutoff time.Time, rep *Report) error {
	if len(batch) == 0 {
		return nil
	}
	exists := make([]*redis.IntCmd, len(batch))
	if _, err := j.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, c := range batch {
			exists[i] = p.Exists(ctx, j.keys.Image(c.id))
		}
		return nil
	}); err != nil {
		return err
	}
	rep.Checked += int64(len(batch))
	for i, c := range batch {
		if exists[i].Val() != 0 {
			continue
		}
		if j.full(rep) {
			return errFull
		}
		if j.beforeRecheck != nil {
			j.beforeRecheck(c.Key)
		}
		if n, err := j.rdb.Exists(ctx, j.keys.Image(c.id)).Result(); err != nil {
			return err
		} else if n != 0 {
			continue
		}
		ok, err := j.blobs.DeleteIfOlder(ctx, c.Key, cutoff)
		j.count(rep, metrics.JanitorOrphan, c.Entry, ok, err)
	}
	return nil
}

// imageID reads the id of an image's key (store.BlobKey), in its one spelling.
func imageID(key string) (int64, bool) {
	s, ok := strings.CutPrefix(key, "img-")
	if !ok {
		return 0, false
	}
	id, err := strconv.ParseInt(s, 10, 64)
	return id, err == nil && id > 0 && store.BlobKey(id) == key
}

func (j *Janitor) full(rep *Report) bool { return rep.Temps+rep.Orphans >= int64(j.cfg.MaxRemovals) }

// count records one removal. A failure is counted and the sweep goes on: one file that cannot be removed
// must not stop every run.
func (j *Janitor) count(rep *Report, kind string, e blob.Entry, ok bool, err error) {
	switch {
	case err != nil:
		if rep.Failed++; rep.firstFailure == nil {
			rep.firstFailure = fmt.Errorf("%s %s: %w", kind, e.Key, err)
		}
	case !ok: // written again, or removed by someone else, since it was listed
	case kind == metrics.JanitorTemp:
		rep.Temps++
		rep.TempBytes += e.Size
	default:
		rep.Orphans++
		rep.OrphanBytes += e.Size
	}
	if ok && j.metrics != nil {
		j.metrics.Removed.WithLabelValues(kind).Inc()
		j.metrics.RemovedBytes.WithLabelValues(kind).Add(float64(e.Size))
	}
}

// report writes a run's one log line and counts it.
func (j *Janitor) report(ctx context.Context, rep Report, err error, took time.Duration) {
	if err != nil && ctx.Err() != nil {
		j.log.Info("janitor interrupted", "err", err)
		return
	}
	if err == nil && !rep.Ran {
		j.log.Debug("janitor: another replica is running it")
		j.countRun(metrics.JanitorLocked)
		return
	}
	level, result := slog.LevelInfo, metrics.JanitorOK
	if err != nil || rep.Failed > 0 {
		level, result = slog.LevelWarn, metrics.JanitorError
	} else if rep.Capped || rep.Unissued > 0 {
		level = slog.LevelWarn
	}
	j.countRun(result)
	if result == metrics.JanitorOK && j.metrics != nil {
		j.metrics.LastSuccess.SetToCurrentTime()
	}
	j.log.Log(context.Background(), level, "janitor run",
		"temps", rep.Temps, "temp_bytes", rep.TempBytes, "orphans", rep.Orphans, "orphan_bytes", rep.OrphanBytes,
		"orphan_sweep", rep.OrphanSweep, "checked", rep.Checked, "unknown_kept", rep.Unknown, "unknown_example", rep.unknownKey,
		"unissued_kept", rep.Unissued, "failed", rep.Failed, "first_failure", errString(rep.firstFailure),
		"capped", rep.Capped, "took_ms", took.Milliseconds(), "err", errString(err))
}

func (j *Janitor) countRun(result string) {
	if j.metrics != nil {
		j.metrics.Runs.WithLabelValues(result).Inc()
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
