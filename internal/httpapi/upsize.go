package httpapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"

	"upsize/internal/cancel"
	"upsize/internal/errcode"
	"upsize/internal/jobs"
	"upsize/internal/metrics"
	"upsize/internal/policy"
	"upsize/internal/store"
)

// maxUpsizeBody bounds the JSON body of an upsize ({"scaleSize": "8x"} is 18 bytes).
const maxUpsizeBody = 4 << 10

var platforms = map[string]bool{"web": true, "app": true, "figma": true, "api": true}

// parseScale reads the optional body: nothing, {}, or a null scaleSize mean 2x. Anything but one JSON
// object (with nothing after it, no key twice) whose scaleSize is "2x", "4x" or "8x" is not a scale.
func parseScale(body []byte) (string, bool) {
	m, err := decodeObject(body)
	if err != nil {
		return "", false
	}
	raw, ok := m["scaleSize"]
	if !ok || string(raw) == "null" {
		return "2x", true
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	if _, ok := policy.ScaleFactor(s); !ok {
		return "", false
	}
	return s, true
}

// handleUpsize is POST /api/images/{id}/upsize: parse (rule 2), rule 3, load (rule 4), check (rules
// 5-12, package policy), backpressure (13), admit (14), await. Rule 1 ran in apiKeyAuth. The request's
// outcome is decided in the registry, never here.
func handleUpsize(d *Deps) gin.HandlerFunc {
	return func(c *gin.Context) {
		began := time.Now()
		ctx := c.Request.Context()
		u := currentUser(c)
		scaleLabel := "unknown"
		defer func() { countUpsize(c, d.Measure, scaleLabel) }()

		ask, ok := parseUpsize(c, d)
		if !ok {
			return
		}
		if ask.scaleOK {
			scaleLabel = ask.scale
		}
		// Rule 3: a request id this user has used before decides the answer by itself.
		known, err := d.Registry.Get(ctx, u.ID, ask.rid)
		if err == nil {
			answerKnown(c, d, known, ask, began)
			return
		} else if !errors.Is(err, cancel.ErrNotFound) {
			unavailable(c, errcode.QueueUnavailable, err)
			return
		}
		src, ok := visibleImage(c, d.Store) // rule 4
		if !ok {
			return
		}
		settings, err := d.Store.GetSettings(ctx)
		if err != nil {
			unavailable(c, errcode.QueueUnavailable, err)
			return
		}
		up, refused := policy.Check(u, src, ask.scale, ask.scaleOK, settings,
			policy.Limits{MaxInputPixels: d.Limits.MaxInputPixels, MaxOutputPixels: d.Limits.MaxOutputPixels})
		if refused != nil {
			fail(c, refused)
			return
		}
		if !backpressure(c, d, u.ID) {
			return
		}
		queue, ok := admit(c, d, u, ask, src, up, began)
		if !ok {
			return
		}
		// Watch before enqueuing: the outcome cannot be announced before the task exists.
		wake, stop := d.Hub.Watch(u.ID, ask.rid)
		defer stop()
		if !enqueue(c, d, u.ID, ask.rid, queue) {
			return
		}
		await(c, d, u.ID, ask.rid, wake, began)
	}
}

// parseUpsize is rule 2 and what the request asks for: a malformed header answers here; a scale or id
// that does not parse is judged later, in SPEC's order.
func parseUpsize(c *gin.Context, d *Deps) (asked, bool) {
	if p := c.GetHeader("X-Platform"); p != "" && !platforms[p] {
		fail(c, errcode.InvalidPlatform.E())
		return asked{}, false
	}
	if c.GetBool(ctxBadRID) {
		fail(c, errcode.InvalidRequestID.E())
		return asked{}, false
	}
	callback, ok := callbackURL(c, d)
	if !ok {
		return asked{}, false
	}
	body, ok := readBody(c, maxUpsizeBody)
	if !ok {
		return asked{}, false
	}
	a := asked{rid: c.GetString(ctxRequestID), callback: callback}
	a.scale, a.scaleOK = parseScale(body)
	a.imageID, a.idOK = parseID(c.Param("id"))
	return a, true
}

// callbackURL is rule 2 for X-Callback-Url: absent, or an allowed URL of a user who has a webhook secret
// (callbacks are always signed).
func callbackURL(c *gin.Context, d *Deps) (string, bool) {
	vals, sent := c.Request.Header["X-Callback-Url"]
	if !sent {
		return "", true
	}
	if len(vals) != 1 || d.CallbackAllowed == nil || d.CallbackAllowed(vals[0]) != nil {
		fail(c, errcode.CallbackNotAllowed.E())
		return "", false
	}
	secret, err := d.Store.WebhookSecret(c.Request.Context(), currentUser(c).ID)
	switch {
	case err != nil:
		unavailable(c, errcode.ServiceUnavailable, err)
		return "", false
	case secret == "":
		fail(c, errcode.CallbackNotAllowed.E())
		return "", false
	}
	return vals[0], true
}

// backpressure is rule 13, from the caller's open requests and the queue's backlog.
func backpressure(c *gin.Context, d *Deps, userID int64) bool {
	ctx := c.Request.Context()
	var open int64
	if d.Registry.MaxOpen() > 0 {
		var err error
		if open, err = d.Registry.OpenCount(ctx, userID); err != nil {
			unavailable(c, errcode.QueueUnavailable, err)
			return false
		}
	}
	backlog, err := d.Queue.Backlog(ctx)
	if err != nil {
		unavailable(c, errcode.QueueUnavailable, err)
		return false
	}
	l := d.Limits
	refusal := policy.Backpressure(open, d.Registry.MaxOpen(), backlog.Tasks, l.QueueMaxBacklog, backlog.Work, l.QueueMaxBacklogWork)
	if refusal == nil {
		return true
	}
	wait := policy.Wait(refusal, open, backlog.Tasks, l.QueueMaxBacklog, backlog.Work, l.QueueMaxBacklogWork)
	c.Header("Retry-After", strconv.Itoa(d.Queue.RetryAfter(ctx, wait)))
	fail(c, refusal)
	return false
}

// admit is rule 14: reserve and record atomically. The id may have been taken since rule 3, and the
// caller's open requests are counted again, atomically.
func admit(c *gin.Context, d *Deps, u store.User, ask asked, src store.Image, up policy.Upsize, began time.Time) (queue string, ok bool) {
	first, more := jobs.QueuesFor(u.Plan, up.Work)
	res, err := d.Registry.Admit(c.Request.Context(), cancel.Admission{
		UserID: u.ID, RequestID: ask.rid, ImageID: src.ID, Scale: up.Scale, Model: up.Model,
		Cost: up.Cost, Work: up.Work, Queue: first, QueueMore: more, Lane: jobs.Lane, TaskID: jobs.TaskID(u.ID, ask.rid),
		CallbackURL: ask.callback,
	})
	switch {
	case err != nil:
		unavailable(c, errcode.QueueUnavailable, err)
	case res.Exists:
		answerKnown(c, d, res.Request, ask, began)
	case res.TooMany: // lost the race for the caller's last open place: as rule 13 would have answered
		backlog, _ := d.Queue.Backlog(c.Request.Context())
		wait := backlog.Work / time.Duration(max(d.Registry.MaxOpen(), 1))
		c.Header("Retry-After", strconv.Itoa(d.Queue.RetryAfter(c.Request.Context(), wait)))
		fail(c, errcode.TooManyRequests.E())
	case res.NoCredit:
		fail(c, errcode.NotEnoughCredit.E())
	default:
		return res.Request.Queue, true
	}
	return "", false
}

// enqueue puts the admitted request's task on its queue. When that fails, nothing will run it: it is
// failed and refunded (or the cancel that came first stands), and await answers what the registry says.
func enqueue(c *gin.Context, d *Deps, userID int64, rid, queue string) bool {
	ctx := c.Request.Context()
	if err := d.Queue.Enqueue(ctx, queue, jobs.Payload{UserID: userID, RequestID: rid}); err != nil {
		if _, ferr := d.Registry.Fail(ctx, userID, rid, errcode.QueueUnavailable.Status, errcode.QueueUnavailable.Name); ferr != nil {
			// Redis is gone: the request stays recorded (its credits reserved) and the sweeper will
			// enqueue it, so it is accepted, not refused: 202, and GET /api/requests tells the end.
			c.Set(ctxErr, errors.Join(err, ferr))
			accepted(c, rid)
			return false
		}
	} else if err := d.Registry.Enqueued(ctx, userID, rid); err != nil {
		// Harmless: the sweeper finds the task already there.
		d.Log.Warn("could not confirm an enqueue", "request_id", rid, "user_id", userID, "err", err)
	}
	return true
}

// asked is what an upsize asks for, as far as it could be parsed.
type asked struct {
	rid      string
	callback string // X-Callback-Url, checked
	imageID  int64
	idOK     bool
	scale    string
	scaleOK  bool
}

// knownAnswer is rule 3 for a request id the user has used before.
type knownAnswer int

const (
	knownCanceled knownAnswer = iota // a tombstone or a canceled request: 409
	knownAttach                      // the same image and scale: the first request's outcome
	knownReused                      // anything else: 422 request_id_reused
)

func judgeKnown(known cancel.Request, ask asked) knownAnswer {
	switch {
	case known.State == cancel.Canceled:
		return knownCanceled
	case ask.idOK && ask.imageID == known.ImageID && ask.scaleOK && ask.scale == known.Scale:
		return knownAttach
	}
	return knownReused
}

// answerKnown answers rule 3: 409, the first request's outcome (waiting for it), or 422.
func answerKnown(c *gin.Context, d *Deps, known cancel.Request, ask asked, began time.Time) {
	switch judgeKnown(known, ask) {
	case knownCanceled:
		c.Set(ctxOutcome, "canceled")
		fail(c, errcode.UserCanceled.E())
	case knownAttach:
		wake, stop := d.Hub.Watch(known.UserID, known.ID)
		defer stop()
		await(c, d, known.UserID, known.ID, wake, began)
	default:
		fail(c, errcode.RequestIDReused.E())
	}
}

// await answers with the request's outcome once the registry has one, or 202 when UPSIZE_WAIT_TIMEOUT
// (counted from the request's arrival) runs out first. It re-reads the state only when the hub says it
// may have changed. A client that goes away does not cancel anything. The request is admitted, so a
// Redis outage meanwhile is not an error of the request: it is re-read once Redis answers again (the hub
// wakes everyone when its subscription comes back; a short back-off covers the rest) or answered 202.
func await(c *gin.Context, d *Deps, userID int64, rid string, wake <-chan struct{}, began time.Time) {
	ctx := c.Request.Context()
	timer := time.NewTimer(max(0, d.Limits.WaitTimeout-time.Since(began)))
	defer timer.Stop()
	woken := false
	for {
		var retry <-chan time.Time
		req, err := d.Registry.Get(ctx, userID, rid)
		switch {
		case err != nil:
			retry = time.After(250 * time.Millisecond)
		case req.State.Terminal():
			if woken && req.State == cancel.Canceled && d.Measure != nil && !req.Finished.IsZero() {
				d.Measure.CancelToAnswer.Observe(time.Since(req.Finished).Seconds())
			}
			answerOutcome(c, d, req)
			return
		}
		select {
		case <-wake:
			woken = true
		case <-retry:
		case <-timer.C:
			accepted(c, rid)
			return
		case <-d.StopWaiting:
			accepted(c, rid)
			return
		case <-ctx.Done():
			return
		}
	}
}

// accepted is the 202 of a request that goes on without the client waiting.
func accepted(c *gin.Context, rid string) {
	c.JSON(http.StatusAccepted, gin.H{"success": true, "code": http.StatusAccepted, "data": gin.H{"requestId": rid}})
}

// answerOutcome turns a finished request into the upsize's answer.
func answerOutcome(c *gin.Context, d *Deps, req cancel.Request) {
	switch req.State {
	case cancel.Completed:
		im, err := d.Store.GetImage(c.Request.Context(), req.ResultID)
		if err != nil {
			unavailable(c, errcode.ServiceUnavailable, err)
			return
		}
		c.JSON(http.StatusCreated, imageBody(im))
	case cancel.Canceled:
		c.Set(ctxOutcome, "canceled")
		fail(c, errcode.UserCanceled.E())
	default:
		c.Set(ctxOutcome, "failed")
		answerError(c, req.ErrCode, req.ErrData)
	}
}

// countUpsize records the answer of an upsize: completed, accepted (202), canceled, failed (the worker
// failed it), unavailable (Redis or the queue), or rejected by one of the rules, with the reason.
func countUpsize(c *gin.Context, m *metrics.API, scale string) {
	if m == nil {
		return
	}
	outcome := c.GetString(ctxOutcome)
	if outcome == "" {
		switch status := c.Writer.Status(); {
		case status == http.StatusCreated:
			outcome = "completed"
		case status == http.StatusAccepted:
			outcome = "accepted"
		case status >= 500:
			outcome = "unavailable"
		default:
			outcome = "rejected"
		}
	}
	m.Outcomes.WithLabelValues(outcome, errcode.Label(c.GetString(ctxReason)), scale).Inc()
}
