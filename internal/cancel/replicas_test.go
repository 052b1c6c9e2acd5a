package cancel_test

// REDIS_WAIT_REPLICAS against a real master and replica, each a redis-server of the test's own (no
// persistence, free loopback ports): writes are acknowledged only once the replica has them, and a
// stalled replica turns a cancel into an error within REDIS_WAIT_TIMEOUT instead of a success.
//
//	go test -run '^$' -bench AdmitCancel -benchtime 5000x -count 3 ./internal/cancel/   # WAIT's cost (BENCHMARKS.md)

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"upsize/internal/cancel"
	"upsize/internal/store"
)

// redisProc is a redis-server of the test's own.
type redisProc struct {
	cmd    *exec.Cmd
	port   int
	client *redis.Client
}

func startRedisProc(t testing.TB, args ...string) *redisProc {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server: %v (scripts/deps.sh installs it)", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	p := &redisProc{port: port}
	p.cmd = exec.Command(path, append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0", "--dir", t.TempDir()}, args...)...)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.client = redis.NewClient(&redis.Options{Addr: p.addr()})
	t.Cleanup(func() {
		p.client.Close()
		p.cmd.Process.Kill() // SIGKILL ends a stopped process too
		p.cmd.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for p.client.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on port %d does not answer", port)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return p
}

func (p *redisProc) addr() string { return fmt.Sprintf("127.0.0.1:%d", p.port) }

func (p *redisProc) signal(t testing.TB, s syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(s); err != nil {
		t.Fatal(err)
	}
}

// replicaPair starts a master and a replica of it, and returns once the replica is in sync.
func replicaPair(t testing.TB) (master, replica *redisProc) {
	t.Helper()
	master = startRedisProc(t)
	replica = startRedisProc(t, "--replicaof", "127.0.0.1", strconv.Itoa(master.port))
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := master.client.Wait(context.Background(), 1, 100*time.Millisecond).Result()
		if err == nil && n == 1 {
			return master, replica
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replica did not sync: %d, %v", n, err)
		}
	}
}

type waitFixture struct {
	master, replica *redisProc
	reg             *cancel.Registry
	user            store.User
	ctx             context.Context
}

func waitSetup(t testing.TB, waitReplicas int, waitTimeout time.Duration, credits int64) *waitFixture {
	t.Helper()
	master, replica := replicaPair(t)
	f := &waitFixture{master: master, replica: replica, ctx: context.Background(),
		reg: cancel.NewRegistry(master.client, store.DefaultKeys,
			cancel.Settings{TTL: time.Hour, WaitReplicas: waitReplicas, WaitTimeout: waitTimeout})}
	var err error
	if f.user, err = store.New(master.client, store.DefaultKeys).CreateUser(f.ctx, store.UserPatch{Credits: &credits}); err != nil {
		t.Fatal(err)
	}
	// The user must be on the replica before anything is measured against it.
	if n, err := master.client.Wait(f.ctx, 1, 5*time.Second).Result(); err != nil || n != 1 {
		t.Fatalf("WAIT after creating the user: %d, %v", n, err)
	}
	return f
}

func (f *waitFixture) admit(rid string, cost int64) (cancel.AdmitResult, error) {
	return f.reg.Admit(f.ctx, cancel.Admission{UserID: f.user.ID, RequestID: rid, ImageID: 1, Scale: "2x",
		Model: "lanczos3", Cost: cost, Queue: "q", TaskID: "t-" + rid})
}

// onReplica reads the request's state and the user's credits from the replica itself.
func (f *waitFixture) onReplica(t *testing.T, rid string) (state string, credits int64) {
	t.Helper()
	ctx := f.ctx
	state = f.replica.client.HGet(ctx, store.DefaultKeys.Request(f.user.ID, rid), "state").Val()
	credits, _ = f.replica.client.HGet(ctx, store.DefaultKeys.User(f.user.ID), "credits").Int64()
	return state, credits
}

// With WaitReplicas 1, each of the five scripts returns only once the replica has what it wrote: read
// on the replica right after the call, the state and the credits are already there.
func TestWaitReplicasWritesAreOnTheReplicaWhenTheyReturn(t *testing.T) {
	f := waitSetup(t, 1, time.Second, 10)
	expect := func(rid, state string, credits int64) {
		t.Helper()
		if st, c := f.onReplica(t, rid); st != state || c != credits {
			t.Fatalf("replica: %s is %q with credits %d, want %q and %d", rid, st, c, state, credits)
		}
	}

	if res, err := f.admit("a", 2); err != nil || !res.Admitted {
		t.Fatalf("admit: %+v %v", res, err)
	}
	expect("a", "queued", 8)
	if res, err := f.reg.Cancel(f.ctx, f.user.ID, "a"); err != nil || res.State != cancel.Canceled {
		t.Fatalf("cancel: %+v %v", res, err)
	}
	expect("a", "canceled", 10)

	if _, err := f.admit("b", 3); err != nil {
		t.Fatal(err)
	}
	req, _, err := f.reg.Start(f.ctx, f.user.ID, "b")
	if err != nil {
		t.Fatal(err)
	}
	img := store.Image{ID: req.ResultID, OwnerID: f.user.ID, Width: 2, Height: 2, Scale: "2x", Format: "png", CreatedAt: time.Now()}
	if st, err := f.reg.Complete(f.ctx, req, img); err != nil || st != cancel.Completed {
		t.Fatalf("complete: %s %v", st, err)
	}
	expect("b", "completed", 7)
	if n := f.replica.client.Exists(f.ctx, store.DefaultKeys.Image(img.ID)).Val(); n != 1 {
		t.Fatal("replica: the completed request's image record is missing")
	}

	if _, err := f.admit("c", 1); err != nil {
		t.Fatal(err)
	}
	if st, err := f.reg.Fail(f.ctx, f.user.ID, "c", 500, "upsize_failed"); err != nil || st != cancel.Failed {
		t.Fatalf("fail: %s %v", st, err)
	}
	expect("c", "failed", 7)

	// Lost: the request's hash is gone, its reservation is still in open.
	if _, err := f.admit("d", 2); err != nil {
		t.Fatal(err)
	}
	f.master.client.Del(f.ctx, store.DefaultKeys.Request(f.user.ID, "d"))
	if n, exists, err := f.reg.Lost(f.ctx, f.user.ID, "d", 500, "upsize_failed"); err != nil || exists || n != 2 {
		t.Fatalf("lost: %d %v %v", n, exists, err)
	}
	expect("d", "failed", 7)

	// A cancel before the upsize: the tombstone is on the replica.
	if res, err := f.reg.Cancel(f.ctx, f.user.ID, "e"); err != nil || res.Was != "" {
		t.Fatalf("tombstone: %+v %v", res, err)
	}
	expect("e", "canceled", 7)
}

// The replica stops acknowledging (SIGSTOP): a cancel is applied on the master, but it answers an error
// within WaitTimeout instead of success, and so does everything that would report that outcome: Get,
// the same cancel again (which writes nothing itself), Start (a worker would skip the task), an admit of
// the id. Once the replica is back, the cancel repeated succeeds (it is idempotent) and is on the
// replica.
func TestWaitReplicasCancelFailsWhileTheReplicaStalls(t *testing.T) {
	const timeout = 300 * time.Millisecond
	f := waitSetup(t, 1, timeout, 10)
	if _, err := f.admit("r", 4); err != nil {
		t.Fatal(err)
	}
	if _, err := f.admit("q", 1); err != nil {
		t.Fatal(err)
	}
	f.replica.signal(t, syscall.SIGSTOP)
	stopped := true
	defer func() {
		if stopped {
			f.replica.signal(t, syscall.SIGCONT)
		}
	}()

	expectUnreplicated := func(what string, call func() error) {
		t.Helper()
		t0 := time.Now()
		err := call()
		took := time.Since(t0)
		if !errors.Is(err, cancel.ErrNotReplicated) {
			t.Fatalf("%s with the replica stopped: %v, want ErrNotReplicated", what, err)
		}
		if took < timeout || took > timeout+time.Second {
			t.Fatalf("%s failed after %s, want WaitTimeout %s", what, took, timeout)
		}
	}
	expectUnreplicated("cancel", func() error { _, err := f.reg.Cancel(f.ctx, f.user.ID, "r"); return err })
	if st := f.master.client.HGet(f.ctx, store.DefaultKeys.Request(f.user.ID, "r"), "state").Val(); st != "canceled" {
		t.Fatalf("master: %q; the cancel should have been applied there", st)
	}
	// Another process (a client of its own, whose connections wrote nothing yet) reads the outcome, or
	// runs a script that finds it and writes nothing: it is not reported either.
	other := redis.NewClient(&redis.Options{Addr: f.master.addr()})
	defer other.Close()
	reg2 := cancel.NewRegistry(other, store.DefaultKeys, cancel.Settings{TTL: time.Hour, WaitReplicas: 1, WaitTimeout: timeout})
	expectUnreplicated("get", func() error { _, err := reg2.Get(f.ctx, f.user.ID, "r"); return err })
	expectUnreplicated("cancel again", func() error { _, err := reg2.Cancel(f.ctx, f.user.ID, "r"); return err })
	expectUnreplicated("start", func() error { _, _, err := reg2.Start(f.ctx, f.user.ID, "r"); return err })
	// Starting a queued request reports no outcome: it does not wait.
	if _, run, err := reg2.Start(f.ctx, f.user.ID, "q"); err != nil || !run {
		t.Fatalf("start of a queued request with the replica stopped: %v %v", run, err)
	}
	expectUnreplicated("admit of the id", func() error {
		_, err := reg2.Admit(f.ctx, cancel.Admission{UserID: f.user.ID, RequestID: "r", ImageID: 1, Scale: "2x", Cost: 4})
		return err
	})
	expectUnreplicated("admit", func() error { _, err := f.admit("other", 1); return err })

	f.replica.signal(t, syscall.SIGCONT)
	stopped = false
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := f.reg.Cancel(f.ctx, f.user.ID, "r")
		if err == nil {
			if res.State != cancel.Canceled || res.Was != cancel.Canceled {
				t.Fatalf("cancel repeated: %+v", res)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cancel still failing after the replica came back: %v", err)
		}
	}
	// "other" was admitted on the master while the replica was stopped (its admit answered an error):
	// it holds 1 credit, as "q" does; "r" was refunded.
	if st, c := f.onReplica(t, "r"); st != "canceled" || c != 8 {
		t.Fatalf("replica: %q, credits %d; want canceled, 8", st, c)
	}
}

// A master that lost its script cache (a restart, or a replica promoted by a failover: scripts are not
// replicated) answers NOSCRIPT; the registry sends the script's body instead.
func TestWaitReplicasReloadsScripts(t *testing.T) {
	f := waitSetup(t, 1, time.Second, 10)
	if _, err := f.admit("x", 1); err != nil {
		t.Fatal(err)
	}
	if err := f.master.client.ScriptFlush(f.ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if res, err := f.reg.Cancel(f.ctx, f.user.ID, "x"); err != nil || res.State != cancel.Canceled {
		t.Fatalf("cancel after SCRIPT FLUSH: %+v %v", res, err)
	}
	if st, c := f.onReplica(t, "x"); st != "canceled" || c != 10 {
		t.Fatalf("replica: %q, credits %d", st, c)
	}
}

// Without WaitReplicas nothing waits: a stalled replica does not slow or fail anything.
func TestNoWaitIgnoresTheReplica(t *testing.T) {
	f := waitSetup(t, 0, 0, 10)
	f.replica.signal(t, syscall.SIGSTOP)
	defer f.replica.signal(t, syscall.SIGCONT)
	t0 := time.Now()
	if _, err := f.admit("n", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.Cancel(f.ctx, f.user.ID, "n"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.Get(f.ctx, f.user.ID, "n"); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took > 500*time.Millisecond {
		t.Fatalf("took %s", took)
	}
}

// BenchmarkAdmitCancel is one admission and its cancel (two money-moving scripts) against a local
// master and replica, without WAIT and with WAIT for the replica, interleaved (one of each per
// iteration) so that both see the same load; it reports each one's median and 99th percentile.
func BenchmarkAdmitCancel(b *testing.B) {
	f := waitSetup(b, 1, time.Second, 1<<40)
	noWait := &waitFixture{master: f.master, replica: f.replica, user: f.user, ctx: f.ctx,
		reg: cancel.NewRegistry(f.master.client, store.DefaultKeys, cancel.Settings{TTL: time.Hour})}
	var d0, d1 []time.Duration
	for i := 0; b.Loop(); i++ {
		t0 := time.Now()
		admitCancel(b, noWait, "n"+strconv.Itoa(i))
		t1 := time.Now()
		admitCancel(b, f, "w"+strconv.Itoa(i))
		d0, d1 = append(d0, t1.Sub(t0)), append(d1, time.Since(t1))
	}
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	b.ReportMetric(us(quantile(d0, 0.5)), "µs-p50-nowait")
	b.ReportMetric(us(quantile(d1, 0.5)), "µs-p50-wait")
	b.ReportMetric(us(quantile(d0, 0.99)), "µs-p99-nowait")
	b.ReportMetric(us(quantile(d1, 0.99)), "µs-p99-wait")
}

func quantile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[int(q*float64(len(s)-1))]
}

// BenchmarkAdmitCancelParallel is the same from 16 goroutines: WAITs that are pending together are
// acknowledged together (the master asks the replica once per event-loop turn).
func BenchmarkAdmitCancelParallel(b *testing.B) {
	for _, wait := range []int{0, 1} {
		b.Run("wait="+strconv.Itoa(wait), func(b *testing.B) {
			f := waitSetup(b, wait, time.Second, 1<<40)
			var n atomic.Int64
			b.SetParallelism(8) // × GOMAXPROCS goroutines
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					admitCancel(b, f, "p"+strconv.FormatInt(n.Add(1), 10))
				}
			})
		})
	}
}

func admitCancel(b *testing.B, f *waitFixture, rid string) {
	if res, err := f.admit(rid, 1); err != nil || !res.Admitted {
		b.Fatalf("admit: %+v %v", res, err)
	}
	if res, err := f.reg.Cancel(f.ctx, f.user.ID, rid); err != nil || res.State != cancel.Canceled {
		b.Fatalf("cancel: %+v %v", res, err)
	}
}
