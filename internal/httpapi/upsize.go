package httpapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"

	"upsize/internal/cancel"
	"upsize/internal/imageops"
	"upsize/internal/jobs"
	"upsize/internal/metrics"
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
	if _, ok := jobs.ScaleFactor(s); !ok {
		return "", false
	}
	return s, true
}

// handleUpsize is POST /api/images/{id}/upsize. Rule 1 ran in apiKeyAuth; the others run here in
// SPEC's order. The request's outcome is decided in the registry, never here.
func handleUpsize(d *Deps) gin.HandlerFunc {
	return func(c *gin.Context) {
		began := time.Now()
		ctx := c.Request.Context()
		u := currentUser(c)
		scaleLabel := "unknown"
		defer func() { countUpsize(c, d.Measure, scaleLabel) }()

		// Rule 2.
		if p := c.GetHeader("X-Platform"); p != "" && !platforms[p] {
			fail(c, http.StatusBadRequest, reasonInvalidPlatform)
			return
		}
		if c.GetBool(ctxBadRID) {
			fail(c, http.StatusBadRequest, reasonInvalidRequestID)
			return
		}
		rid := c.GetString(ctxRequestID)
		body, ok := readBody(c, maxUpsizeBody)
		if !ok {
			return
		}
		scale, scaleOK := parseScale(body)
		if scaleOK {
			scaleLabel = scale
		}
		rawID := c.Param("id")
		imageID, idOK := parseID(rawID)
		ask := asked{imageID: imageID, idOK: idOK, scale: scale, scaleOK: scaleOK}

		// Rule 3: a request id this user has used before decides the answer by itself.
		known, err := d.Registry.Get(ctx, u.ID, rid)
		if err == nil {
			answerKnown(c, d, known, ask, began)
			return
		} else if !errors.Is(err, cancel.ErrNotFound) {
			unavailable(c, reasonQueueUnavailable, err)
			return
		}

		// Rule 4.
		src, ok := visibleImage(c, d.Store)
		if !ok {
			return
		}
		// Rules 5-7.
		switch {
		case src.Collection == "premium" && !u.Premium:
			fail(c, http.StatusForbidden, reasonPremium(src.ID))
			return
		case src.Scale != "1x":
			fail(c, http.StatusForbidden, reasonAlreadyUpscaled)
			return
		case u.Billing == store.BillingFailed:
			fail(c, http.StatusForbidden, reasonFailedBilling)
			return
		}
		// Rule 8.
		if !scaleOK {
			fail(c, http.StatusBadRequest, reasonInvalidScaleSize)
			return
		}
		factor, _ := jobs.ScaleFactor(scale)
		// Rule 9: the result's longer side reaching 4K is for paying users.
		if u.Plan == store.PlanFree && max(src.Width, src.Height)*factor >= 3840 {
			fail(c, http.StatusForbidden, reasonFree4K)
			return
		}
		// Rules 10 and 11.
		settings, err := d.Store.GetSettings(ctx)
		if err != nil {
			unavailable(c, reasonQueueUnavailable, err)
			return
		}
		switch {
		case settings.Model == "":
			fail(c, http.StatusUnprocessableEntity, reasonNoModel)
			return
		case !imageops.KnownKernel(settings.Model):
			fail(c, http.StatusUnprocessableEntity, reasonUnknownModel(settings.Model))
			return
		}
		cost, ok := settings.Costs[scale]
		if !ok {
			fail(c, http.StatusUnprocessableEntity, reasonNoCreditCost)
			return
		}
		// Rule 12, from the stored header sizes: nothing is decoded here. A result side over what its
		// format can hold would only fail in the worker.
		if src.Pixels() > d.Limits.MaxInputPixels || src.Pixels()*int64(factor*factor) > d.Limits.MaxOutputPixels ||
			max(src.Width, src.Height)*factor > imageops.Format(src.Format).MaxSide() {
			fail(c, http.StatusUnprocessableEntity, reasonImageTooLarge)
			return
		}
		// Rule 13: the caller's own open requests, then the queue as a whole. Admit checks the first
		// again atomically.
		if maxOpen := d.Registry.MaxOpen(); maxOpen > 0 {
			open, err := d.Registry.OpenCount(ctx, u.ID)
			if err != nil {
				unavailable(c, reasonQueueUnavailable, err)
				return
			}
			if open >= maxOpen {
				tooMany(c, d, open, maxOpen)
				return
			}
		}
		backlog, err := d.Queue.Backlog(ctx)
		if err != nil {
			unavailable(c, reasonQueueUnavailable, err)
			return
		}
		if backlog > d.Limits.QueueMaxBacklog {
			c.Header("Retry-After", strconv.Itoa(d.Queue.RetryAfter(ctx, backlog, d.Limits.QueueMaxBacklog)))
			fail(c, http.StatusTooManyRequests, reasonQueueFull)
			return
		}

		// Rule 14: reserve and record atomically; the id may have been taken since rule 3.
		queue := jobs.QueueFor(u.Plan)
		res, err := d.Registry.Admit(ctx, cancel.Admission{
			UserID: u.ID, RequestID: rid, ImageID: src.ID, Scale: scale, Model: settings.Model,
			Cost: cost, Queue: queue, TaskID: jobs.TaskID(u.ID, rid),
		})
		switch {
		case err != nil:
			unavailable(c, reasonQueueUnavailable, err)
			return
		case res.Exists:
			answerKnown(c, d, res.Request, ask, began)
			return
		case res.TooMany:
			tooMany(c, d, d.Registry.MaxOpen(), d.Registry.MaxOpen())
			return
		case res.NoCredit:
			fail(c, http.StatusPaymentRequired, reasonNotEnoughCredit)
			return
		}

		// Watch before enqueuing: the outcome cannot be announced before the task exists.
		wake, stop := d.Hub.Watch(u.ID, rid)
		defer stop()
		if err := d.Queue.Enqueue(ctx, queue, jobs.Payload{UserID: u.ID, RequestID: rid}); err != nil {
			// Nothing will run it: fail it, refunding the reservation (or find the cancel that came first),
			// and answer what the registry then says.
			if _, ferr := d.Registry.Fail(ctx, u.ID, rid, http.StatusServiceUnavailable, reasonQueueUnavailable); ferr != nil {
				// Redis is gone: the request stays recorded (its credits reserved) and the sweeper will
				// enqueue it, so it is accepted, not refused: 202, and GET /api/requests tells the end.
				c.Set(ctxErr, errors.Join(err, ferr))
				accepted(c, rid)
				return
			}
		} else if err := d.Registry.Enqueued(ctx, u.ID, rid); err != nil {
			// Harmless: the sweeper finds the task already there.
			d.Log.Warn("could not confirm an enqueue", "request_id", rid, "user_id", u.ID, "err", err)
		}
		await(c, d, u.ID, rid, wake, began)
	}
}

// tooMany is rule 13 for one user: come back when about one of the user's requests will have finished.
func tooMany(c *gin.Context, d *Deps, open, maxOpen int64) {
	c.Header("Retry-After", strconv.Itoa(d.Queue.RetryAfter(c.Request.Context(), open, maxOpen-1)))
	fail(c, http.StatusTooManyRequests, reasonTooManyRequests)
}

// asked is what an upsize asks for, as far as it could be parsed.
type asked struct {
	imageID int64
	idOK    bool
	scale   string
	scaleOK bool
}

// answerKnown is rule 3 for a request id the user has used: canceled → 409; the same image and scale →
// the first request's outcome; anything else → 422 request_id_reused.
func answerKnown(c *gin.Context, d *Deps, known cancel.Request, ask asked, began time.Time) {
	switch {
	case known.State == cancel.Canceled:
		c.Set(ctxOutcome, "canceled")
		fail(c, http.StatusConflict, reasonUserCanceled)
	case ask.idOK && ask.imageID == known.ImageID && ask.scaleOK && ask.scale == known.Scale:
		wake, stop := d.Hub.Watch(known.UserID, known.ID)
		defer stop()
		await(c, d, known.UserID, known.ID, wake, began)
	default:
		fail(c, http.StatusUnprocessableEntity, reasonRequestIDReused)
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
			unavailable(c, reasonServiceUnavailable, err)
			return
		}
		c.JSON(http.StatusCreated, imageBody(im))
	case cancel.Canceled:
		c.Set(ctxOutcome, "canceled")
		fail(c, http.StatusConflict, reasonUserCanceled)
	default:
		c.Set(ctxOutcome, "failed")
		fail(c, req.ErrCode, req.ErrData)
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
	m.Outcomes.WithLabelValues(outcome, metrics.Known(metrics.Reason(c.GetString(ctxReason)), reasonLabels), scale).Inc()
}
