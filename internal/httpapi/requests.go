package httpapi

import (
	"errors"
	"net/http"

	"github.com/gin-gonic/gin"

	"upsize/internal/cancel"
	"upsize/internal/dto"
	"upsize/internal/errcode"
	"upsize/internal/store"
)

// handleGetRequest is GET /api/requests/{requestId}: the caller's own request only.
func handleGetRequest(s *store.Store, reg *cancel.Registry) gin.HandlerFunc {
	return func(c *gin.Context) {
		ctx := c.Request.Context()
		rid := c.Param("requestId")
		u := currentUser(c)
		if !requestIDPattern.MatchString(rid) {
			fail(c, errcode.NoRequest.With(rid))
			return
		}
		req, err := reg.Get(ctx, u.ID, rid)
		if errors.Is(err, cancel.ErrNotFound) {
			fail(c, errcode.NoRequest.With(rid))
			return
		} else if err != nil {
			unavailable(c, errcode.ServiceUnavailable, err)
			return
		}
		body, err := dto.FromRequest(ctx, s, req)
		if err != nil {
			unavailable(c, errcode.ServiceUnavailable, err)
			return
		}
		c.JSON(http.StatusOK, body)
	}
}

// handleCancel is POST /api/images/cancel. The registry decides; this only translates its answer and
// drops the queued task early (a worker that picks it up anyway sees the cancel and skips it).
func handleCancel(d *Deps) gin.HandlerFunc {
	return func(c *gin.Context) {
		ctx := c.Request.Context()
		_, sent := c.Request.Header["X-Request-Id"]
		if !sent || c.GetBool(ctxBadRID) {
			if d.Measure != nil {
				d.Measure.Cancels.WithLabelValues("invalid").Inc()
			}
			if !sent {
				fail(c, errcode.MissingRequestID.E())
			} else {
				fail(c, errcode.InvalidRequestID.E())
			}
			return
		}
		rid := c.GetString(ctxRequestID)
		res, err := d.Registry.Cancel(ctx, currentUser(c).ID, rid)
		if err != nil {
			unavailable(c, errcode.ServiceUnavailable, err)
			return
		}
		if d.Measure != nil {
			d.Measure.Cancels.WithLabelValues(cancelResult(res)).Inc()
		}
		switch res.State {
		case cancel.Canceled:
			if res.Was == cancel.Queued {
				if err := d.Queue.Remove(ctx, res.Request.Queue, res.Request.TaskID); err != nil {
					d.Log.Warn("could not remove a canceled task from its queue; the worker will skip it",
						"request_id", rid, "user_id", currentUser(c).ID, "task_id", res.Request.TaskID, "err", err)
				}
			}
			c.JSON(http.StatusOK, gin.H{"success": true, "code": http.StatusOK, "data": "canceled"})
		case cancel.Completed:
			fail(c, errcode.AlreadyCompleted.E())
		default:
			fail(c, errcode.AlreadyFailed.E())
		}
	}
}

// cancelResult names what a cancel did, for the cancels_total metric.
func cancelResult(r cancel.CancelResult) string {
	switch {
	case r.State != cancel.Canceled:
		return string(r.State) // completed or failed: too late
	case r.Was == "":
		return "tombstone"
	case r.Was == cancel.Canceled:
		return "already_canceled"
	default:
		return string(r.Was) // queued or running
	}
}
