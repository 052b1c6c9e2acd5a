// Package policy is the product's rules for an upsize (SPEC "Rules of upsize", 5 to 13): given who asks,
// for which image, at what scale, under which admin settings and limits, may it go ahead and at what
// cost, or which answer refuses it. It does no I/O: the HTTP layer reads what the rules need, asks here,
// and answers; the rules can be tested one by one without Redis.
package policy

import (
	"strconv"
	"time"

	"upsize/internal/errcode"
	"upsize/internal/imageops"
	"upsize/internal/store"
)

// ScaleFactor parses "2x", "4x", "8x".
func ScaleFactor(s string) (int, bool) {
	switch s {
	case "2x":
		return 2, true
	case "4x":
		return 4, true
	case "8x":
		return 8, true
	}
	return 0, false
}

// FourK is the longer side from which a result is 4K: free users may not reach it (rule 9).
const FourK = 3840

// Limits are the configured pixel limits (rule 12).
type Limits struct {
	MaxInputPixels, MaxOutputPixels int64
}

// Upsize is an upsize that passed rules 5 to 12: what it runs, what it costs in credits, and how long
// it is estimated to keep a worker busy.
type Upsize struct {
	Scale  string
	Factor int
	Model  string
	Cost   int64
	Work   time.Duration
}

// Check applies rules 5 to 12 in SPEC's order. scale is the asked scale and scaleOK whether the body
// named one of the three (rule 8 judges it only after rules 5-7).
func Check(u store.User, src store.Image, scale string, scaleOK bool, s store.Settings, l Limits) (Upsize, *errcode.Error) {
	switch {
	case src.Collection == "premium" && !u.Premium: // 5
		return Upsize{}, errcode.PremiumCollection.With(strconv.FormatInt(src.ID, 10))
	case src.Scale != "1x": // 6
		return Upsize{}, errcode.AlreadyUpscaled.E()
	case u.Billing == store.BillingFailed: // 7
		return Upsize{}, errcode.FailedBilling.E()
	}
	factor, ok := ScaleFactor(scale)
	if !scaleOK || !ok { // 8
		return Upsize{}, errcode.InvalidScaleSize.E()
	}
	longer := max(src.Width, src.Height) * factor
	if u.Plan == store.PlanFree && longer >= FourK { // 9
		return Upsize{}, errcode.Free4K.E()
	}
	switch { // 10
	case s.Model == "":
		return Upsize{}, errcode.NoModel.With("upsize")
	case !imageops.KnownKernel(s.Model):
		return Upsize{}, errcode.UnknownModel.With(s.Model)
	}
	cost, ok := s.Costs[scale]
	if !ok { // 11
		return Upsize{}, errcode.NoCreditCost.E()
	}
	// 12, from the stored header sizes: nothing is decoded here. A result side over what its format can
	// hold would only fail in the worker.
	if src.Pixels() > l.MaxInputPixels || src.Pixels()*int64(factor*factor) > l.MaxOutputPixels ||
		longer > imageops.Format(src.Format).MaxSide() {
		return Upsize{}, errcode.ImageTooLarge.E()
	}
	work := DefaultWork.Estimate(src.Format, src.Pixels()*int64(factor*factor))
	return Upsize{Scale: scale, Factor: factor, Model: s.Model, Cost: cost, Work: work}, nil
}

// Backpressure is rule 13: the caller's own queued and running requests first (open of maxOpen, 0 for
// no limit), then the queue's backlog in tasks (over maxTasks) or in estimated work (over maxWork, 0 for
// no limit). Admission checks the first again atomically.
func Backpressure(open, maxOpen, tasks, maxTasks int64, work, maxWork time.Duration) *errcode.Error {
	switch {
	case maxOpen > 0 && open >= maxOpen:
		return errcode.TooManyRequests.E()
	case tasks > maxTasks, maxWork > 0 && work > maxWork:
		return errcode.QueueFull.E()
	}
	return nil
}

// Wait is how much of the backlog's work must drain before a request refused by Backpressure may
// succeed; Retry-After is that divided by the measured drain rate. Too many of the caller's own: about
// one of them done, with the workers shared among the open requests (work / open). Queue full: the work
// over the bound (in tasks, the share of the work they stand for).
func Wait(refusal *errcode.Error, open, tasks, maxTasks int64, work, maxWork time.Duration) time.Duration {
	switch {
	case refusal == nil:
		return 0
	case refusal.Code == errcode.TooManyRequests:
		return work / time.Duration(max(open, 1))
	case maxWork > 0 && work > maxWork:
		return work - maxWork
	case tasks > 0:
		return time.Duration(float64(work) * float64(tasks-maxTasks) / float64(tasks))
	}
	return 0
}
