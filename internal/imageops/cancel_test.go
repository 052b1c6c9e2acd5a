package imageops

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"upsize/internal/testimg"
)

// cancelBound is the SPEC's: a canceled task's libvips work is aborted within 250 ms, whatever the
// image, decoding included.
const cancelBound = 250 * time.Millisecond

// TestCancelDuringDecode: Upsize and Validate return within cancelBound of a cancel that comes while
// the decoder runs inside one tile, where libvips' own kill flag is not looked at: a progressive JPEG
// with the most scans Probe allows (libjpeg reads every scan in jpeg_start_decompress, and its last 54
// scans are a few dozen bytes each, so only the cut before every scan lets the cancel through), an
// interlaced PNG (libpng decodes it whole before the first pixel) and the costliest lossy WebP an
// upload can hold (libvips' loader decodes a frame in one libwebp call; ours feeds libwebp's
// incremental decoder in chunks). Each takes over a second to decode (checked: a shorter decode could
// not tell), and the cancel comes 100 ms after the start, then again halfway through the decode (for
// the JPEG: among the small scans).
func TestCancelDuringDecode(t *testing.T) {
	if testing.Short() {
		t.Skip("decodes 49 MP images")
	}
	for _, c := range []struct {
		name string
		src  func() []byte
	}{
		{"progressive JPEG, MaxJPEGScans scans", bigLegit},
		{"interlaced PNG", bigInterlacedPNG},
		{"lossy noise WebP", bigLossyWebP},
	} {
		t.Run(c.name, func(t *testing.T) {
			src := c.src()
			if _, err := Probe(src); err != nil {
				t.Fatalf("Probe: %v", err)
			}
			start := time.Now()
			if err := Validate(context.Background(), src, nil); err != nil {
				t.Fatalf("Validate without cancel: %v", err)
			}
			full := time.Since(start)
			t.Logf("whole decode: %s", full)
			if full < 100*time.Millisecond+2*cancelBound {
				t.Fatalf("the decode takes %s: too short to tell a decode that stops from one that runs to its end", full)
			}
			for name, run := range map[string]func(context.Context) error{
				"Validate": func(ctx context.Context) error { return Validate(ctx, src, nil) },
				"Upsize": func(ctx context.Context) error {
					_, err := Upsize(ctx, src, io.Discard, Params{Scale: 2, Kernel: "lanczos3", Encoding: DefaultEncoding})
					return err
				},
			} {
				for _, after := range []time.Duration{100 * time.Millisecond, full / 2} {
					ctx, cancel := context.WithCancel(context.Background())
					done := make(chan error, 1)
					go func() { done <- run(ctx) }()
					time.Sleep(after)
					canceled := time.Now()
					cancel()
					select {
					case err := <-done:
						d := time.Since(canceled)
						if !errors.Is(err, context.Canceled) {
							t.Errorf("%s canceled after %s: err = %v, want context.Canceled", name, after, err)
						}
						if d > cancelBound {
							t.Errorf("%s canceled after %s returned %s after the cancel, want within %s", name, after, d, cancelBound)
						}
						t.Logf("%s canceled after %s returned %s after the cancel", name, after.Round(time.Millisecond), d)
					case <-time.After(time.Minute):
						t.Fatalf("%s did not return", name)
					}
				}
			}
		})
	}
}

// bigLossyWebP is about the costliest lossy WebP to decode that fits an upload (32 MB) and the default
// pixel limit: 50 MP of noise at Q75, 30.7 MB. libvips' loader takes about 1.5 s on it, in one call.
// Shaped 8191x6102 rather than 16383x3051 (the same cost) so that its 2x result fits a WebP.
var bigLossyWebP = sync.OnceValue(func() []byte {
	return testimg.WebPWith(8191, 6102, testimg.WebPOptions{Quality: 75})
})

// A context that is already done is not even started.
func TestValidateCanceledBeforeStart(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Validate(ctx, encJPEG(t, noise(64, 64, 1), 90), nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

// TestCancelDuringFlatWebPDecode: WebPs whose pixels take almost no bits, where feeding libwebp a
// chunk of compressed data at a time alone would not stop a decode: a flat lossy frame decodes from
// its first partition (every macroblock skipped: no token data at all), so its decode is stopped at
// the next macroblock row (upsize.c, webp_sync); a flat lossless frame of 49 MP is 2 KB, so its first
// chunk is sized from the average density (a megapixel's worth: a few dozen bytes). Canceled 20 ms
// after the start, each returns well within the time the whole decode takes (over 150 ms for either
// with the decode in one call).
func TestCancelDuringFlatWebPDecode(t *testing.T) {
	if testing.Short() {
		t.Skip("decodes 49 MP images")
	}
	for name, o := range map[string]testimg.WebPOptions{
		"lossy":    {Flat: true},
		"lossless": {Flat: true, Lossless: true},
	} {
		t.Run(name, func(t *testing.T) {
			src := testimg.WebPWith(7000, 7000, o)
			start := time.Now()
			if err := Validate(context.Background(), src, nil); err != nil {
				t.Fatalf("Validate without cancel: %v", err)
			}
			full := time.Since(start)
			t.Logf("whole Validate: %s", full)
			for name, run := range map[string]func(context.Context) error{
				"Validate": func(ctx context.Context) error { return Validate(ctx, src, nil) },
				"Upsize": func(ctx context.Context) error {
					_, err := Upsize(ctx, src, io.Discard, Params{Scale: 2, Kernel: "lanczos3", Encoding: DefaultEncoding})
					return err
				},
			} {
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() { done <- run(ctx) }()
				time.Sleep(20 * time.Millisecond)
				canceled := time.Now()
				cancel()
				err := <-done
				d := time.Since(canceled)
				t.Logf("%s returned %s after the cancel", name, d)
				if !errors.Is(err, context.Canceled) {
					t.Errorf("%s: err = %v, want context.Canceled", name, err)
				}
				// Uninterrupted, it would return about full-20ms after the cancel; half leaves room for a
				// loaded machine's scheduling.
				if d > full/2 {
					t.Errorf("%s returned %s after the cancel, want within half the whole Validate (%s)", name, d, full)
				}
			}
		})
	}
}

// TestCancelDuringWebPEncode: a WebP result is encoded by libwebp in one call over the whole picture
// (libvips' webpsave too), seconds for a large noisy result, where no tile is computed and libvips'
// kill flag is not looked at; libwebp's own progress hook comes seconds apart in places (webpsave.c).
// Canceled 0.2 s and 1 s into the encode (once its process runs), Upsize returns within cancelBound and
// the encoder process is gone within exitBound (it ends at once, but the kernel frees its hundreds of
// MB first: 20-80 ms, more on a loaded machine; an encoder left running would still be there for
// seconds). RGBA adds the alpha plane's lossless encode, which reports no progress at all. Measured
// before the encoder process (docs/imageops.md): 2500x2500 RGB returned 8.9 s after a cancel at 30 % of
// the run, 1500x1500 RGBA 3.6 s.
func TestCancelDuringWebPEncode(t *testing.T) {
	if testing.Short() {
		t.Skip("encodes 9-16 MP WebPs")
	}
	const exitBound = time.Second
	for _, c := range []struct {
		name string
		side int
		o    testimg.WebPOptions
	}{
		{"RGB noise", 2000, testimg.WebPOptions{Quality: 90}},
		{"RGBA noise", 1500, testimg.WebPOptions{Quality: 90, Alpha: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			src := testimg.WebPWith(c.side, c.side, c.o)
			p := Params{Scale: 2, Kernel: "lanczos3", Encoding: DefaultEncoding}
			// start runs an upsize and returns once its encoder process runs (or after a second,
			// by when decoding and resampling are done, for an encoder that has no process).
			start := func(ctx context.Context) <-chan error {
				done := make(chan error, 1)
				go func() {
					_, err := Upsize(ctx, src, io.Discard, p)
					done <- err
				}()
				for began := time.Now(); encoderProcesses(t) == 0 && time.Since(began) < time.Second; {
					time.Sleep(time.Millisecond)
				}
				return done
			}
			began := time.Now()
			if err := <-start(context.Background()); err != nil {
				t.Fatalf("Upsize without cancel: %v", err)
			}
			encode := time.Since(began)
			t.Logf("whole encode: %s", encode)
			if encode < 2*time.Second {
				t.Fatalf("the encode takes %s: too short to tell an encode that stops from one that runs to its end", encode)
			}
			for _, after := range []time.Duration{200 * time.Millisecond, time.Second} {
				ctx, cancel := context.WithCancel(context.Background())
				done := start(ctx)
				time.Sleep(after)
				canceled := time.Now()
				cancel()
				err := <-done
				d := time.Since(canceled)
				for encoderProcesses(t) > 0 && time.Since(canceled) < exitBound {
					time.Sleep(time.Millisecond)
				}
				gone := time.Since(canceled)
				t.Logf("canceled %s into the encode: returned %s after the cancel, encoder gone after %s", after, d, gone)
				if !errors.Is(err, context.Canceled) {
					t.Errorf("canceled %s into the encode: err = %v, want context.Canceled", after, err)
				}
				if d > cancelBound {
					t.Errorf("canceled %s into the encode: returned %s after the cancel, want within %s", after, d, cancelBound)
				}
				if n := encoderProcesses(t); n != 0 {
					t.Errorf("canceled %s into the encode: %d encoder processes still there %s after the cancel", after, n, gone)
				}
			}
		})
	}
}

// encoderProcesses counts this process's grandchildren: the WebP encoders the encoder server forked
// (webpsave.c; this package's tests start no other process).
func encoderProcesses(t *testing.T) int {
	t.Helper()
	parents := processParents(t)
	n := 0
	for _, ppid := range parents {
		if parents[ppid] == os.Getpid() {
			n++
		}
	}
	return n
}

// processParents maps every process's pid to its parent's.
func processParents(t *testing.T) map[int]int {
	t.Helper()
	parents := map[int]int{}
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) > 1 {
			parents[pid], _ = strconv.Atoi(f[1])
		}
	}
	return parents
}
