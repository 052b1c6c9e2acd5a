package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"upsize/internal/cancel"
	"upsize/internal/dto"
	"upsize/internal/errcode"
)

// maxStreamsPerUser bounds one user's open event streams in one API process: each holds a connection
// and a goroutine for as long as its request runs.
const maxStreamsPerUser = 8

// streams counts the open event streams of each user.
type streams struct {
	mu   sync.Mutex
	open map[int64]int
}

func (s *streams) take(userID int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open[userID] >= maxStreamsPerUser {
		return false
	}
	s.open[userID]++
	return true
}

func (s *streams) release(userID int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open[userID]--; s.open[userID] <= 0 {
		delete(s.open, userID)
	}
}

// handleEvents is GET /api/requests/{requestId}/events: Server-Sent Events of the caller's request, one
// per change of state (with the number of tasks ahead of it in its queue while queued), the last one its
// final state with the body of GET /api/requests/{requestId}; then the stream ends. Changes come through
// Redis (the hub's pub/sub channel, and the queue read every second while queued), so a stream on any API
// replica sees what any worker does. A comment line every heartbeat keeps proxies from closing an idle
// stream; a draining API ends its streams, and the client reconnects to another replica.
func handleEvents(d *Deps) gin.HandlerFunc {
	open := &streams{open: map[int64]int{}}
	return func(c *gin.Context) {
		ctx := c.Request.Context()
		u := currentUser(c)
		rid := c.Param("requestId")
		if !requestIDPattern.MatchString(rid) {
			fail(c, errcode.NoRequest.With(rid))
			return
		}
		// Watch before the first read: no change between the two is missed.
		wake, stop := d.Hub.Watch(u.ID, rid)
		defer stop()
		req, err := d.Registry.Get(ctx, u.ID, rid)
		if errors.Is(err, cancel.ErrNotFound) {
			fail(c, errcode.NoRequest.With(rid))
			return
		} else if err != nil {
			unavailable(c, errcode.ServiceUnavailable, err)
			return
		}
		if !open.take(u.ID) {
			c.Header("Retry-After", "5")
			fail(c, errcode.TooManyRequests.E())
			return
		}
		defer open.release(u.ID)

		h := c.Writer.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Accel-Buffering", "no") // nginx: pass events on as they come
		c.Status(http.StatusOK)
		flusher, _ := c.Writer.(http.Flusher)
		send := func(event string, v any) bool {
			b, err := json.Marshal(v)
			if err == nil {
				_, err = fmt.Fprintf(c.Writer, "event: %s\ndata: %s\n\n", event, b)
			}
			if err == nil && flusher != nil {
				flusher.Flush()
			}
			return err == nil
		}

		every := d.Limits.EventHeartbeat
		if every <= 0 {
			every = 15 * time.Second
		}
		heartbeat := time.NewTicker(every)
		defer heartbeat.Stop()
		poll := time.NewTicker(time.Second) // the queue position moves without a signal
		defer poll.Stop()
		var last *dto.Request
		for {
			if req.State.Terminal() {
				body, err := dto.FromRequest(ctx, d.Store, req)
				if err == nil {
					send("state", body)
				}
				return
			}
			now := dto.Request{RequestID: rid, State: req.State}
			if req.State == cancel.Queued {
				if pos, ok := d.Queue.Position(ctx, req.Queue, req.TaskID); ok {
					now.Position = &pos
				}
			}
			if last == nil || now.State != last.State || !samePosition(now.Position, last.Position) {
				if !send("state", now) {
					return
				}
				last = &now
			}
			select {
			case <-ctx.Done():
				return
			case <-d.StopWaiting:
				return
			case <-heartbeat.C:
				if _, err := fmt.Fprint(c.Writer, ": heartbeat\n\n"); err != nil {
					return
				}
				if flusher != nil {
					flusher.Flush()
				}
				continue
			case <-wake:
			case <-poll.C:
				if req.State != cancel.Queued {
					continue
				}
			}
			next, err := d.Registry.Get(ctx, u.ID, rid)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				continue // Redis away: the next wake or tick reads again
			}
			req = next
		}
	}
}

func samePosition(a, b *int64) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }
