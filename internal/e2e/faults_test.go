package e2e

// Fault tests: a burst of upsizes (some canceled at random moments) through the real binaries while a
// worker is killed with SIGKILL, or while Redis is killed and restarted. Afterwards every request must have
// one defined outcome, consistent across the upsize answer, the cancel answer, GET /api/requests, the
// credits, the blob store and the queue. docs/faults.md describes them and their figures.
//
//	go test -count=1 -run Faults -v ./internal/e2e/

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	_ "image/jpeg"
	_ "image/png"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"upsize/internal/jobs"
	"upsize/internal/policy"
	"upsize/internal/testenv"
	"upsize/internal/testimg"
	"upsize/internal/testlog"
)

// faultClient is bounded, and its helpers return errors instead of calling t.Fatal: they run in goroutines.
var faultClient = &http.Client{Timeout: 60 * time.Second}

func try(method, url string, hdr map[string]string, body []byte) (answer, []byte, error) {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return answer{}, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := faultClient.Do(req)
	if err != nil {
		return answer{}, nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	a := answer{status: res.StatusCode}
	json.Unmarshal(b, &a.body)
	return a, b, err
}

// reason is an answer's "data" when it is a string (error envelopes), else "".
func (a answer) reason() string { s, _ := a.body["data"].(string); return s }

func (a answer) String() string {
	b, _ := json.Marshal(a.body)
	return fmt.Sprintf("%d %.300s", a.status, b)
}

type faultImage struct {
	id     int64
	w, h   int
	format string   // what image.Decode names it
	scales []string // what the burst asks of it (4x only of the small ones, to bound the work and the bytes)
}

type faultUser struct {
	id      int64
	key     string
	credits int
	images  []faultImage
}

// faultUsers makes n paid users with credits each (enough for every request: credits are not what is
// tested here), each with five images of different sizes and formats.
func (s *service) faultUsers(api *proc, n, credits int) []*faultUser {
	t := s.t
	var users []*faultUser
	for i := range n {
		uid, key, img := s.setup(api, credits)
		u := &faultUser{id: uid, key: key, credits: credits,
			images: []faultImage{{id: img, w: 1024, h: 1024, format: "png", scales: []string{"2x"}}}}
		for _, x := range []struct {
			data   []byte
			w, h   int
			format string
			scales []string
		}{
			{testimg.EncodePNG(testimg.Noise(640, 480, int64(10+i))), 640, 480, "png", []string{"2x", "4x"}},
			{testimg.EncodeJPEG(testimg.Gradient(800, 600)), 800, 600, "jpeg", []string{"2x"}},
			{testimg.EncodeJPEG(testimg.Noise(512, 512, int64(20+i))), 512, 512, "jpeg", []string{"2x", "4x"}},
			{testimg.EncodePNG(testimg.Gradient(400, 300)), 400, 300, "png", []string{"2x", "4x"}},
		} {
			ct, body := testenv.Multipart(x.data, nil)
			up := call(t, "POST", "http://"+api.addr+"/api/images", map[string]string{"X-Api-Key": key}, body, ct)
			if up.status != 201 {
				t.Fatalf("upload %dx%d %s: %v", x.w, x.h, x.format, up)
			}
			id := int64(up.body["image"].(map[string]any)["imageId"].(float64))
			u.images = append(u.images, faultImage{id: id, w: x.w, h: x.h, format: x.format, scales: x.scales})
		}
		users = append(users, u)
	}
	return users
}

// faultReq is one upsize of the burst and, maybe, its cancel. Goroutines fill in the answers; they are
// read only after the WaitGroup is done.
type faultReq struct {
	user     *faultUser
	rid      string
	img      faultImage
	scale    string
	at       time.Duration // when the upsize is sent, from the start of the burst
	cancels  bool
	cancelAt time.Duration // when the cancel is sent, from the start of the burst (it may precede the upsize)

	up        answer
	upErr     error
	upTook    time.Duration
	can       answer
	canErr    error
	final     answer // last GET /api/requests/{rid}
	finalSeen time.Time
}

func (r *faultReq) cost() int { return map[string]int{"2x": 1, "4x": 2, "8x": 4}[r.scale] }

func (r *faultReq) factor() int { f, _ := policy.ScaleFactor(r.scale); return f }

// plan draws n requests, spread over the users, their images and scales; cancelShare of them get a
// cancel between 200 ms before and 4 s after the upsize (before it: a tombstone, so the upsize answers
// 409; then queued, running, or already completed).
func plan(rng *rand.Rand, users []*faultUser, n int, prefix string, spread time.Duration, cancelShare float64) []*faultReq {
	// A random tag keeps request ids apart from any other test's: the pub/sub channels of a Redis server
	// are shared by all its databases.
	tag := strconv.FormatUint(rng.Uint64()%1e8, 36)
	var reqs []*faultReq
	for i := range n {
		u := users[i%len(users)]
		im := u.images[rng.IntN(len(u.images))]
		r := &faultReq{user: u, rid: fmt.Sprintf("%s-%s-%02d", prefix, tag, i), img: im,
			scale: im.scales[rng.IntN(len(im.scales))], at: time.Duration(rng.Int64N(int64(spread)))}
		if rng.Float64() < cancelShare {
			r.cancels = true
			r.cancelAt = max(0, r.at+time.Duration(rng.IntN(4200)-200)*time.Millisecond)
		}
		reqs = append(reqs, r)
	}
	return reqs
}

func upsizeURL(api *proc, r *faultReq) string {
	return fmt.Sprintf("http://%s/api/images/%d/upsize", api.addr, r.img.id)
}

func (r *faultReq) hdr() map[string]string {
	return map[string]string{"X-Api-Key": r.user.key, "X-Request-Id": r.rid}
}

// fire sends the burst from began; the WaitGroup is done when every upsize and cancel has its answer.
func fire(api *proc, reqs []*faultReq, began time.Time) *sync.WaitGroup {
	var wg sync.WaitGroup
	for _, r := range reqs {
		wg.Go(func() {
			time.Sleep(time.Until(began.Add(r.at)))
			t0 := time.Now()
			r.up, _, r.upErr = try("POST", upsizeURL(api, r), r.hdr(), []byte(`{"scaleSize":"`+r.scale+`"}`))
			r.upTook = time.Since(t0)
		})
		if r.cancels {
			wg.Go(func() {
				time.Sleep(time.Until(began.Add(r.cancelAt)))
				r.can, _, r.canErr = try("POST", "http://"+api.addr+"/api/images/cancel", r.hdr(), nil)
			})
		}
	}
	return &wg
}

func waitGroup(t testing.TB, wg *sync.WaitGroup, within time.Duration, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(within):
		t.Fatalf("%s: not all answered within %s", what, within)
	}
}

func terminal(a answer) bool {
	if a.status != 200 {
		return false
	}
	st := a.body["state"]
	return st == "completed" || st == "canceled" || st == "failed"
}

func is5xx(r *faultReq) bool { return r.upErr == nil && r.up.status >= 500 }

// settle polls GET /api/requests until every request has an outcome (for an upsize answered 5xx: an
// outcome, or no trace at all), failing the test for each one still open at the deadline.
func settle(t testing.TB, api *proc, reqs []*faultReq, deadline time.Time) {
	t.Helper()
	open := append([]*faultReq(nil), reqs...)
	for len(open) > 0 {
		var next []*faultReq
		for _, r := range open {
			a, _, err := try("GET", "http://"+api.addr+"/api/requests/"+r.rid, map[string]string{"X-Api-Key": r.user.key}, nil)
			if err == nil && (terminal(a) || (is5xx(r) && a.status == 404)) {
				r.final, r.finalSeen = a, time.Now()
				continue
			}
			if err != nil {
				a = answer{status: -1, body: map[string]any{"error": err.Error()}}
			}
			r.final = a
			next = append(next, r)
		}
		open = next
		if len(open) > 0 && time.Now().After(deadline) {
			for _, r := range open {
				t.Errorf("request %s (upsize answered %v, cancel %v) still has no outcome at the deadline: GET /api/requests says %v",
					r.rid, r.up, r.can, r.final)
			}
			return
		}
		if len(open) > 0 {
			time.Sleep(250 * time.Millisecond)
		}
	}
}

// checkOutcomes checks each request's answers against its outcome, the result images, resends, credits
// and the blob directory; it returns counts for the figures. downOK: the test kills Redis, so an upsize or
// a cancel may have answered a 5xx envelope.
func checkOutcomes(t testing.TB, s *service, api *proc, users []*faultUser, reqs []*faultReq, downOK bool) map[string]int {
	t.Helper()
	n := map[string]int{}
	spent := map[*faultUser]int{}
	completedIDs := map[string]bool{}
	for _, r := range reqs {
		if r.upErr != nil {
			t.Errorf("%s: upsize got no answer: %v", r.rid, r.upErr)
			continue
		}
		if r.canErr != nil {
			t.Errorf("%s: cancel got no answer: %v", r.rid, r.canErr)
			continue
		}
		n[fmt.Sprintf("upsize %d %s", r.up.status, r.up.reason())]++
		if r.cancels {
			n[fmt.Sprintf("cancel %d %s", r.can.status, r.can.reason())]++
		}
		state, _ := r.final.body["state"].(string)
		if r.final.status == 404 {
			state = "no trace"
		}
		n["final "+state]++
		if r.up.status == 202 || r.up.status >= 500 {
			n[fmt.Sprintf("upsize %d, then %s", r.up.status, state)]++
		}
		fail := func(format string, args ...any) {
			t.Errorf("%s (%s of image %d, upsize %v, cancel sent %v: %v, final %v): %s", r.rid, r.scale, r.img.id,
				r.up, r.cancels, r.can, r.final, fmt.Sprintf(format, args...))
		}

		// The upsize's answer against the outcome.
		switch {
		case r.up.status == 201:
			if state != "completed" || imageID(r.up) != imageID(r.final) {
				fail("answered 201, but the request did not complete with that image")
			}
		case r.up.status == 202:
			if d, _ := r.up.body["data"].(map[string]any); d == nil || d["requestId"] != r.rid {
				fail("202 without its requestId")
			}
			if state != "completed" && state != "canceled" {
				fail("answered 202, then ended %q", state)
			}
		case r.up.status == 409 && r.up.reason() == "user_canceled_request":
			if state != "canceled" || !r.cancels {
				fail("answered 409 user_canceled_request, but it was not canceled")
			}
		case downOK && r.up.status >= 500 && r.up.body["success"] == false && r.up.body["code"] == float64(r.up.status) && r.up.reason() != "":
			// Refused while Redis was down: no trace, or (admitted just before) a normal outcome.
			if state != "no trace" && state != "completed" && state != "canceled" {
				fail("answered %d, then ended %q", r.up.status, state)
			}
		default:
			fail("undefined answer to the upsize")
		}
		if state == "failed" {
			fail("the request failed: no request of this burst may fail (the images are valid)")
		}

		// The cancel's answer against the outcome.
		switch {
		case !r.cancels:
			if state == "canceled" {
				fail("canceled, but nobody canceled it")
			}
		case r.can.status == 200 && r.can.reason() == "canceled":
			if state != "canceled" {
				fail("cancel answered 200, but the request ended %q", state)
			}
		case r.can.status == 409 && r.can.reason() == "request_already_completed":
			if state != "completed" {
				fail("cancel answered 409 request_already_completed, but the request ended %q", state)
			}
		case downOK && r.can.status >= 500 && r.can.body["success"] == false && r.can.reason() != "":
			// Redis was down: the cancel did nothing the test can rely on; the outcome is checked above.
		default:
			fail("undefined answer to the cancel")
		}

		if state == "completed" {
			spent[r.user] += r.cost()
			checkResult(t, api, r)
			completedIDs[imageID(r.final)] = true
		}
		// The same request again attaches to its outcome: the same image, or 409; never a second task.
		if state == "completed" || state == "canceled" {
			a, _, err := try("POST", upsizeURL(api, r), r.hdr(), []byte(`{"scaleSize":"`+r.scale+`"}`))
			switch {
			case err != nil:
				fail("resent: %v", err)
			case state == "completed" && (a.status != 201 || imageID(a) != imageID(r.final)):
				fail("resent after completion: %v", a)
			case state == "canceled" && (a.status != 409 || a.reason() != "user_canceled_request"):
				fail("resent after cancel: %v", a)
			}
		}
	}

	// Nothing charged twice, nothing charged for what did not complete.
	for _, u := range users {
		if got, want := s.credits(api, u.id), u.credits-spent[u]; got != want {
			t.Errorf("user %d: credits %d, want %d (%d initial minus %d for the completed requests)", u.id, got, want, u.credits, spent[u])
		}
	}

	// The blob store holds the sources and the completed results, nothing of what was canceled.
	want := map[string]bool{}
	for _, u := range users {
		for _, im := range u.images {
			want["img-"+strconv.FormatInt(im.id, 10)] = true
		}
	}
	for id := range completedIDs {
		want["img-"+id] = true
	}
	got, tmp := testenv.BlobObjects(t, s.env["BLOB_URL"])
	for name := range got {
		if !want[name] {
			t.Errorf("blob store: %s is neither a source nor a completed result (left by a canceled or failed request)", name)
		}
	}
	for name := range want {
		if !got[name] {
			t.Errorf("blob store: %s is missing", name)
		}
	}
	n["temp files left in the blob store"] = tmp
	return n
}

// checkResult reads a completed request's image: metadata, then bytes, decoded in full.
func checkResult(t testing.TB, api *proc, r *faultReq) {
	t.Helper()
	id := imageID(r.final)
	wantRes := fmt.Sprintf("%dx%d", r.img.w*r.factor(), r.img.h*r.factor())
	hdr := map[string]string{"X-Api-Key": r.user.key}
	a, _, err := try("GET", "http://"+api.addr+"/api/images/"+id, hdr, nil)
	if err != nil || a.status != 200 {
		t.Errorf("%s: GET /api/images/%s: %v %v", r.rid, id, a, err)
		return
	}
	im := a.body["image"].(map[string]any)
	info, _ := im["EditInfo"].(map[string]any)
	if im["resolution"] != wantRes || im["scaleSize"] != r.scale || im["ownerId"] != float64(r.user.id) ||
		info == nil || info["variationId"] != float64(r.img.id) {
		t.Errorf("%s: image %s is %v, want %s %s of image %d owned by %d", r.rid, id, im, wantRes, r.scale, r.img.id, r.user.id)
	}
	_, b, err := try("GET", "http://"+api.addr+"/api/images/"+id+"/file", hdr, nil)
	if err != nil {
		t.Errorf("%s: GET /api/images/%s/file: %v", r.rid, id, err)
		return
	}
	img, format, err := image.Decode(bytes.NewReader(b))
	if err != nil {
		t.Errorf("%s: the bytes of image %s do not decode: %v", r.rid, id, err)
		return
	}
	if got := fmt.Sprintf("%dx%d", img.Bounds().Dx(), img.Bounds().Dy()); got != wantRes || format != r.img.format {
		t.Errorf("%s: image %s decodes to %s %s, want %s %s", r.rid, id, format, got, r.img.format, wantRes)
	}
}

// queueLeft counts the tasks asynq still holds (pending, active, scheduled, retry) and those it gave up
// on (archived).
func queueLeft(ctx context.Context, rdb *redis.Client) (left, archived int64, err error) {
	for _, q := range jobs.Queues {
		p := "asynq:{" + q + "}:"
		for _, k := range []string{"pending", "active"} {
			n, err := rdb.LLen(ctx, p+k).Result()
			if err != nil {
				return 0, 0, err
			}
			left += n
		}
		for _, k := range []string{"scheduled", "retry"} {
			n, err := rdb.ZCard(ctx, p+k).Result()
			if err != nil {
				return 0, 0, err
			}
			left += n
		}
		n, err := rdb.ZCard(ctx, p+"archived").Result()
		if err != nil {
			return 0, 0, err
		}
		archived += n
	}
	return left, archived, nil
}

// waitQueueEmpty waits until asynq holds no task, and checks that it gave up on none; it returns when
// the queues were seen empty.
func waitQueueEmpty(t testing.TB, rdb *redis.Client, deadline time.Time) time.Time {
	t.Helper()
	for {
		left, archived, err := queueLeft(context.Background(), rdb)
		if err == nil && left == 0 {
			if archived > 0 {
				t.Errorf("asynq archived %d task(s): it gave up on them", archived)
			}
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Errorf("asynq still holds %d task(s) at the deadline (err %v)", left, err)
			return time.Now()
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func redisClient(t testing.TB, url string) *redis.Client {
	t.Helper()
	o, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(o)
	t.Cleanup(func() { c.Close() })
	return c
}

func alive(t testing.TB, ps ...*proc) {
	t.Helper()
	for _, p := range ps {
		select {
		case err := <-p.done:
			t.Errorf("%s exited during the test: %v", p.name, err)
		default:
		}
	}
}

func logFigures(t testing.TB, n map[string]int) {
	t.Helper()
	keys := make([]string, 0, len(n))
	for k := range n {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.Logf("  %-45s %d", k, n[k])
	}
}

func newRand(t testing.TB) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("FAULTS_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("FAULTS_SEED=%d (the plan of the burst: which images, scales, cancels and when)", seed)
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

// SIGKILL to one of two workers in the middle of a burst of 36 upsizes by three users, a quarter of them
// canceled at random moments; a replacement worker starts 2 s later.
//
// The killed worker's tasks are recovered by asynq alone, and slowly: a task's lease (30 s, extended
// every 5 s by its worker's heartbeat) must have expired, and the recoverer only takes tasks whose lease
// expired more than 30 s ago (clock skew), at its next run: at each server's start and then every 60 s.
// The replacement worker, started at kill+2 s, runs it at about kill+62 s at the latest; then the retry
// delay (1 s) and asynq's forwarder (every 5 s) move the task back to pending. So the killed worker's
// requests stay "running" (their upsizes answer 202) for about a minute, and the test allows 150 s.
func TestFaultsKillWorkerMidBurst(t *testing.T) {
	t.Parallel() // with the Redis test: each mostly waits on asynq's slow paths, and the total stays < 4 min
	s := newService(t)
	rdb := redisClient(t, s.env["REDIS_URL"])
	api := start(t, "api", s.with(map[string]string{"UPSIZE_WAIT_TIMEOUT": "3s"}))
	w1 := start(t, "worker", s.with(map[string]string{"WORKER_CONCURRENCY": "2"}))
	w2 := start(t, "worker", s.with(map[string]string{"WORKER_CONCURRENCY": "2"}))
	users := s.faultUsers(api, 3, 100)
	reqs := plan(newRand(t), users, 36, "kw", 600*time.Millisecond, 0.25)

	began := time.Now()
	wg := fire(api, reqs, began)
	time.Sleep(time.Second)
	if err := w1.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killAt := time.Now()
	select {
	case <-w1.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the worker did not die of SIGKILL")
	}
	time.Sleep(2 * time.Second)
	w3 := start(t, "worker", s.with(map[string]string{"WORKER_CONCURRENCY": "2"}))

	// The killed worker's tasks: by kill+11 s every live worker has extended the leases of its active
	// tasks (heartbeat every 5 s) past kill+30 s, so a lease that ends by kill+30 s belongs to the dead one.
	time.Sleep(time.Until(killAt.Add(11 * time.Second)))
	orphanTasks := map[string]bool{}
	for _, q := range jobs.Queues {
		zs, err := rdb.ZRangeWithScores(context.Background(), "asynq:{"+q+"}:lease", 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, z := range zs {
			if int64(z.Score) <= killAt.Unix()+30 {
				orphanTasks[z.Member.(string)] = true
			}
		}
	}
	var orphans []*faultReq
	for _, r := range reqs {
		if orphanTasks[jobs.TaskID(r.user.id, r.rid)] {
			orphans = append(orphans, r)
		}
	}
	if len(orphans) == 0 || len(orphans) > 2 {
		// With a backlog of ~30 tasks, the killed worker had both its slots busy; its tasks stay leased
		// (canceled or not) until recovered. Anything else means the test did not test what it says.
		t.Errorf("the killed worker (concurrency 2) left %d leased task(s), want 1 or 2: %v", len(orphans), orphanTasks)
	}

	waitGroup(t, wg, 60*time.Second, "the burst")
	deadline := killAt.Add(150 * time.Second)
	settle(t, api, reqs, deadline)
	drained := waitQueueEmpty(t, rdb, deadline)
	alive(t, api, w2, w3)

	n := checkOutcomes(t, s, api, users, reqs, false)
	cancels := 0
	for _, r := range reqs {
		if r.cancels {
			cancels++
		}
	}
	t.Logf("kill -9 of a worker 1 s into a burst of %d upsizes (%d with a cancel), UPSIZE_WAIT_TIMEOUT 3s, 2 workers x 2, replacement at +2 s:",
		len(reqs), cancels)
	logFigures(t, n)
	var lastOther time.Duration
	for _, r := range reqs {
		if !orphanTasks[jobs.TaskID(r.user.id, r.rid)] && r.final.body["state"] == "completed" {
			lastOther = max(lastOther, r.finalSeen.Sub(began))
		}
	}
	t.Logf("  the other requests: last completion seen %.1f s after the burst began", lastOther.Seconds())
	for _, r := range orphans {
		m, _ := rdb.HGetAll(context.Background(), "upsize:req:"+strconv.FormatInt(r.user.id, 10)+":"+r.rid).Result()
		fin, _ := strconv.ParseInt(m["finished"], 10, 64)
		t.Logf("  killed worker's task %s (%s): ended %s, attempts %s, %.1f s after the kill (upsize answered %d)",
			r.rid, r.scale, m["state"], m["attempts"], time.UnixMilli(fin).Sub(killAt).Seconds(), r.up.status)
	}
	t.Logf("  asynq's queues empty %.1f s after the kill (the killed worker's tasks recovered and run or skipped)",
		drained.Sub(killAt).Seconds())
}

// redisServer is a redis-server of the test's own, with AOF fsynced on every write.
type redisServer struct {
	t    testing.TB
	path string
	port int
	dir  string
	cmd  *exec.Cmd
	logs *testlog.Buffer
	done chan error
}

func startRedis(t testing.TB) *redisServer {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	r := &redisServer{t: t, path: path, port: port, dir: t.TempDir(), logs: &testlog.Buffer{}}
	r.run()
	t.Cleanup(func() {
		r.cmd.Process.Kill()
		if t.Failed() {
			t.Logf("--- redis-server logs\n%s", r.logs)
		}
	})
	return r
}

func (r *redisServer) url() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", r.port) }

// run starts redis-server on its port and directory (loading the AOF left by a previous run) and waits
// until it answers PING.
func (r *redisServer) run() {
	t := r.t
	t.Helper()
	r.cmd = exec.Command(r.path, "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--appendonly", "yes", "--appendfsync", "always", "--save", "", "--dir", r.dir)
	r.cmd.Stdout, r.cmd.Stderr = r.logs, r.logs
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.done = make(chan error, 1)
	go func(cmd *exec.Cmd, done chan error) { done <- cmd.Wait() }(r.cmd, r.done)
	c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", r.port)})
	defer c.Close()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := c.Ping(context.Background()).Err()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on port %d does not answer PING: %v\n%s", r.port, err, r.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *redisServer) kill() {
	r.t.Helper()
	r.cmd.Process.Kill()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		r.t.Fatal("redis-server did not die of SIGKILL")
	}
}

// waitReady polls a process's /readyz until 200 and returns when it was seen.
func waitReady(t testing.TB, p *proc, within time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		a, _, err := try("GET", "http://"+p.addr+"/readyz", nil, nil)
		if err == nil && a.status == 200 {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s /readyz not 200 within %s after Redis came back: %v %v", p.name, within, a, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// SIGKILL to Redis (AOF, fsync always) in the middle of a burst of 20 upsizes by two users, down ~2.5 s
// while more upsizes arrive, then started again on the same port and directory. The service must recover
// by itself; every admitted request ends completed or canceled, with nothing acknowledged lost; the
// upsizes refused meanwhile leave no trace and cost nothing.
//
// The slow path: a task that was running when Redis died cannot record its outcome (the processor's
// Complete fails), so it returns an error and asynq must move it to its retry set, which fails too while
// Redis is down. asynq v0.26.0 hands that move to its syncer, to be retried every 5 s until the lease
// ends, but the closure it queues reuses a context that processor.retry has already canceled (the
// `defer cancel()` added by asynq PR #926), so every later attempt fails at once and the task stays
// "active" until the recoverer takes it: lease (30 s) + clock-skew cutoff (30 s) + up to one recoverer
// period (60 s, counted from the worker's start). Such a request stays "running" (its upsize answers 202)
// for up to ~2 minutes after a Redis outage of a few seconds; it then completes, charged once. A request
// admitted just before the kill whose enqueue failed is enqueued by the API's sweeper (every 10 s,
// requests older than 30 s). The test allows 170 s after Redis is back.
func TestFaultsRestartRedisMidBurst(t *testing.T) {
	t.Parallel()
	rs := startRedis(t)
	s := &service{t: t, token: "e2e-admin", env: map[string]string{
		"REDIS_URL": rs.url(), "BLOB_URL": testenv.BlobURL(t), "ADMIN_TOKEN": "e2e-admin", "LOG_LEVEL": "info",
	}}
	rdb := redisClient(t, rs.url())
	api := start(t, "api", s.with(map[string]string{"UPSIZE_WAIT_TIMEOUT": "3s"}))
	w := start(t, "worker", s.with(map[string]string{"WORKER_CONCURRENCY": "2"}))
	users := s.faultUsers(api, 2, 100)
	rng := newRand(t)
	// Spread over 1.3 s, so that the kill at 1 s falls among admissions as well as waits and tasks.
	reqs := plan(rng, users, 20, "rr", 1300*time.Millisecond, 0.2)

	began := time.Now()
	wg := fire(api, reqs, began)
	time.Sleep(time.Second)
	rs.kill()
	downAt := time.Now()

	// Upsizes while Redis is down. Each is answered before Redis is started again (the WaitGroup), so
	// they are refusals, not requests that a retry inside the API carried over the restart.
	type refusal struct {
		r    *faultReq
		took time.Duration
	}
	var refused []*refusal
	var rwg sync.WaitGroup
	for i := range 5 {
		u := users[i%len(users)]
		f := &refusal{r: &faultReq{user: u, rid: fmt.Sprintf("rr-down-%d-%d", i, rng.Uint32()), img: u.images[0], scale: "2x"}}
		refused = append(refused, f)
		rwg.Go(func() {
			time.Sleep(time.Duration(50+120*i) * time.Millisecond)
			t0 := time.Now()
			f.r.up, _, f.r.upErr = try("POST", upsizeURL(api, f.r), f.r.hdr(), []byte(`{"scaleSize":"2x"}`))
			f.took = time.Since(t0)
		})
	}
	// Readiness while down, beside the refusals: each probe takes as long as the Redis client's retries.
	var apiReady, workerReady answer
	var apiReadyTook, workerReadyTook time.Duration
	for _, pr := range []struct {
		p    *proc
		a    *answer
		took *time.Duration
	}{{api, &apiReady, &apiReadyTook}, {w, &workerReady, &workerReadyTook}} {
		rwg.Go(func() {
			time.Sleep(300 * time.Millisecond)
			t0 := time.Now()
			*pr.a, _, _ = try("GET", "http://"+pr.p.addr+"/readyz", nil, nil)
			*pr.took = time.Since(t0)
		})
	}
	waitGroup(t, &rwg, 20*time.Second, "the upsizes sent while Redis was down")
	time.Sleep(time.Until(downAt.Add(2500 * time.Millisecond)))
	restartAt := time.Now()
	rs.run()
	upAt := time.Now()

	if apiReady.status != 503 || workerReady.status != 503 {
		t.Errorf("/readyz while Redis was down: api %d, worker %d, want 503", apiReady.status, workerReady.status)
	}
	for _, f := range refused {
		a := f.r.up
		if f.r.upErr != nil || a.status < 500 || a.body["success"] != false || a.body["code"] != float64(a.status) || a.reason() == "" {
			t.Errorf("upsize %s while Redis was down: %v %v, want a 5xx error envelope", f.r.rid, a, f.r.upErr)
		}
	}

	// Recovery: readiness, then a new upsize that completes (it may queue behind the burst).
	apiBack := waitReady(t, api, 30*time.Second)
	workerBack := waitReady(t, w, 30*time.Second)
	u := users[0]
	fresh := &faultReq{user: u, rid: fmt.Sprintf("rr-after-%d", rng.Uint32()), img: u.images[len(u.images)-1], scale: "2x"}
	fa, _, err := try("POST", upsizeURL(api, fresh), fresh.hdr(), []byte(`{"scaleSize":"2x"}`))
	if err != nil || (fa.status != 201 && fa.status != 202) {
		t.Fatalf("new upsize after Redis came back: %v %v", fa, err)
	}
	fresh.up = fa
	settle(t, api, []*faultReq{fresh}, time.Now().Add(60*time.Second))
	if fresh.final.body["state"] != "completed" {
		t.Errorf("new upsize after Redis came back ended %v", fresh.final)
	}

	waitGroup(t, wg, 60*time.Second, "the burst")
	deadline := upAt.Add(170 * time.Second)
	settle(t, api, reqs, deadline)
	drained := waitQueueEmpty(t, rdb, deadline)
	alive(t, api, w)

	// The refused upsizes left no trace and cost nothing (the credits are checked with the burst's).
	for _, f := range refused {
		a, _, err := try("GET", "http://"+api.addr+"/api/requests/"+f.r.rid, map[string]string{"X-Api-Key": f.r.user.key}, nil)
		if err != nil || a.status != 404 || a.reason() != "no_request ("+f.r.rid+")" {
			t.Errorf("upsize %s refused while Redis was down left a trace: %v %v", f.r.rid, a, err)
		}
	}
	all := append(append([]*faultReq(nil), reqs...), fresh)
	n := checkOutcomes(t, s, api, users, all, true)

	t.Logf("Redis (AOF, appendfsync always) SIGKILLed 1 s into a burst of %d upsizes, restarted %.1f s later (PING after %d ms), UPSIZE_WAIT_TIMEOUT 3s, 1 worker x 2:",
		len(reqs), restartAt.Sub(downAt).Seconds(), upAt.Sub(restartAt).Milliseconds())
	logFigures(t, n)
	for _, f := range refused {
		t.Logf("  upsize while Redis was down: %v in %d ms", f.r.up, f.took.Milliseconds())
	}
	t.Logf("  /readyz while down: api %d in %d ms, worker %d in %d ms; 200 again after Redis came back: api %d ms, worker %d ms",
		apiReady.status, apiReadyTook.Milliseconds(), workerReady.status, workerReadyTook.Milliseconds(),
		apiBack.Sub(upAt).Milliseconds(), workerBack.Sub(upAt).Milliseconds())
	// The first outcome recorded after the restart, from the registry's own clock.
	first := time.Duration(-1)
	for _, r := range all {
		m, _ := rdb.HGetAll(context.Background(), "upsize:req:"+strconv.FormatInt(r.user.id, 10)+":"+r.rid).Result()
		if fin, _ := strconv.ParseInt(m["finished"], 10, 64); m["state"] == "completed" && time.UnixMilli(fin).After(upAt) {
			if d := time.UnixMilli(fin).Sub(upAt); first < 0 || d < first {
				first = d
			}
		}
	}
	t.Logf("  first upsize completed %d ms after Redis came back; the new upsize answered %d, completed after %d ms",
		first.Milliseconds(), fa.status, fresh.finalSeen.Sub(upAt).Milliseconds())
	var last time.Time
	for _, r := range reqs {
		if d := r.finalSeen.Sub(upAt); d > 20*time.Second {
			t.Logf("  slow path: %s (upsize answered %d) ended %v %.1f s after Redis came back", r.rid, r.up.status, r.final.body["state"], d.Seconds())
		}
		if r.finalSeen.After(last) {
			last = r.finalSeen
		}
	}
	t.Logf("  every burst request had its outcome %.1f s after Redis came back; asynq's queues empty after %.1f s",
		last.Sub(upAt).Seconds(), drained.Sub(upAt).Seconds())
}
