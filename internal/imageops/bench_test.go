package imageops

import (
	"context"
	"image"
	"image/color"
	"io"
	"math"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"upsize/internal/testimg"
)

// photoLike is a synthetic stand-in for a photograph: smooth shading, hard edges and a little grain,
// so encoders see something between a flat gradient and pure noise.
func photoLike(w, h int, seed int64) *image.NRGBA {
	rng := rand.New(rand.NewSource(seed))
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	cx, cy, r := float64(w)*0.4, float64(h)*0.55, float64(min(w, h))*0.3
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			fx, fy := float64(x)/float64(w), float64(y)/float64(h)
			v := 120 + 60*math.Sin(6*fx+2*fy) + 40*math.Cos(9*fy)
			c := color.NRGBA{clamp(v), clamp(v*0.8 + 40*fx), clamp(200 - v*0.5), 255}
			if (float64(x)-cx)*(float64(x)-cx)+(float64(y)-cy)*(float64(y)-cy) < r*r {
				c = color.NRGBA{clamp(220 - 80*fy), 60, 40, 255}
			}
			g := rng.NormFloat64() * 4
			c.R, c.G, c.B = clamp(float64(c.R)+g), clamp(float64(c.G)+g), clamp(float64(c.B)+g)
			img.SetNRGBA(x, y, c)
		}
	}
	return img
}

func clamp(v float64) uint8 { return uint8(max(0, min(255, v))) }

type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// BenchmarkEncoding measures what the encoder settings cost: time per 4x upsize of a 512x512 photo-like
// image and the size of the result. docs/imageops.md explains the choice made from these figures.
func BenchmarkEncoding(b *testing.B) {
	Init(0)
	img := photoLike(512, 512, 1)
	png := encPNG(b, img)
	jpg := encJPEG(b, img, 92)
	cases := []struct {
		name string
		src  []byte
		enc  Encoding
	}{
		{"png-level1-nofilter", png, Encoding{PNGLevel: 1}},
		{"png-level6-nofilter", png, Encoding{PNGLevel: 6}},
		{"png-level9-nofilter", png, Encoding{PNGLevel: 9}},
		{"png-level1-adaptive", png, Encoding{PNGLevel: 1, PNGFilter: PNGFilterAll}},
		{"png-level2-adaptive", png, Encoding{PNGLevel: 2, PNGFilter: PNGFilterAll}},
		{"png-level3-adaptive", png, Encoding{PNGLevel: 3, PNGFilter: PNGFilterAll}},
		{"png-level4-adaptive", png, Encoding{PNGLevel: 4, PNGFilter: PNGFilterAll}},
		{"png-level6-adaptive", png, Encoding{PNGLevel: 6, PNGFilter: PNGFilterAll}},
		{"png-level3-paeth", png, Encoding{PNGLevel: 3, PNGFilter: PNGFilterPaeth}},
		{"png-level4-paeth", png, Encoding{PNGLevel: 4, PNGFilter: PNGFilterPaeth}},
		{"png-level5-paeth", png, Encoding{PNGLevel: 5, PNGFilter: PNGFilterPaeth}},
		{"png-level4-up", png, Encoding{PNGLevel: 4, PNGFilter: PNGFilterUp}},
		{"png-level4-avg", png, Encoding{PNGLevel: 4, PNGFilter: PNGFilterAvg}},
		{"jpeg-q80", jpg, Encoding{JPEGQuality: 80}},
		{"jpeg-q85", jpg, Encoding{JPEGQuality: 85}},
		{"jpeg-q90", jpg, Encoding{JPEGQuality: 90}},
		{"jpeg-q95", jpg, Encoding{JPEGQuality: 95}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var out countingWriter
			for i := 0; i < b.N; i++ {
				out.n = 0
				if _, err := Upsize(context.Background(), c.src, &out, Params{Scale: 4, Kernel: "lanczos3", Encoding: c.enc}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(out.n)/1e6, "MB/result")
		})
	}
}

func rssKB(b testing.TB) int64 {
	s, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(s), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			n, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return n
		}
	}
	return 0
}

// BenchmarkMemoryOverLongRun upsizes a mix of sizes and scales many times, two at a time as a worker
// would, and reports resident memory after the first round and at the end: with the operation cache off
// and malloc arenas bounded it stays flat after warming up (compare the quarter mark with the end).
// Run with -benchtime 1x; UPSIZE_SOAK_ROUNDS sets the length.
func BenchmarkMemoryOverLongRun(b *testing.B) {
	Init(0)
	rounds := 30
	if v, err := strconv.Atoi(os.Getenv("UPSIZE_SOAK_ROUNDS")); err == nil {
		rounds = v
	}
	srcs := [][]byte{encPNG(b, photoLike(256, 256, 2)), encJPEG(b, photoLike(512, 384, 3), 90), encPNG(b, photoLike(1024, 768, 4))}
	scales := []int{8, 4, 2}
	var first, warm, peak int64
	for i := 0; i < b.N; i++ {
		for r := 0; r < rounds; r++ {
			sem := make(chan struct{}, 2) // two at a time
			errs := make(chan error, len(srcs))
			for k, src := range srcs {
				sem <- struct{}{}
				go func() {
					defer func() { <-sem }()
					_, err := Upsize(context.Background(), src, io.Discard, Params{Scale: scales[k], Kernel: "lanczos3", Encoding: DefaultEncoding})
					errs <- err
				}()
			}
			for range srcs {
				if err := <-errs; err != nil {
					b.Fatal(err)
				}
			}
			rss := rssKB(b)
			if r == 0 {
				first = rss
			}
			if r == rounds/4 {
				warm = rss
			}
			peak = max(peak, rss)
		}
	}
	last := rssKB(b)
	b.ReportMetric(float64(first)/1024, "MB-rss-after-round1")
	b.ReportMetric(float64(warm)/1024, "MB-rss-at-quarter")
	b.ReportMetric(float64(last)/1024, "MB-rss-at-end")
	b.ReportMetric(float64(peak)/1024, "MB-rss-peak")
	b.ReportMetric(float64(rounds), "rounds")
}

func cpuTime(b testing.TB) time.Duration {
	s, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(s[strings.LastIndexByte(string(s), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

// BenchmarkCancelReleasesCPU starts an 8x upsize of a 1024x1024 noise PNG, cancels it after 300 ms, and
// reports how long Upsize took to return and when the process stopped using CPU (its CPU time stops
// growing; /proc resolution is 10 ms, so that figure is ±10 ms).
func BenchmarkCancelReleasesCPU(b *testing.B) {
	Init(0)
	src := encPNG(b, noise(1024, 1024, 9))
	var returned, released time.Duration
	for i := 0; i < b.N; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan time.Time, 1)
		go func() {
			Upsize(ctx, src, io.Discard, Params{Scale: 8, Kernel: "lanczos3", Encoding: DefaultEncoding})
			done <- time.Now()
		}()
		time.Sleep(300 * time.Millisecond)
		at := time.Now()
		cancel()
		end := <-done
		returned += end.Sub(at)
		// Sample CPU time every 5 ms; released = first moment after which 50 ms pass without growth.
		last, lastChange := cpuTime(b), time.Now()
		for time.Since(lastChange) < 50*time.Millisecond {
			time.Sleep(5 * time.Millisecond)
			if c := cpuTime(b); c > last+10*time.Millisecond {
				last, lastChange = c, time.Now()
			}
		}
		released += max(lastChange.Sub(at), end.Sub(at))
	}
	b.ReportMetric(float64(returned.Milliseconds())/float64(b.N), "ms-to-return")
	b.ReportMetric(float64(released.Milliseconds())/float64(b.N), "ms-to-cpu-idle")
}

// BenchmarkWorstCaseTask is the longest task the default limits allow: an 8x of a 1250x1250 noise PNG
// (100 MP out, MAX_OUTPUT_PIXELS; noise defeats PNG compression). The deploy manifests size the worker's
// SHUTDOWN_TIMEOUT and grace period on it.
//
//	go test -run '^$' -bench WorstCaseTask -benchtime 1x ./internal/imageops/
func BenchmarkWorstCaseTask(b *testing.B) {
	Init(0)
	src := encPNG(b, noise(1250, 1250, 11))
	var out countingWriter
	for i := 0; i < b.N; i++ {
		out.n = 0
		if _, err := Upsize(context.Background(), src, &out, Params{Scale: 8, Kernel: "lanczos3", Encoding: DefaultEncoding, MaxOutputPixels: 100_000_000}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(out.n)/1e6, "MB/result")
}

// BenchmarkScanLimitWorstCase is what MaxJPEGScans lets a JPEG cost: at 50 MP (7071x7071, flat, so the
// whole file fits an upload), Validate of libjpeg's standard 10-scan progression, then of the same
// image with MaxJPEGScans scans, the extra ones repeated AC scans (ScanBomb) or DC scans (DCScanBomb,
// the costliest). Reported: CPU ms per decode (the process's CPU time: the figure that holds on a
// loaded machine) and the file size.
//
//	go test -run '^$' -bench ScanLimitWorstCase -benchtime 1x ./internal/imageops/
func BenchmarkScanLimitWorstCase(b *testing.B) {
	const side = 7071
	base := testimg.Scans(testimg.ProgressiveJPEG(8, 8, true))
	for _, c := range []struct {
		name string
		make func() []byte
	}{
		{"10-scans", func() []byte { return testimg.ProgressiveJPEG(side, side, true) }},
		{"limit-AC-scans", func() []byte { return testimg.ScanBomb(side, side, MaxJPEGScans-base) }},
		{"limit-DC-scans", func() []byte { return testimg.DCScanBomb(side, side, MaxJPEGScans-base) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			src := c.make()
			if n := testimg.Scans(src); n > MaxJPEGScans {
				b.Fatalf("%d scans", n)
			}
			b.ResetTimer()
			cpu := cpuTime(b)
			for i := 0; i < b.N; i++ {
				if err := Validate(context.Background(), src, nil); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64((cpuTime(b)-cpu).Milliseconds())/float64(b.N), "cpu-ms/decode")
			b.ReportMetric(float64(len(src))/1e6, "MB/file")
		})
	}
}
