package policy

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"upsize/internal/imageops"
	"upsize/internal/testimg"
)

// BenchmarkCalibrateWork measures upsizes of photo-like sources (256² to 1024², 2x to 8x, each format)
// and fits, per format, time = fixed + perMP × output megapixels by least squares. It reports the fit and
// its worst relative error; DefaultWork takes the figures.
//
//	go test -run '^$' -bench CalibrateWork -benchtime 1x ./internal/policy/
func BenchmarkCalibrateWork(b *testing.B) {
	imageops.Init(0)
	encode := map[string]func(side int) []byte{
		"jpeg": func(side int) []byte { return testimg.EncodeJPEG(testimg.PhotoLike(side, side, 1)) },
		"png":  func(side int) []byte { return testimg.EncodePNG(testimg.PhotoLike(side, side, 1)) },
		"webp": func(side int) []byte { return testimg.EncodeWebP(testimg.PhotoLike(side, side, 1)) },
	}
	for _, format := range []string{"jpeg", "png", "webp"} {
		b.Run(format, func(b *testing.B) {
			var mps, secs []float64
			for _, side := range []int{256, 512, 1024} {
				src := encode[format](side)
				for _, scale := range []int{2, 4, 8} {
					if side == 1024 && scale == 8 && format != "jpeg" {
						continue // 67 MP of PNG or WebP: seconds each, and the line is already well fixed
					}
					best := time.Duration(1 << 62)
					for i := 0; i < 2; i++ { // the faster of two: the other core's load only adds
						start := time.Now()
						if _, err := imageops.Upsize(context.Background(), src, io.Discard, imageops.Params{
							Scale: scale, Kernel: "lanczos3", Encoding: imageops.DefaultEncoding}); err != nil {
							b.Fatal(err)
						}
						best = min(best, time.Since(start))
					}
					mps = append(mps, float64(side*side*scale*scale)/1e6)
					secs = append(secs, best.Seconds())
				}
			}
			fixed, perMP := fit(mps, secs)
			worst := 0.0
			for i := range mps {
				est := fixed + perMP*mps[i]
				worst = max(worst, abs(est-secs[i])/secs[i])
			}
			b.ReportMetric(perMP*1000, "ms/MP")
			b.ReportMetric(fixed*1000, "ms-fixed")
			b.ReportMetric(worst*100, "%worst-error")
			b.Log(fmt.Sprintf("%s: %.1f ms + %.2f ms/MP (worst error %.0f %%) over %v MP", format, fixed*1000, perMP*1000, worst*100, mps))
		})
	}
}

// fit is least squares of y = a + b·x.
func fit(x, y []float64) (a, b float64) {
	var sx, sy, sxx, sxy float64
	n := float64(len(x))
	for i := range x {
		sx += x[i]
		sy += y[i]
		sxx += x[i] * x[i]
		sxy += x[i] * y[i]
	}
	b = (n*sxy - sx*sy) / (n*sxx - sx*sx)
	return (sy - b*sx) / n, b
}

func abs(v float64) float64 { return max(v, -v) }
