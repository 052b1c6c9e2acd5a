package janitor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"upsize/internal/blob"
	"upsize/internal/metrics"
	"upsize/internal/store"
	"upsize/internal/testredis"
)

var keys = store.Keys{Prefix: "jt:"}

type env struct {
	t    *testing.T
	rdb  *redis.Client
	dir  string
	fs   *blob.FS
	st   *store.Store
	m    *metrics.Janitor
	ctx  context.Context
	log  *slog.Logger
	base Config
}

func newEnv(t *testing.T) *env {
	dir := t.TempDir()
	fs, err := blob.NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	rdb := testredis.Redis(t)
	return &env{
		t: t, rdb: rdb, dir: dir, fs: fs, st: store.New(rdb, keys), m: metrics.NewJanitor(prometheus.NewRegistry()),
		ctx: context.Background(), log: slog.New(slog.NewTextHandler(t.Output(), nil)),
	}
}

func (e *env) janitor(w blob.Walker, cfg Config) *Janitor {
	e.t.Helper()
	j, err := New(e.rdb, keys, w, cfg, e.log, e.m)
	if err != nil {
		e.t.Fatal(err)
	}
	return j
}

func (e *env) runOnce(j *Janitor) Report {
	e.t.Helper()
	rep, err := j.RunOnce(e.ctx)
	if err != nil || !rep.Ran {
		e.t.Fatalf("run: %+v, %v", rep, err)
	}
	return rep
}

// temp leaves a temporary file as a crash in the middle of Put does, last written age ago.
func (e *env) temp(key, data string, age time.Duration) string {
	e.t.Helper()
	f, err := os.CreateTemp(filepath.Join(e.dir, ".tmp"), key+".*")
	if err != nil {
		e.t.Fatal(err)
	}
	f.WriteString(data)
	f.Close()
	setAge(e.t, f.Name(), age)
	return f.Name()
}

// object stores bytes under key, last written age ago, and returns its path.
func (e *env) object(key, data string, age time.Duration) string {
	e.t.Helper()
	if _, err := e.fs.Put(e.ctx, key, func(w io.Writer) error { _, err := io.WriteString(w, data); return err }); err != nil {
		e.t.Fatal(err)
	}
	paths, _ := filepath.Glob(filepath.Join(e.dir, "[0-9a-f][0-9a-f]", key))
	if len(paths) != 1 {
		e.t.Fatalf("%s stored at %v", key, paths)
	}
	setAge(e.t, paths[0], age)
	return paths[0]
}

// image allocates an id as an upload does; with record, it also writes the image's record.
func (e *env) image(record bool) int64 {
	e.t.Helper()
	id, err := e.st.NextImageID(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	if record {
		if err := e.st.PutImage(e.ctx, store.Image{ID: id, OwnerID: 1, Scale: "1x", Format: "png", CreatedAt: time.Now()}); err != nil {
			e.t.Fatal(err)
		}
	}
	return id
}

func setAge(t *testing.T, path string, age time.Duration) {
	t.Helper()
	at := time.Now().Add(-age)
	if err := os.Chtimes(path, at, at); err != nil {
		t.Fatal(err)
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func value(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}

// (1) A temporary older than the grace period is removed; younger ones, and committed objects, stay.
func TestRemovesStaleTemporaries(t *testing.T) {
	e := newEnv(t)
	stale := e.temp("img-7", "partial", 2*time.Hour)
	fresh := e.temp("img-8", "writing", 0)
	within := e.temp("img-9", "slow", 50*time.Minute)
	done := e.object("img-"+fmt.Sprint(e.image(true)), "done", 3*time.Hour)
	j := e.janitor(e.fs, Config{})

	rep := e.runOnce(j)
	if exists(stale) || !exists(fresh) || !exists(within) || !exists(done) {
		t.Fatalf("after the run: stale %v (want false), fresh %v, within grace %v, object %v",
			exists(stale), exists(fresh), exists(within), exists(done))
	}
	if rep.Temps != 1 || rep.TempBytes != int64(len("partial")) || rep.Orphans != 0 {
		t.Fatalf("report %+v", rep)
	}
	// (4) The metrics say the same.
	if v := value(t, e.m.Removed.WithLabelValues("temp")); v != 1 {
		t.Errorf("removed{kind=temp} = %v", v)
	}
	if v := value(t, e.m.RemovedBytes.WithLabelValues("temp")); v != float64(len("partial")) {
		t.Errorf("removed_bytes{kind=temp} = %v", v)
	}
	if v := value(t, e.m.Removed.WithLabelValues("orphan")); v != 0 {
		t.Errorf("removed{kind=orphan} = %v", v)
	}
	if v := value(t, e.m.Runs.WithLabelValues("ok")); v != 1 {
		t.Errorf("runs{result=ok} = %v", v)
	}
	if v := value(t, e.m.LastSuccess); time.Since(time.Unix(int64(v), 0)) > time.Minute {
		t.Errorf("last success = %v", v)
	}

	// Periodic: a temporary that becomes stale later goes at a later run.
	setAge(t, fresh, 2*time.Hour)
	if rep := e.runOnce(j); rep.Temps != 1 || exists(fresh) {
		t.Fatalf("second run: %+v, fresh left %v", rep, exists(fresh))
	}
	if v := value(t, e.m.Removed.WithLabelValues("temp")); v != 2 {
		t.Errorf("removed{kind=temp} = %v after two removals", v)
	}
}

// (2) Bytes without a record, older than the grace period, are removed; everything else stays.
func TestRemovesOldOrphansOnly(t *testing.T) {
	e := newEnv(t)
	key := func(id int64) string { return store.BlobKey(id) }
	recorded := e.object(key(e.image(true)), "has a record", 30*24*time.Hour)
	orphanID := e.image(false)
	orphan := e.object(key(orphanID), "crashed upload", 2*time.Hour)
	young := e.object(key(e.image(false)), "upload in progress", 0)
	within := e.object(key(e.image(false)), "within grace", 50*time.Minute)
	unknown := e.object("thumb-1", "not an image", 30*24*time.Hour)
	oddSpelling := e.object("img-07", "not BlobKey's spelling", 30*24*time.Hour)
	unissued := e.object("img-999", "an id Redis never issued", 30*24*time.Hour)
	j := e.janitor(e.fs, Config{})

	rep := e.runOnce(j)
	if exists(orphan) {
		t.Fatal("the old orphan is still there")
	}
	for name, p := range map[string]string{"recorded": recorded, "young": young, "within grace": within,
		"unknown key": unknown, "odd spelling": oddSpelling, "unissued id": unissued} {
		if !exists(p) {
			t.Errorf("%s object removed", name)
		}
	}
	want := Report{Ran: true, Orphans: 1, OrphanBytes: int64(len("crashed upload")), OrphanSweep: true,
		Checked: 2, Unknown: 2, Unissued: 1}
	got := rep
	got.unknownKey = ""
	if got != want {
		t.Fatalf("report %+v, want %+v", rep, want)
	}
	if k := rep.unknownKey; k != "thumb-1" && k != "img-07" {
		t.Errorf("unknown example %q", rep.unknownKey)
	}
	// (4) The metrics say the same.
	if v := value(t, e.m.Removed.WithLabelValues("orphan")); v != 1 {
		t.Errorf("removed{kind=orphan} = %v", v)
	}
	if v := value(t, e.m.RemovedBytes.WithLabelValues("orphan")); v != float64(len("crashed upload")) {
		t.Errorf("removed_bytes{kind=orphan} = %v", v)
	}

	// The walk is every OrphanInterval across replicas, not every run.
	if rep := e.runOnce(e.janitor(e.fs, Config{})); rep.OrphanSweep || rep.Checked != 0 {
		t.Fatalf("objects walked again at once: %+v", rep)
	}
	if _, err := e.st.GetImage(e.ctx, orphanID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the orphan's record: %v", err)
	}
}

// A Redis without an image sequence (emptied, or the wrong database) has issued no id: nothing is an
// orphan of it.
func TestNoOrphanRemovedWithoutImageSequence(t *testing.T) {
	e := newEnv(t)
	p := e.object("img-1", "bytes whose record Redis lost", 30*24*time.Hour)
	rep := e.runOnce(e.janitor(e.fs, Config{}))
	if !exists(p) || rep.Orphans != 0 || rep.Unissued != 1 {
		t.Fatalf("report %+v, object kept %v", rep, exists(p))
	}
}

// What changes between the batch's look-up and the removal is seen: a record written meanwhile, or bytes
// written again, keep the object.
func TestRecheckedBeforeRemoval(t *testing.T) {
	e := newEnv(t)
	recordID, rewriteID, goneID := e.image(false), e.image(false), e.image(false)
	gainsRecord := e.object(store.BlobKey(recordID), "a", 2*time.Hour)
	rewritten := e.object(store.BlobKey(rewriteID), "b", 2*time.Hour)
	gone := e.object(store.BlobKey(goneID), "c", 2*time.Hour)
	j := e.janitor(e.fs, Config{})
	j.beforeRecheck = func(key string) {
		switch key {
		case store.BlobKey(recordID):
			e.st.PutImage(e.ctx, store.Image{ID: recordID, OwnerID: 1})
		case store.BlobKey(rewriteID):
			setAge(t, rewritten, 0)
		}
	}
	rep := e.runOnce(j)
	if !exists(gainsRecord) || !exists(rewritten) || exists(gone) || rep.Orphans != 1 {
		t.Fatalf("report %+v; kept: record written %v, rewritten %v, true orphan %v",
			rep, exists(gainsRecord), exists(rewritten), exists(gone))
	}
}

// A run removes at most MaxRemovals; the next run goes on where it stopped.
func TestRemovalCap(t *testing.T) {
	e := newEnv(t)
	var paths []string
	for range 3 {
		paths = append(paths, e.object(store.BlobKey(e.image(false)), "x", 2*time.Hour))
	}
	j := e.janitor(e.fs, Config{MaxRemovals: 2})
	if rep := e.runOnce(j); rep.Orphans != 2 || !rep.Capped {
		t.Fatalf("first run: %+v", rep)
	}
	if rep := e.runOnce(j); rep.Orphans != 1 || rep.Capped || !rep.OrphanSweep {
		t.Fatalf("second run: %+v", rep)
	}
	for _, p := range paths {
		if exists(p) {
			t.Errorf("%s left", p)
		}
	}
}

// recv waits for a value, failing the test rather than hanging it.
func recv[T any](t *testing.T, c <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s within 10 s", what)
		panic("unreachable")
	}
}

// gated holds a run inside its first step until released.
type gated struct {
	blob.Walker
	entered chan string
	release chan struct{}
	name    string
}

func (g *gated) WalkTemps(ctx context.Context, fn func(blob.Entry) error) error {
	g.entered <- g.name
	select {
	case <-g.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return g.Walker.WalkTemps(ctx, fn)
}

// (3) Two janitors started at once on one Redis: one runs, the other finds the lock taken; the lock is
// renewed for as long as the run lasts and freed at its end.
func TestOneRunAtATime(t *testing.T) {
	e := newEnv(t)
	stale := e.temp("img-1", "partial", 2*time.Hour)
	entered, release := make(chan string, 2), make(chan struct{})
	const ttl = 300 * time.Millisecond
	type result struct {
		rep Report
		err error
	}
	results := make(chan result, 2)
	start := make(chan struct{})
	for _, name := range []string{"a", "b"} {
		j := e.janitor(&gated{e.fs, entered, release, name}, Config{LockTTL: ttl})
		go func() {
			<-start
			rep, err := j.RunOnce(e.ctx)
			results <- result{rep, err}
		}()
	}
	close(start)
	winner := recv(t, entered, "run")
	if r := recv(t, results, "result"); r.err != nil || r.rep.Ran {
		t.Fatalf("the other janitor: %+v, %v", r.rep, r.err)
	}

	// Three TTLs later the lock is still held: it is renewed.
	time.Sleep(3 * ttl)
	other := e.janitor(e.fs, Config{LockTTL: ttl})
	if rep, err := other.RunOnce(e.ctx); err != nil || rep.Ran {
		t.Fatalf("a third janitor ran beside a long run: %+v, %v", rep, err)
	}

	close(release)
	r := recv(t, results, "result")
	if r.err != nil || !r.rep.Ran || r.rep.Temps != 1 || exists(stale) {
		t.Fatalf("janitor %s: %+v, %v", winner, r.rep, r.err)
	}
	select {
	case name := <-entered:
		t.Fatalf("janitors %s and %s both ran", winner, name)
	default:
	}
	if v := value(t, e.m.Runs.WithLabelValues("locked")); v != 2 {
		t.Errorf("runs{result=locked} = %v", v)
	}
	// Freed at the end: the next run runs.
	if n := e.rdb.Exists(e.ctx, keys.Prefix+"janitor:lock").Val(); n != 0 {
		t.Fatal("lock left after the run")
	}
	e.runOnce(other)
}

// A run that loses its lock (it expired, another replica took it) stops, and does not free the other's lock.
func TestLostLockStopsTheRunAndIsNotFreed(t *testing.T) {
	e := newEnv(t)
	entered, release := make(chan string, 1), make(chan struct{})
	defer close(release)
	j := e.janitor(&gated{e.fs, entered, release, "a"}, Config{LockTTL: 300 * time.Millisecond})
	done := make(chan error, 1)
	go func() {
		_, err := j.RunOnce(e.ctx)
		done <- err
	}()
	recv(t, entered, "run")
	lockKey := keys.Prefix + "janitor:lock"
	e.rdb.Set(e.ctx, lockKey, "another replica", time.Minute)
	select {
	case err := <-done:
		if !errors.Is(err, errLockLost) {
			t.Fatalf("run ended with %v, want errLockLost", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the run went on without its lock")
	}
	if v := e.rdb.Get(e.ctx, lockKey).Val(); v != "another replica" {
		t.Fatalf("lock now %q: the other replica's lock was freed", v)
	}
	if v := value(t, e.m.Runs.WithLabelValues("error")); v != 1 {
		t.Errorf("runs{result=error} = %v", v)
	}
}

func TestConfigChecks(t *testing.T) {
	if _, err := New(nil, keys, nil, Config{Grace: time.Minute}, slog.Default(), nil); err == nil {
		t.Error("a one-minute grace period was accepted")
	}
	j, err := New(nil, keys, nil, Config{}, slog.Default(), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Interval: DefaultInterval, Grace: DefaultGrace, OrphanInterval: DefaultOrphanInterval,
		BatchSize: DefaultBatchSize, MaxRemovals: DefaultMaxRemovals, LockTTL: DefaultLockTTL}
	if j.cfg != want {
		t.Errorf("defaults %+v", j.cfg)
	}
}
