package imageops

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// BenchmarkVersusVipsCLI compares Upsize with libvips' own pipeline, the `vips resize` command (package
// libvips-tools), on the same inputs at equal threads (VIPS_CONCURRENCY=1, as the worker runs) and equal
// encoder settings (JPEG Q90; PNG compression 4 with adaptive filtering). Both write a file. The command's
// process start-up (exec, libvips init, loading a 1x1 image) is measured separately and subtracted.
// Reported per case: the median ms per image of both, over alternating runs, and their ratio (<1: Upsize
// is faster).
//
//	go test -run '^$' -bench VersusVipsCLI -benchtime 7x ./internal/imageops/
func BenchmarkVersusVipsCLI(b *testing.B) {
	vips, err := exec.LookPath("vips")
	if err != nil {
		b.Fatalf("the vips command is needed (apt-get install libvips-tools): %v", err)
	}
	Init(1)
	dir := b.TempDir()
	env := append(os.Environ(), "VIPS_CONCURRENCY=1")
	run := func(in, out string, scale int) time.Duration {
		start := time.Now()
		cmd := exec.Command(vips, "resize", in, out, fmt.Sprint(scale), "--kernel", "lanczos3")
		cmd.Env = env
		if msg, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("vips resize: %v: %s", err, msg)
		}
		return time.Since(start)
	}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			b.Fatal(err)
		}
		return p
	}
	saveOpts := map[Format]string{JPEG: "[Q=90]", PNG: "[compression=4,filter=248]"}
	enc := Encoding{JPEGQuality: 90, PNGLevel: 4, PNGAdaptive: true}

	// Start-up: the same command on a 1x1 image of each format.
	tiny := map[Format]string{JPEG: write("tiny.jpg", encJPEG(b, photoLike(1, 1, 0), 90)), PNG: write("tiny.png", encPNG(b, photoLike(1, 1, 0)))}
	startup := map[Format]time.Duration{}
	for f, p := range tiny {
		best := time.Hour
		for i := 0; i < 5; i++ {
			best = min(best, run(p, filepath.Join(dir, "tiny-out."+string(f))+saveOpts[f], 2))
		}
		startup[f] = best
	}

	for _, side := range []int{512, 1024} {
		img := photoLike(side, side, int64(side))
		srcs := map[Format][]byte{JPEG: encJPEG(b, img, 90), PNG: encPNG(b, img)}
		for _, f := range []Format{JPEG, PNG} {
			in := write(fmt.Sprintf("in-%d.%s", side, f), srcs[f])
			for _, scale := range []int{2, 4, 8} {
				b.Run(fmt.Sprintf("%s-%d-%dx", f, side, scale), func(b *testing.B) {
					var ours, theirs []time.Duration
					for i := 0; i < b.N; i++ {
						out := filepath.Join(dir, "ours."+string(f))
						start := time.Now()
						fh, err := os.Create(out)
						if err != nil {
							b.Fatal(err)
						}
						bw := bufio.NewWriterSize(fh, 256<<10) // as the blob store writes
						if _, err := Upsize(context.Background(), srcs[f], bw, Params{Scale: scale, Kernel: "lanczos3", Encoding: enc}); err != nil {
							b.Fatal(err)
						}
						bw.Flush()
						fh.Close()
						ours = append(ours, time.Since(start))
						theirs = append(theirs, run(in, filepath.Join(dir, "theirs."+string(f))+saveOpts[f], scale)-startup[f])
					}
					// Medians of alternating runs: on a shared VM one slow run would move a mean.
					o, th := median(ours), median(theirs)
					b.ReportMetric(float64(o.Microseconds())/1000, "ms-upsize")
					b.ReportMetric(float64(th.Microseconds())/1000, "ms-vips-cli")
					b.ReportMetric(float64(o)/float64(th), "ratio")
				})
			}
		}
	}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
