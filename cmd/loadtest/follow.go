package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"time"
)

// How a 202 is followed (-follow), and how it was (request.FollowedBy).
const (
	followPoll     = "poll"     // GET /api/requests/{id} every -poll-interval
	followSSE      = "sse"      // its event stream, GET /api/requests/{id}/events
	followFallback = "sse+poll" // its event stream first, then polling (docs/loadtest.md, "Following by SSE")
)

// The event stream's reconnections: after a stream that failed (it ended before the final state, the
// connection failed or stalled, or it answered 5xx) the tool waits sseBackoff, doubling each time, and opens
// it again; after sseMaxReconnects it polls instead. A 429 (the user's streams are full) polls at once.
const (
	sseMaxReconnects = 3
	sseBackoff       = 100 * time.Millisecond
	// sseIdle is how long a stream may stay silent, heartbeats included (every 15 s by default), before it
	// counts as stalled.
	sseIdle = time.Minute
)

// followResult is what following a 202 found.
type followResult struct {
	Outcome outcome
	Reason  string
	By      string // followPoll, followSSE or followFallback
	// FirstEvent and FinalEvent run from the 202 to the first event of its stream (any event; heartbeats
	// are comments, not events) and to the event with its final state; 0 when none came.
	FirstEvent, FinalEvent time.Duration
	Reconnects             int // event streams opened again
}

// follow follows a request answered 202 at accepted until its state is final, -follow-timeout passes or
// the run stops: by polling, or by its event stream with polling as the fallback (-follow).
func (r *runner) follow(p *plan, accepted time.Time) followResult {
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.FollowTimeout)
	defer cancel()
	res := followResult{By: followPoll}
	last := "no answer"
	if r.cfg.Follow == followSSE {
		res.By = followSSE
		var final bool
		if final, last = r.followEvents(ctx, p, accepted, &res); final {
			return res
		}
		if ctx.Err() != nil {
			res.Outcome, res.Reason = r.unfinished(last)
			return res
		}
		res.By = followFallback
	}
	res.Outcome, res.Reason = r.poll(ctx, p, last)
	return res
}

// poll asks GET /api/requests/{id} every -poll-interval until the state is final or ctx ends; last is
// what following saw so far.
func (r *runner) poll(ctx context.Context, p *plan, last string) (outcome, string) {
	url := r.cfg.Base.String() + "/api/requests/" + p.RequestID
	hdr := http.Header{"X-Api-Key": {p.Account.Key}}
	tick := time.NewTicker(r.cfg.PollInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return r.unfinished(last)
		case <-tick.C:
		}
		code, body, err := send(ctx, r.api, http.MethodGet, url, hdr, nil)
		o, why, final := followed(code, body, err)
		if final {
			return o, why
		}
		last = why
	}
}

// unfinished is the outcome of a follow cut short, by the run's end or by -follow-timeout.
func (r *runner) unfinished(last string) (outcome, string) {
	if r.ctx.Err() != nil {
		return interrupted, "while following a 202: " + last
	}
	return acceptedUnresolved, "after -follow-timeout: " + last
}

// followed reads one answer of GET /api/requests/{id}, or the data of one state event of its stream
// (code 200); final says whether the request's fate is known.
func followed(code int, body []byte, err error) (o outcome, why string, final bool) {
	switch {
	case err != nil:
		return "", err.Error(), false
	case code == http.StatusTooManyRequests || code >= 500:
		return "", fmt.Sprintf("%d %s", code, reason(body)), false // busy: ask again
	case code != http.StatusOK:
		// the service lost track of a request it accepted (404 no_request): no state will come
		return acceptedUnresolved, fmt.Sprintf("%d %s", code, reason(body)), true
	}
	var st struct {
		State string `json:"state"`
		Error struct {
			Code int    `json:"code"`
			Data string `json:"data"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return "", "unreadable state", false
	}
	switch st.State {
	case "completed":
		return acceptedCompleted, "", true
	case "canceled":
		return acceptedCanceled, "", true
	case "failed":
		return acceptedFailed, fmt.Sprintf("%d %s", st.Error.Code, st.Error.Data), true
	}
	return "", st.State, false
}

// followEvents follows a request by its event stream, opened again after a failure (sseBackoff,
// sseMaxReconnects). final says whether res has the outcome; if not, last is what was seen and the
// caller polls, unless ctx has ended.
func (r *runner) followEvents(ctx context.Context, p *plan, accepted time.Time, res *followResult) (final bool, last string) {
	url := r.cfg.Base.String() + "/api/requests/" + p.RequestID + "/events"
	var lastID string
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if attempt > sseMaxReconnects {
				return false, last
			}
			t := time.NewTimer(sseBackoff << (attempt - 1))
			select {
			case <-ctx.Done():
				t.Stop()
				return false, last
			case <-t.C:
			}
			res.Reconnects++
		}
		s := r.stream(ctx, url, p.Account.Key, lastID, accepted, res)
		if s.final {
			return true, ""
		}
		last, lastID = s.why, s.lastID
		if s.poll || ctx.Err() != nil {
			return false, last
		}
	}
}

// streamEnd is how one event stream ended.
type streamEnd struct {
	final  bool   // res has the outcome
	poll   bool   // follow by polling from now on (the stream answered 429)
	why    string // what was last seen, when not final
	lastID string // the last event id, sent again on reconnection (Last-Event-ID)
}

// stream opens the event stream once and reads it until the final state, its end, or a failure.
func (r *runner) stream(parent context.Context, url, key, lastID string, accepted time.Time, res *followResult) streamEnd {
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return streamEnd{why: err.Error(), lastID: lastID}
	}
	req.Header = http.Header{"X-Api-Key": {key}, "Accept": {"text/event-stream"}, "Cache-Control": {"no-cache"}}
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := r.sse.Do(req)
	if err != nil {
		return streamEnd{why: "events: " + err.Error(), lastID: lastID}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		o, why, final := followed(resp.StatusCode, body, err)
		if final { // 404 no_request: the service lost the request
			res.Outcome, res.Reason = o, why
			return streamEnd{final: true}
		}
		return streamEnd{poll: resp.StatusCode == http.StatusTooManyRequests, why: "events: " + why, lastID: lastID}
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/event-stream" {
		return streamEnd{why: fmt.Sprintf("events: 200 with Content-Type %q", resp.Header.Get("Content-Type")), lastID: lastID}
	}

	// A stream silent for sseIdle, heartbeats included, is stalled: end it.
	errIdle := fmt.Errorf("nothing for %s", sseIdle)
	idle := time.AfterFunc(sseIdle, func() { cancel(errIdle) })
	defer idle.Stop()
	sr := newSSEReader(activity{resp.Body, func() { idle.Reset(sseIdle) }})
	seen := "" // the last state the stream told
	for {
		ev, err := sr.next()
		if err != nil {
			end := "the stream ended before the final state"
			switch {
			case parent.Err() != nil:
				end = "the stream was still open"
			case errors.Is(context.Cause(ctx), errIdle):
				end = errIdle.Error()
			case !errors.Is(err, io.EOF):
				end = err.Error()
			}
			if seen != "" {
				end += " (last state: " + seen + ")"
			}
			return streamEnd{why: "events: " + end, lastID: sr.lastID}
		}
		if res.FirstEvent == 0 {
			res.FirstEvent = time.Since(accepted)
		}
		if ev.Type != "state" {
			continue // no event of another type is defined; a later service may add some
		}
		o, why, final := followed(http.StatusOK, []byte(ev.Data), nil)
		if final {
			res.FinalEvent = time.Since(accepted)
			res.Outcome, res.Reason = o, why
			return streamEnd{final: true}
		}
		seen = why
	}
}

// activity calls on each read that brings bytes.
type activity struct {
	io.Reader
	on func()
}

func (a activity) Read(p []byte) (int, error) {
	n, err := a.Reader.Read(p)
	if n > 0 {
		a.on()
	}
	return n, err
}
