package httpapi_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"upsize/internal/callback"
	"upsize/internal/testenv"
	"upsize/internal/testimg"
)

// sseEvent is one event of a stream, or a comment line (comment set).
type sseEvent struct {
	name    string
	data    map[string]any
	raw     string
	comment string
}

// openEvents opens the event stream of rid and returns its events as they come; the channel closes
// when the stream ends.
func openEvents(t *testing.T, e *testenv.Env, key, rid string) (*http.Response, <-chan sseEvent) {
	t.Helper()
	req, _ := http.NewRequest("GET", e.Server.URL+"/api/requests/"+rid+"/events", nil)
	req.Header.Set("X-Api-Key", key)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan sseEvent, 64)
	if res.StatusCode != 200 {
		close(out)
		return res, out
	}
	go func() {
		defer close(out)
		defer res.Body.Close()
		sc := bufio.NewScanner(res.Body)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, ":"):
				out <- sseEvent{comment: strings.TrimSpace(line[1:])}
			case strings.HasPrefix(line, "event: "):
				ev.name = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				ev.raw = line[len("data: "):]
				json.Unmarshal([]byte(ev.raw), &ev.data)
			case line == "" && ev.name != "":
				out <- ev
				ev = sseEvent{}
			}
		}
	}()
	return res, out
}

func next(t *testing.T, events <-chan sseEvent, within time.Duration) (sseEvent, bool) {
	t.Helper()
	for {
		select {
		case ev, ok := <-events:
			if ok && ev.comment != "" {
				continue
			}
			return ev, ok
		case <-time.After(within):
			t.Fatalf("no event within %s", within)
		}
	}
}

// A stream follows its request from the queue (with the tasks ahead of it) through running to its final
// state, whose data is GET /api/requests' body, and then ends.
func TestEventsFollowARequestToItsEnd(t *testing.T) {
	e := testenv.New(t, testenv.Options{NoWorker: true, WaitTimeout: 50 * time.Millisecond})
	e.Configure()
	u := e.NewUser("paid", 100)
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(64, 64)))
	for i := 0; i < 3; i++ {
		e.Want(e.Upsize(context.Background(), u.Key, id, "2x", fmt.Sprintf("ev-%d", i)), 202, "")
	}
	res, events := openEvents(t, e, u.Key, "ev-2")
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("HTTP %d, %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	first, _ := next(t, events, 5*time.Second)
	if first.name != "state" || first.data["state"] != "queued" || fmt.Sprint(first.data["position"]) != "2" {
		t.Fatalf("first event %s %s: want queued with 2 tasks ahead", first.name, first.raw)
	}
	e.StartWorker()
	var states []string
	var last sseEvent
	for {
		ev, ok := next(t, events, 20*time.Second)
		if !ok {
			break
		}
		states = append(states, fmt.Sprint(ev.data["state"]))
		last = ev
	}
	if last.data["state"] != "completed" {
		t.Fatalf("states %v: the stream did not end with completed", states)
	}
	get := e.RequestState(u.Key, "ev-2")
	var want map[string]any
	json.Unmarshal(get.Body, &want)
	if fmt.Sprint(last.data) != fmt.Sprint(want) {
		t.Fatalf("final event %s\nGET says %s", last.raw, get.Body)
	}
	t.Logf("events of ev-2: queued (2 ahead) then %v", states)
}

// Canceled requests end their streams too; an unknown id is 404; a user's streams are bounded; idle
// streams get heartbeats.
func TestEventsCancelLimitsAndHeartbeats(t *testing.T) {
	e := testenv.New(t, testenv.Options{NoWorker: true, WaitTimeout: 50 * time.Millisecond, EventHeartbeat: 100 * time.Millisecond})
	e.Configure()
	u := e.NewUser("paid", 100)
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(32, 32)))
	e.Want(e.Upsize(context.Background(), u.Key, id, "2x", "c-1"), 202, "")

	res, events := openEvents(t, e, u.Key, "c-1")
	if res.StatusCode != 200 {
		t.Fatalf("HTTP %d", res.StatusCode)
	}
	next(t, events, 5*time.Second) // queued
	// An idle stream carries heartbeats.
	select {
	case ev := <-events:
		if ev.comment != "heartbeat" {
			t.Fatalf("want a heartbeat, got %+v", ev)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no heartbeat within 2 s at a 100 ms heartbeat")
	}
	e.Want(e.Cancel(u.Key, "c-1"), 200, "")
	final, _ := next(t, events, 5*time.Second)
	if final.data["state"] != "canceled" {
		t.Fatalf("after the cancel: %s", final.raw)
	}
	if _, ok := next(t, events, 5*time.Second); ok {
		t.Fatal("the stream went on after the final state")
	}

	nf, _ := openEvents(t, e, u.Key, "never-seen")
	if nf.StatusCode != 404 {
		t.Fatalf("unknown request id: HTTP %d", nf.StatusCode)
	}
	other := e.NewUser("paid", 0)
	if r, _ := openEvents(t, e, other.Key, "c-1"); r.StatusCode != 404 {
		t.Fatalf("another user's request: HTTP %d", r.StatusCode)
	}

	// At most 8 open streams per user on one replica.
	e.Want(e.Upsize(context.Background(), u.Key, id, "2x", "c-2"), 202, "")
	var open []*http.Response
	for i := 0; i < 8; i++ {
		r, _ := openEvents(t, e, u.Key, "c-2")
		if r.StatusCode != 200 {
			t.Fatalf("stream %d: HTTP %d", i, r.StatusCode)
		}
		open = append(open, r)
	}
	if r, _ := openEvents(t, e, u.Key, "c-2"); r.StatusCode != 429 || r.Header.Get("Retry-After") == "" {
		t.Fatalf("9th stream: HTTP %d", r.StatusCode)
	}
	for _, r := range open {
		r.Body.Close()
	}
}

// Rule 2 for X-Callback-Url, and a completion callback that arrives signed at a real receiver.
func TestCallbackRuleAndDelivery(t *testing.T) {
	got := make(chan *http.Request, 4)
	bodies := make(chan []byte, 4)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- r
		bodies <- b
	}))
	defer receiver.Close()
	host := strings.TrimPrefix(receiver.URL, "http://")
	e := testenv.New(t, testenv.Options{CallbackHosts: []string{host}})
	e.Configure()
	u := e.NewUser("paid", 100)
	id := e.UploadOK(u.Key, testimg.EncodePNG(testimg.Gradient(32, 32)))
	upsize := func(rid, url string) *testenv.Resp {
		return e.Do(testenv.Req{Method: "POST", Path: fmt.Sprintf("/api/images/%d/upsize", id), Key: u.Key,
			Header: map[string]string{"X-Request-Id": rid, "X-Callback-Url": url}})
	}
	// No webhook secret yet: callbacks are always signed.
	e.Want(upsize("cb-0", receiver.URL+"/hook"), 400, "callback_not_allowed")
	r := e.Do(testenv.Req{Method: "POST", Path: fmt.Sprintf("/admin/users/%d/webhook-secret", u.ID), Admin: true})
	e.Want(r, 201, "")
	secret := r.JSON()["secret"].(string)
	for _, bad := range []string{"http://evil.example/hook", "ftp://" + host + "/x", "/relative", "http://" + host + ":1/x"} {
		e.Want(upsize("cb-bad", bad), 400, "callback_not_allowed")
	}
	e.Want(upsize("cb-1", receiver.URL+"/hook?k=v"), 201, "")
	select {
	case req := <-got:
		body := <-bodies
		if err := callback.Verify(secret, req.Header.Get(callback.HeaderSignature), body, time.Minute, time.Now()); err != nil {
			t.Fatalf("signature: %v", err)
		}
		want := e.RequestState(u.Key, "cb-1")
		if string(body) != string(want.Body) || req.URL.RawQuery != "k=v" || req.Header.Get(callback.HeaderDelivery) == "" {
			t.Fatalf("callback body %s, query %q; GET says %s", body, req.URL.RawQuery, want.Body)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no callback within 20 s")
	}
}
