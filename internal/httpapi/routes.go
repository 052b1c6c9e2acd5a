// Package httpapi is the Gin front door: the public API, the admin API and the operational endpoints.
// Every route is listed in addRoutes; handlers are built by functions that take what they need.
package httpapi

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"upsize/internal/blob"
	"upsize/internal/cancel"
	"upsize/internal/errcode"
	"upsize/internal/jobs"
	"upsize/internal/metrics"
	"upsize/internal/store"
)

// Queue is what the API needs of the task queue.
type Queue interface {
	Enqueue(ctx context.Context, queue string, p jobs.Payload) error
	Remove(ctx context.Context, queue, taskID string) error
	Backlog(ctx context.Context) (jobs.Backlog, error)
	// RetryAfter is how many seconds the workers take to get through work, from their measured rate.
	RetryAfter(ctx context.Context, work time.Duration) int
	// Position is how many tasks are ahead of a pending one in its queue.
	Position(ctx context.Context, queue, taskID string) (int64, bool)
}

// Limits are the configured bounds the API enforces.
type Limits struct {
	MaxUploadBytes  int64
	MaxInputPixels  int64
	MaxOutputPixels int64
	QueueMaxBacklog int64
	// QueueMaxBacklogWork bounds the backlog in estimated work (QUEUE_MAX_BACKLOG_SECONDS; 0: none).
	QueueMaxBacklogWork time.Duration
	WaitTimeout         time.Duration
	// BodyTimeout: a request body must arrive whole within it (408 otherwise).
	BodyTimeout time.Duration
	// UploadMemory bounds the upload bodies held at once, ValidateMemory the estimated decode memory of
	// the validations running at once; ValidateTimeout bounds one validation.
	UploadMemory, ValidateMemory int64
	ValidateTimeout              time.Duration
	// GateWait is how long an upload may wait for its share of either memory (0: 5s) before 503.
	GateWait time.Duration
	// FileRedirect > 0 redirects file downloads to presigned URLs of the object store, valid that long.
	FileRedirect time.Duration
	// EventHeartbeat is how often an idle event stream gets a comment line (0: 15s).
	EventHeartbeat time.Duration
}

// Deps is everything the handlers use.
type Deps struct {
	Log        *slog.Logger
	Store      *store.Store
	Registry   *cancel.Registry
	Hub        *cancel.Hub
	Queue      Queue
	Blobs      blob.Store
	Limits     Limits
	AdminToken string
	// Ready reports whether the process should get traffic (Redis reachable, not draining).
	Ready func(ctx context.Context) error
	// StopWaiting is closed when waiting upsizes must answer 202 now (the process is shutting down).
	StopWaiting <-chan struct{}
	// CallbackAllowed is rule 2's check of an X-Callback-Url (nil: every callback is refused).
	CallbackAllowed func(rawURL string) error
	// QueuesUI is asynqmon, the operators' view of the queues, served under /admin/queues behind the admin
	// token (nil: not served).
	QueuesUI http.Handler
	// MetricsHandler serves /metrics; Measure records the API's metrics (nil: none).
	MetricsHandler http.Handler
	Measure        *metrics.API
}

// NewHandler builds the HTTP handler of the API.
func NewHandler(d *Deps) http.Handler {
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.HandleMethodNotAllowed = true
	r.ContextWithFallback = true
	r.Use(recovery(d.Log), accessLog(d.Log), secureHeaders())
	if d.Measure != nil {
		r.Use(instrument(d.Measure))
	}
	r.Use(bodyDeadline(d.Limits.BodyTimeout))
	addRoutes(r, d)
	return r
}

func addRoutes(r *gin.Engine, d *Deps) {
	g := newGate(d.Limits)
	r.GET("/healthz", handleHealthz())
	r.GET("/readyz", handleReadyz(d.Ready))
	r.GET("/metrics", gin.WrapH(d.MetricsHandler))
	r.GET("/openapi.json", handleOpenAPI())

	api := r.Group("/api", requestID(), apiKeyAuth(d.Store))
	api.POST("/images", handleUpload(d, g, false))
	api.POST("/images/cancel", handleCancel(d))
	api.GET("/images/:id", handleGetImage(d.Store))
	api.GET("/images/:id/file", handleGetFile(d.Store, d.Blobs, d.Limits.FileRedirect))
	api.HEAD("/images/:id/file", handleGetFile(d.Store, d.Blobs, d.Limits.FileRedirect))
	api.POST("/images/:id/upsize", handleUpsize(d))
	api.GET("/requests/:requestId", handleGetRequest(d.Store, d.Registry))
	api.GET("/requests/:requestId/events", handleEvents(d))

	admin := r.Group("/admin", adminAuth(d.AdminToken))
	admin.POST("/users", handleCreateUser(d.Store))
	admin.GET("/users/:id", handleGetUser(d.Store))
	admin.PATCH("/users/:id", handlePatchUser(d.Store))
	admin.POST("/users/:id/api-keys", handleCreateAPIKey(d.Store))
	admin.POST("/users/:id/webhook-secret", handleWebhookSecret(d.Store))
	admin.POST("/images", handleUpload(d, g, true))
	admin.GET("/models/upsize", handleGetModel(d.Store))
	admin.PUT("/models/upsize", handleSetModel(d.Store))
	admin.DELETE("/models/upsize", handleDelete(d.Store.DeleteModel))
	admin.GET("/credit-costs/upsize", handleGetCosts(d.Store))
	admin.PUT("/credit-costs/upsize", handleSetCosts(d.Store))
	admin.DELETE("/credit-costs/upsize", handleDelete(d.Store.DeleteCosts))

	if d.QueuesUI != nil {
		// A browser cannot add a bearer header: the admin token is also taken as a Basic password here.
		ui := r.Group("/admin/queues", adminAuthOrBasic(d.AdminToken))
		for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodDelete} {
			ui.Handle(m, "/*path", gin.WrapH(d.QueuesUI))
		}
	}

	r.NoRoute(func(c *gin.Context) { fail(c, errcode.NotFound.E()) })
	r.NoMethod(func(c *gin.Context) { fail(c, errcode.MethodNotAllowed.E()) })
}

// readBody reads a small body; over max bytes it answers 413, and a body that does not arrive within
// BodyTimeout 408.
func readBody(c *gin.Context, max int64) ([]byte, bool) {
	b, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, max))
	if err != nil {
		bodyReadFailed(c, err, errcode.InvalidBody)
		return nil, false
	}
	bodyRead(c)
	return b, true
}

// bodyReadFailed answers a body that could not be read: too large (413), too slow (408), or cut or
// malformed (code).
func bodyReadFailed(c *gin.Context, err error, code errcode.Code) {
	var tooBig *http.MaxBytesError
	var netErr net.Error
	switch {
	case errors.As(err, &tooBig):
		fail(c, errcode.PayloadTooLarge.E())
	case errors.As(err, &netErr) && netErr.Timeout():
		c.Header("Connection", "close")
		fail(c, errcode.RequestTimeout.E())
	default:
		fail(c, code.E())
	}
}
