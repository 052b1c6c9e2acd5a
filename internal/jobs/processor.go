package jobs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"time"

	"github.com/hibiken/asynq"

	"upsize/internal/blob"
	"upsize/internal/cancel"
	"upsize/internal/errcode"
	"upsize/internal/imageops"
	"upsize/internal/metrics"
	"upsize/internal/policy"
	"upsize/internal/store"
)

// Images is what the processor needs of the metadata store.
type Images interface {
	GetImage(ctx context.Context, id int64) (store.Image, error)
}

// UpsizeFunc is the image operation (imageops.Upsize; a test may swap it).
type UpsizeFunc func(ctx context.Context, src []byte, dst io.Writer, p imageops.Params) (imageops.Result, error)

// Processor runs upsize tasks: an asynq handler.
type Processor struct {
	Registry *cancel.Registry
	Inflight *cancel.Inflight
	Images   Images
	Blobs    blob.Store
	Upsize   UpsizeFunc
	Encoding imageops.Encoding
	// Limits, checked again here from the header: the API checked them at admission, but a worker must
	// never decode more than it was sized for.
	MaxInputPixels, MaxOutputPixels int64
	Log                             *slog.Logger
	Metrics                         *metrics.Worker  // may be nil
	Observe                         func(TaskReport) // called once per task run; may be nil
}

// TaskReport describes one run of a task, for logs and metrics.
type TaskReport struct {
	Payload   Payload
	Request   cancel.Request
	Outcome   string // completed, canceled, failed, skipped, retry
	Reason    string
	Format    string // the source's (and result's) format
	QueueWait time.Duration
	Read      time.Duration
	// Transform is decode, resample and encode: one streamed libvips evaluation, so they cannot be timed
	// apart. Write is the time spent inside the blob store's writer during it.
	Transform  time.Duration
	Write      time.Duration
	Total      time.Duration
	BytesIn    int64
	BytesOut   int64
	CancelStop time.Duration // canceled runs: from the cancel being recorded to the work stopping
}

// permanent is a failure that would happen again: the request fails now with answer, without retries.
type permanent struct {
	answer *errcode.Error
	err    error
}

func (p *permanent) Error() string { return fmt.Sprintf("%s: %v", p.answer, p.err) }

// finishTimeout bounds the clean-up calls after a task (deleting a loser's bytes). They run on a context
// of their own, as outcomes are recorded (record): a cancel that arrives after the work is done must not
// stop the worker from saying so.
const finishTimeout = 10 * time.Second

// ProcessTask is the asynq handler.
func (p *Processor) ProcessTask(ctx context.Context, t *asynq.Task) error {
	began := time.Now()
	pl, err := UnmarshalPayload(t.Payload())
	if err != nil {
		p.Log.Error("dropping malformed task", "err", err) // no ids to log: the payload is what is broken
		return fmt.Errorf("%v: %w", err, asynq.SkipRetry)
	}
	rep := TaskReport{Payload: pl}
	taskID, _ := asynq.GetTaskID(ctx)
	log := p.Log.With("task_id", taskID, "request_id", pl.RequestID, "user_id", pl.UserID)
	if p.Metrics != nil {
		p.Metrics.InProgress.Inc()
		defer p.Metrics.InProgress.Dec()
	}
	defer func() {
		rep.Total = time.Since(began)
		p.report(log, rep)
	}()

	// Track before start: a cancel that lands between the two is not missed.
	workCtx, done := p.Inflight.Track(ctx, pl.UserID, pl.RequestID)
	defer done()
	req, run, err := p.Registry.Start(ctx, pl.UserID, pl.RequestID)
	rep.Request = req
	switch {
	case errors.Is(err, cancel.ErrNotFound):
		// The task outlived its request's state (lost by Redis): nothing can run, but the credits it
		// held are refunded and the request is recorded as failed, never dropped silently.
		refunded, exists, err := p.Registry.Lost(ctx, pl.UserID, pl.RequestID, errcode.UpsizeFailed.Status, errcode.UpsizeFailed.Name)
		if err == nil && exists {
			err = errors.New("jobs: the request reappeared while settling it as lost")
		}
		if err != nil {
			rep.Outcome, rep.Reason = "retry", err.Error()
			return err
		}
		rep.Outcome, rep.Reason = "failed", fmt.Sprintf("request state lost; refunded %d", refunded)
		return nil
	case err != nil:
		rep.Outcome, rep.Reason = "retry", err.Error()
		return err
	case !run:
		// Canceled while queued, or finished by an earlier run. An earlier run may have crashed after
		// writing the result's bytes: remove them unless the request completed.
		if req.State != cancel.Completed {
			p.deleteResult(log, req)
		}
		rep.Outcome, rep.Reason = "skipped", string(req.State)
		return nil
	}
	if !req.Created.IsZero() {
		rep.QueueWait = began.Sub(req.Created)
	}

	img, err := p.work(workCtx, req, &rep)
	switch {
	case err == nil:
		return p.complete(log, req, img, &rep)
	case errors.Is(context.Cause(workCtx), cancel.ErrCanceled):
		// The registry already refunded it; only the bytes may be left. The cancel's signal can arrive
		// before the cancel is safe on a replica (REDIS_WAIT_REPLICAS): the task ends only once the
		// registry, read with that guarantee, says the request has an outcome; otherwise (the cancel was
		// lost in a failover, or Redis does not answer) asynq runs it again and the registry decides.
		now, err := p.Registry.Get(ctx, req.UserID, req.ID)
		if err == nil && !now.State.Terminal() {
			err = fmt.Errorf("jobs: stopped by a cancel, but the request is %s", now.State)
		}
		p.deleteResult(log, req)
		if err != nil {
			rep.Outcome, rep.Reason = "retry", err.Error()
			return err
		}
		if !now.Finished.IsZero() {
			rep.CancelStop = time.Since(now.Finished)
		}
		rep.Outcome = "canceled"
		return nil
	}
	var perm *permanent
	if errors.As(err, &perm) || isLastAttempt(ctx) {
		answer := errcode.UpsizeFailed.E()
		if perm != nil {
			answer = perm.answer
		}
		p.deleteResult(log, req)
		rep.Outcome, rep.Reason = "failed", err.Error()
		if _, ferr := record(func(ctx context.Context) (cancel.State, error) {
			return p.Registry.Fail(ctx, req.UserID, req.ID, answer.Code.Status, answer.Data)
		}); ferr != nil {
			return ferr // asynq retries; the next run records the failure
		}
		return nil
	}
	rep.Outcome, rep.Reason = "retry", err.Error()
	return err
}

// work reads the source, upsizes it and stores the result's bytes under the result's id.
func (p *Processor) work(ctx context.Context, req cancel.Request, rep *TaskReport) (store.Image, error) {
	src, err := p.Images.GetImage(ctx, req.ImageID)
	if errors.Is(err, store.ErrNotFound) {
		return store.Image{}, &permanent{errcode.NoInputImage.With(strconv.FormatInt(req.ImageID, 10)), err}
	}
	if err != nil {
		return store.Image{}, err
	}
	rep.Format = src.Format
	if !imageops.KnownKernel(req.Model) {
		return store.Image{}, &permanent{errcode.UnknownModel.With(req.Model), imageops.ErrUnknownKernel}
	}
	scale, ok := policy.ScaleFactor(req.Scale)
	if !ok {
		return store.Image{}, &permanent{errcode.InvalidScaleSize.E(), fmt.Errorf("scale %q", req.Scale)}
	}

	t0 := time.Now()
	data, err := blob.ReadAll(ctx, p.Blobs, store.BlobKey(src.ID))
	if err != nil {
		return store.Image{}, err
	}
	rep.Read, rep.BytesIn = time.Since(t0), int64(len(data))

	t1 := time.Now()
	var res imageops.Result
	var tw timedWriter
	info, err := p.Blobs.Put(ctx, store.BlobKey(req.ResultID), func(w io.Writer) error {
		var err error
		tw.w = w
		res, err = p.Upsize(ctx, data, &tw, imageops.Params{
			Scale: scale, Kernel: imageops.Kernel(req.Model), Encoding: p.Encoding,
			MaxInputPixels: p.MaxInputPixels, MaxOutputPixels: p.MaxOutputPixels,
		})
		return err
	})
	rep.Write = tw.spent
	rep.Transform = time.Since(t1) - tw.spent
	if answer := errcode.FromImage(err); answer != nil {
		if answer.Code == errcode.UnsupportedFormat {
			answer = errcode.InvalidImage.E() // the source was accepted at upload: its bytes are what is wrong
		}
		return store.Image{}, &permanent{answer, err}
	}
	if err != nil {
		return store.Image{}, err
	}
	rep.BytesOut = info.Size
	return store.Image{
		ID: req.ResultID, OwnerID: req.UserID, Width: res.Width, Height: res.Height, Scale: req.Scale,
		Format: string(res.Format), Size: info.Size, SHA256: info.SHA256, CreatedAt: time.Now(),
		// An upsized image copies its source's EditInfo, with variationId = the source's id.
		EditInfo: withVariation(src.EditInfo, src.ID),
	}, nil
}

func withVariation(e store.EditInfo, id int64) store.EditInfo {
	e.VariationID = id
	return e
}

// complete races cancel in the registry; the loser's bytes are removed.
func (p *Processor) complete(log *slog.Logger, req cancel.Request, img store.Image, rep *TaskReport) error {
	st, err := record(func(ctx context.Context) (cancel.State, error) { return p.Registry.Complete(ctx, req, img) })
	if err != nil {
		rep.Outcome, rep.Reason = "retry", err.Error()
		return err // the bytes stay; the retry rewrites them under the same key and completes
	}
	if st != cancel.Completed {
		p.deleteResult(log, req)
		rep.Outcome = string(st)
		return nil
	}
	rep.Outcome = "completed"
	return nil
}

func (p *Processor) deleteResult(log *slog.Logger, req cancel.Request) {
	if req.ResultID == 0 {
		return
	}
	ctx, cancelF := finishCtx()
	defer cancelF()
	if err := p.Blobs.Delete(ctx, store.BlobKey(req.ResultID)); err != nil {
		log.Warn("could not delete the bytes of an upsize that did not complete", "err", err)
	}
}

// report writes the task's one log line and its metrics.
func (p *Processor) report(log *slog.Logger, rep TaskReport) {
	attrs := []any{"outcome", rep.Outcome, "reason", rep.Reason, "scale", rep.Request.Scale, "model", rep.Request.Model,
		"format", rep.Format, "queue_wait_ms", rep.QueueWait.Milliseconds(), "read_ms", rep.Read.Milliseconds(),
		"transform_ms", rep.Transform.Milliseconds(), "total_ms", rep.Total.Milliseconds(), "bytes_in", rep.BytesIn}
	if rep.Outcome == "completed" {
		// Only a completed task wrote a result; the others' partial writes were thrown away.
		attrs = append(attrs, "write_ms", rep.Write.Milliseconds(), "bytes_out", rep.BytesOut)
	}
	if rep.CancelStop > 0 {
		attrs = append(attrs, "cancel_to_stop_ms", rep.CancelStop.Milliseconds())
	}
	log.Info("task", attrs...)
	if m := p.Metrics; m != nil {
		queue, scale, format := orUnknown(rep.Request.Queue), orUnknown(rep.Request.Scale), orUnknown(rep.Format)
		m.Tasks.WithLabelValues(queue, rep.Outcome).Inc()
		if rep.QueueWait > 0 {
			m.QueueWait.WithLabelValues(queue, scale, format).Observe(rep.QueueWait.Seconds())
		}
		if rep.Read > 0 {
			m.Stage.WithLabelValues("read", scale, format).Observe(rep.Read.Seconds())
			m.Bytes.WithLabelValues("read").Add(float64(rep.BytesIn))
		}
		if rep.Outcome == "completed" {
			m.Stage.WithLabelValues("decode_resize_encode", scale, format).Observe(rep.Transform.Seconds())
			m.Stage.WithLabelValues("write", scale, format).Observe(rep.Write.Seconds())
			m.Bytes.WithLabelValues("written").Add(float64(rep.BytesOut))
			m.CreditsCharged.Add(float64(rep.Request.Cost))
		}
		m.Stage.WithLabelValues("total", scale, format).Observe(rep.Total.Seconds())
		if rep.CancelStop > 0 {
			m.CancelToStop.Observe(rep.CancelStop.Seconds())
		}
	}
	if p.Observe != nil {
		p.Observe(rep)
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// recordTimeout bounds how long a worker keeps trying to record an outcome in Redis. A short outage is
// ridden out here: handing the error to asynq instead costs minutes, because asynq's own move of the task
// to its retry set fails too while Redis is down, and only its recoverer finds the task again (after the
// 30 s lease, a 30 s margin and up to a minute's wait). It stays within that lease.
const recordTimeout = 20 * time.Second

// record calls f until it succeeds or recordTimeout passes, with back-off. The registry's scripts are
// idempotent, so a call that succeeded without its answer arriving is safe to repeat.
func record[T any](f func(context.Context) (T, error)) (T, error) {
	deadline := time.Now().Add(recordTimeout)
	wait := 100 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		v, err := f(ctx)
		cancel()
		if err == nil || time.Now().Add(wait).After(deadline) {
			return v, err
		}
		time.Sleep(wait)
		wait = min(2*wait, 2*time.Second)
	}
}

func finishCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), finishTimeout)
}

func isLastAttempt(ctx context.Context) bool {
	n, ok1 := asynq.GetRetryCount(ctx)
	max, ok2 := asynq.GetMaxRetry(ctx)
	return ok1 && ok2 && n >= max
}

// timedWriter adds up the time spent writing, to tell the blob store's share from libvips'.
type timedWriter struct {
	w     io.Writer
	spent time.Duration
}

func (t *timedWriter) Write(b []byte) (int, error) {
	start := time.Now()
	n, err := t.w.Write(b)
	t.spent += time.Since(start)
	return n, err
}
