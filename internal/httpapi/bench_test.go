package httpapi_test

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"upsize/internal/config"
	"upsize/internal/imageops"
	"upsize/internal/jobs"
	"upsize/internal/testenv"
	"upsize/internal/testimg"
)

// percentiles reports p50, p99 and max of ds, in milliseconds, as benchmark metrics.
func percentiles(b *testing.B, name string, ds []time.Duration) {
	if len(ds) == 0 {
		return
	}
	slices.Sort(ds)
	at := func(q float64) float64 { return float64(ds[int(q*float64(len(ds)-1))].Microseconds()) / 1000 }
	b.ReportMetric(at(0.5), name+"-p50-ms")
	b.ReportMetric(at(0.99), name+"-p99-ms")
	b.ReportMetric(at(1), name+"-max-ms")
}

// BenchmarkQueueWait measures, with an idle worker, the time from enqueue to the task handler starting
// (the request's admission in Redis to the worker's start of it), at the worker's configured poll
// interval and at asynq's default of 1 s.
func BenchmarkQueueWait(b *testing.B) {
	def, _ := config.Load("worker", func(string) string { return "" })
	for _, poll := range []time.Duration{def.WorkerPollInterval, time.Second} {
		b.Run("poll="+poll.String(), func(b *testing.B) {
			var mu sync.Mutex
			var waits []time.Duration
			e := testenv.New(b, testenv.Options{PollInterval: poll, Observe: func(r jobs.TaskReport) {
				mu.Lock()
				waits = append(waits, r.QueueWait)
				mu.Unlock()
			}})
			e.Configure()
			n := 200
			if poll >= time.Second {
				n = 12
			}
			u := e.NewUser("paid", int64(n))
			id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(8, 8)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for k := 0; k < n; k++ {
					// Let the worker go idle again (back to polling), as between real requests.
					time.Sleep(time.Duration(k%7+1) * time.Millisecond)
					e.Want(e.Upsize(context.Background(), u.Key, id, "", fmt.Sprintf("qw-%d-%d", i, k)), 201, "")
				}
			}
			percentiles(b, "queue-wait", waits)
		})
	}
}

// BenchmarkConcurrentWaiting holds 2,000 upsizes waiting in one API process at once, then lets workers
// drain them: every one must answer 201, and the Redis pool must never time out.
func BenchmarkConcurrentWaiting(b *testing.B) {
	const n = 2000
	for i := 0; i < b.N; i++ {
		e := testenv.New(b, testenv.Options{NoWorker: true, Concurrency: 8})
		e.Configure()
		u := e.NewUser("paid", n)
		id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(8, 8)))
		var wg sync.WaitGroup
		var mu sync.Mutex
		statuses := map[int]int{}
		lat := make([]time.Duration, 0, n)
		start := time.Now()
		for k := 0; k < n; k++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t0 := time.Now()
				r := e.Upsize(context.Background(), u.Key, id, "", fmt.Sprintf("cw-%d", k))
				mu.Lock()
				statuses[r.Status]++
				lat = append(lat, time.Since(t0))
				mu.Unlock()
			}()
		}
		// All admitted and waiting before any worker exists.
		for e.Hub.Waiting() < n {
			if time.Since(start) > time.Minute {
				b.Fatalf("only %d of %d upsizes waiting after a minute", e.Hub.Waiting(), n)
			}
			time.Sleep(10 * time.Millisecond)
		}
		admitted := time.Since(start)
		e.StartWorker()
		wg.Wait()
		if statuses[201] != n {
			b.Fatalf("answers %v, want %d×201", statuses, n)
		}
		if ps := e.RDB.PoolStats(); ps.Timeouts != 0 {
			b.Fatalf("Redis pool timed out %d times (%+v)", ps.Timeouts, ps)
		}
		b.ReportMetric(admitted.Seconds()*1000, "ms-to-admit-2000")
		b.ReportMetric(float64(e.RDB.PoolStats().TotalConns), "redis-conns")
		percentiles(b, "answer", lat)
	}
}

// BenchmarkCancelRunning8x cancels an 8x upsize of a 1024x1024 noise PNG 300 ms after it started running
// on the worker, and measures from the cancel call to the waiting upsize's 409, and to the image
// operation returning (libvips aborted: the worker's CPU is free).
func BenchmarkCancelRunning8x(b *testing.B) {
	started := make(chan struct{}, 1)
	stopped := make(chan time.Time, 1)
	op := func(ctx context.Context, src []byte, w io.Writer, p imageops.Params) (imageops.Result, error) {
		started <- struct{}{}
		res, err := imageops.Upsize(ctx, src, w, p)
		stopped <- time.Now()
		return res, err
	}
	e := testenv.New(b, testenv.Options{Upsize: op, Concurrency: 1})
	e.Configure()
	const rounds = 20
	u := e.NewUser("paid", 4)
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Noise(1024, 1024, 3)))
	var toAnswer, toStop []time.Duration
	for i := 0; i < b.N; i++ {
		for k := 0; k < rounds; k++ {
			rid := fmt.Sprintf("cr-%d-%d", i, k)
			answered := make(chan time.Time, 1)
			go func() {
				e.Want(e.Upsize(context.Background(), u.Key, id, "8x", rid), 409, "user_canceled_request")
				answered <- time.Now()
			}()
			<-started
			time.Sleep(300 * time.Millisecond)
			t0 := time.Now()
			e.Want(e.Cancel(u.Key, rid), 200, "")
			toAnswer = append(toAnswer, (<-answered).Sub(t0))
			toStop = append(toStop, (<-stopped).Sub(t0))
		}
	}
	percentiles(b, "cancel-to-409", toAnswer)
	percentiles(b, "cancel-to-stop", toStop)
}

// direct runs what a worker's task costs without the service: imageops.Upsize into the blob store.
func direct(b *testing.B, e *testenv.Env, src []byte, scale int) {
	_, err := e.Blobs.Put(context.Background(), "bench-direct", func(w io.Writer) error {
		_, err := imageops.Upsize(context.Background(), src, w, imageops.Params{Scale: scale, Kernel: "lanczos3", Encoding: imageops.DefaultEncoding})
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
}

// BenchmarkServiceOverhead compares one upsize through the whole service (HTTP, admission, queue, worker,
// blob store, outcome signal) with the image operation alone, on an idle service, alternating the two.
func BenchmarkServiceOverhead(b *testing.B) {
	def, _ := config.Load("worker", func(string) string { return "" })
	e := testenv.New(b, testenv.Options{PollInterval: def.WorkerPollInterval, Concurrency: 1})
	e.Configure()
	const n = 60
	u := e.NewUser("paid", n*int64(b.N))
	src := testimg.EncodePNG(testimg.Gradient(256, 256))
	id := e.UploadOK(u.Key, src)
	var svc, alone []time.Duration
	for i := 0; i < b.N; i++ {
		for k := 0; k < n; k++ {
			time.Sleep(5 * time.Millisecond) // idle between requests
			t0 := time.Now()
			e.Want(e.Upsize(context.Background(), u.Key, id, "2x", fmt.Sprintf("so-%d-%d", i, k)), 201, "")
			svc = append(svc, time.Since(t0))
			t1 := time.Now()
			direct(b, e, src, 2)
			alone = append(alone, time.Since(t1))
		}
	}
	slices.Sort(svc)
	slices.Sort(alone)
	b.ReportMetric(float64(svc[len(svc)/2].Microseconds())/1000, "service-p50-ms")
	b.ReportMetric(float64(alone[len(alone)/2].Microseconds())/1000, "imageops-p50-ms")
	b.ReportMetric(float64((svc[len(svc)/2]-alone[len(alone)/2]).Microseconds())/1000, "added-p50-ms")
}

// BenchmarkServiceThroughput sends a burst of upsizes through the service (one worker, concurrency 2)
// and runs the same jobs on imageops directly with 2 goroutines; reports both rates and their ratio.
func BenchmarkServiceThroughput(b *testing.B) {
	const n, conc = 48, 2
	def, _ := config.Load("worker", func(string) string { return "" })
	e := testenv.New(b, testenv.Options{PollInterval: def.WorkerPollInterval, Concurrency: conc})
	e.Configure()
	u := e.NewUser("paid", n*int64(b.N))
	src := testimg.EncodePNG(testimg.Noise(384, 384, 5))
	id := e.UploadOK(u.Key, src)
	var svc, alone time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		var wg sync.WaitGroup
		for k := 0; k < n; k++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				e.Want(e.Upsize(context.Background(), u.Key, id, "2x", fmt.Sprintf("st-%d-%d", i, k)), 201, "")
			}()
		}
		wg.Wait()
		svc += time.Since(t0)

		t1 := time.Now()
		jobs := make(chan int, n)
		for k := 0; k < n; k++ {
			jobs <- k
		}
		close(jobs)
		for g := 0; g < conc; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range jobs {
					direct(b, e, src, 2)
				}
			}()
		}
		wg.Wait()
		alone += time.Since(t1)
	}
	total := float64(n * b.N)
	b.ReportMetric(total/svc.Seconds(), "service-images/s")
	b.ReportMetric(total/alone.Seconds(), "imageops-images/s")
	b.ReportMetric(alone.Seconds()/svc.Seconds(), "ratio")
}

// BenchmarkPaidDuringFreeBurst measures paid users' upsize latency while a burst of free users' upsizes
// drains (paid tasks go to the higher-priority queue), against the same paid requests on an idle service.
func BenchmarkPaidDuringFreeBurst(b *testing.B) {
	def, _ := config.Load("worker", func(string) string { return "" })
	e := testenv.New(b, testenv.Options{PollInterval: def.WorkerPollInterval, Concurrency: 2})
	e.Configure()
	const burst, paidN = 80, 12
	free := e.NewUser("free", burst*int64(b.N))
	paid := e.NewUser("paid", 2*paidN*int64(b.N))
	src := testimg.EncodePNG(testimg.Noise(320, 320, 7))
	freeImg, paidImg := e.UploadOK(free.Key, src), e.UploadOK(paid.Key, src)
	paidRun := func(tag string) []time.Duration {
		var lat []time.Duration
		for k := 0; k < paidN; k++ {
			t0 := time.Now()
			e.Want(e.Upsize(context.Background(), paid.Key, paidImg, "2x", fmt.Sprintf("%s-%d", tag, k)), 201, "")
			lat = append(lat, time.Since(t0))
			time.Sleep(50 * time.Millisecond)
		}
		return lat
	}
	var idle, during []time.Duration
	for i := 0; i < b.N; i++ {
		idle = append(idle, paidRun(fmt.Sprintf("idle-%d", i))...)
		var wg sync.WaitGroup
		for k := 0; k < burst; k++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				e.Want(e.Upsize(context.Background(), free.Key, freeImg, "2x", fmt.Sprintf("burst-%d-%d", i, k)), 201, "")
			}()
		}
		for n, _ := e.Queue.Backlog(context.Background()); n.Tasks < burst/2; n, _ = e.Queue.Backlog(context.Background()) {
			time.Sleep(5 * time.Millisecond) // the burst is queued
		}
		during = append(during, paidRun(fmt.Sprintf("during-%d", i))...)
		backlog, _ := e.Queue.Backlog(context.Background())
		b.ReportMetric(float64(backlog.Tasks), "free-backlog-after-paid")
		wg.Wait()
	}
	p95 := func(ds []time.Duration) float64 {
		slices.Sort(ds)
		return float64(ds[int(0.95*float64(len(ds)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(p95(idle), "paid-idle-p95-ms")
	b.ReportMetric(p95(during), "paid-during-burst-p95-ms")
}
