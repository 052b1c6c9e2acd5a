package policy

import "time"

// Work estimates how long a worker slot is busy with an upsize: a fixed part (task start, reading the
// source, the encoder's set-up) plus a cost per megapixel of the result, by output format (the encoder
// sets the pace: PNG's zlib costs several times JPEG's entropy coder). Costs span 500x between a small
// 2x and an 8x to 100 MP, so queueing, backpressure and scaling count work, not tasks.
//
// The figures come from BenchmarkCalibrateWork (photo-like sources, the service's encoder settings, one
// task at a time on one core); re-run it on the deployment's CPUs and update them when the pipeline
// changes:
//
//	go test -run '^$' -bench CalibrateWork -benchtime 1x ./internal/policy/
type WorkModel struct {
	Fixed time.Duration
	PerMP map[string]time.Duration // by format: jpeg, png, webp
}

// DefaultWork is the calibrated model.
var DefaultWork = WorkModel{
	Fixed: 8 * time.Millisecond,
	PerMP: map[string]time.Duration{
		"jpeg": 12 * time.Millisecond,
		"png":  60 * time.Millisecond,
		"webp": 70 * time.Millisecond,
	},
}

// Estimate is the work of a result of outPixels in format (an unknown format costs as the dearest).
func (m WorkModel) Estimate(format string, outPixels int64) time.Duration {
	per, ok := m.PerMP[format]
	if !ok {
		for _, p := range m.PerMP {
			per = max(per, p)
		}
	}
	return m.Fixed + time.Duration(float64(per)*float64(outPixels)/1e6)
}
