package e2e

import (
	"sync"
	"testing"
	"time"
)

// Many processes on one Redis and one blob store (an S3 bucket when TEST_BLOB=s3, as make test runs it):
// two APIs and two workers; upsizes spread over both APIs, and every cancel sent to the other API than the
// one holding the waiting upsize. Every request ends in one outcome, both APIs agree on it, each
// canceled waiter answers 409 from its own API, and every account settles exactly.
func TestTwoAPIsTwoWorkers(t *testing.T) {
	s := newService(t)
	apis := []*proc{
		start(t, "api", s.with(map[string]string{"UPSIZE_WAIT_TIMEOUT": "20s"})),
		start(t, "api", s.with(map[string]string{"UPSIZE_WAIT_TIMEOUT": "20s"})),
	}
	start(t, "worker", s.with(map[string]string{"WORKER_CONCURRENCY": "2"}))
	start(t, "worker", s.with(map[string]string{"WORKER_CONCURRENCY": "2"}))
	users := s.faultUsers(apis[0], 3, 200)
	reqs := plan(newRand(t), users, 40, "two", 800*time.Millisecond, 0.4)

	began := time.Now()
	var wg sync.WaitGroup
	for i, r := range reqs {
		holder, other := apis[i%2], apis[(i+1)%2]
		wg.Go(func() {
			time.Sleep(time.Until(began.Add(r.at)))
			t0 := time.Now()
			r.up, _, r.upErr = try("POST", upsizeURL(holder, r), r.hdr(), []byte(`{"scaleSize":"`+r.scale+`"}`))
			r.upTook = time.Since(t0)
		})
		if r.cancels {
			wg.Go(func() {
				time.Sleep(time.Until(began.Add(r.cancelAt)))
				r.can, _, r.canErr = try("POST", "http://"+other.addr+"/api/images/cancel", r.hdr(), nil)
			})
		}
	}
	waitGroup(t, &wg, 90*time.Second, "the burst")
	settle(t, apis[0], reqs, time.Now().Add(60*time.Second))
	n := checkOutcomes(t, s, apis[0], users, reqs, false)

	// Both APIs tell the same outcome.
	for _, r := range reqs {
		a, _, err := try("GET", "http://"+apis[1].addr+"/api/requests/"+r.rid, map[string]string{"X-Api-Key": r.user.key}, nil)
		if err != nil || a.status != r.final.status || a.body["state"] != r.final.body["state"] {
			t.Errorf("%s: API 1 says %v (%v), API 0 says %v", r.rid, a, err, r.final)
		}
	}
	canceledAcross := 0
	for _, r := range reqs {
		if r.cancels && r.up.status == 409 && r.can.status == 200 {
			canceledAcross++
		}
	}
	if canceledAcross == 0 {
		t.Errorf("no upsize was canceled through the other API: the test did not test that (%v)", n)
	}
	t.Logf("two APIs, two workers, %d upsizes, cancels through the other API: %d answered 409 on the holding API", len(reqs), canceledAcross)
	logFigures(t, n)
}
