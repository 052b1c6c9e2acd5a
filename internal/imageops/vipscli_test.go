package imageops

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkVersusVipsCLI compares Upsize with libvips' own pipeline, the `vips resize` command (package
// libvips-tools), on the same inputs at equal threads (VIPS_CONCURRENCY=1, as the worker runs) and equal
// encoder settings (cliEncoding: JPEG Q90; PNG compression 4, Paeth filter). Both write a file. The command's
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
	write := func(name string, data []byte) string { return writeFile(b, dir, name, data) }

	// Start-up: the same command on a 1x1 image of each format.
	tiny := map[Format]string{JPEG: write("tiny.jpg", encJPEG(b, photoLike(1, 1, 0), 90)), PNG: write("tiny.png", encPNG(b, photoLike(1, 1, 0)))}
	startup := map[Format]time.Duration{}
	for f, p := range tiny {
		best := time.Hour
		for i := 0; i < 5; i++ {
			best = min(best, run(p, filepath.Join(dir, "tiny-out."+string(f))+cliSaveOptions[f], 2))
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
						start := time.Now()
						if err := upsizeToFile(srcs[f], filepath.Join(dir, "ours."+string(f)), scale); err != nil {
							b.Fatal(err)
						}
						ours = append(ours, time.Since(start))
						theirs = append(theirs, run(in, filepath.Join(dir, "theirs."+string(f))+cliSaveOptions[f], scale)-startup[f])
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

// The same encoder settings on both sides, the service's (DefaultEncoding): JPEG Q90; PNG compression 4
// with the Paeth filter on every row (libvips' filter=128); WebP Q90 at effort 4.
var (
	cliEncoding    = Encoding{JPEGQuality: 90, PNGLevel: 4, PNGFilter: PNGFilterPaeth, WebPQuality: 90, WebPEffort: 4}
	cliSaveOptions = map[Format]string{JPEG: "[Q=90]", PNG: "[compression=4,filter=128]", WebP: "[Q=90,effort=4]"}
)

// upsizeToFile is one image through imageops as the comparisons measure it: Upsize streaming into a
// file through the same buffer size the blob store uses.
func upsizeToFile(src []byte, out string, scale int) error {
	return upsizeToFileWith(src, out, scale, cliEncoding, options{})
}

func upsizeToFileWith(src []byte, out string, scale int, e Encoding, o options) error {
	fh, err := os.Create(out)
	if err != nil {
		return err
	}
	defer fh.Close()
	bw := bufio.NewWriterSize(fh, 256<<10)
	if _, err := upsizeWith(context.Background(), src, bw, Params{Scale: scale, Kernel: "lanczos3", Encoding: e}, o); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return fh.Close()
}

func writeFile(b testing.TB, dir, name string, data []byte) string {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		b.Fatal(err)
	}
	return p
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// upsizeOnlyEnv, set to "IN SCALE OUT", turns the test binary into a bare upsize process (see
// TestMain): it upsizes the file IN into OUT with cliEncoding and exits.
// BenchmarkVersusVipsCLIInstructions runs it under callgrind. Words after OUT change the upsize, for
// profiling one choice against another: "affine" (vips_affine instead of the resampler),
// "png-filter=N" (libvips' PNG filter flags, 248 for all five).
const upsizeOnlyEnv = "IMAGEOPS_UPSIZE_ONLY"

func upsizeOnly(spec string) int {
	f := strings.Fields(spec)
	var in, out string
	var scale int
	if _, err := fmt.Sscan(strings.Join(f[:min(3, len(f))], " "), &in, &scale, &out); err != nil {
		fmt.Fprintf(os.Stderr, "%s=%q: %v\n", upsizeOnlyEnv, spec, err)
		return 2
	}
	e, o := cliEncoding, options{}
	for _, w := range f[3:] {
		switch {
		case w == "affine":
			o.path = pathAffine
		case strings.HasPrefix(w, "png-filter="):
			n, err := strconv.Atoi(strings.TrimPrefix(w, "png-filter="))
			if err != nil {
				fmt.Fprintf(os.Stderr, "%s=%q: %v\n", upsizeOnlyEnv, spec, err)
				return 2
			}
			e.PNGFilter = PNGFilter(n)
		default:
			fmt.Fprintf(os.Stderr, "%s=%q: unknown word %q\n", upsizeOnlyEnv, spec, w)
			return 2
		}
	}
	Init(1)
	src, err := os.ReadFile(in)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := upsizeToFileWith(src, out, scale, e, o); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// BenchmarkVersusVipsCLIInstructions is the comparison of BenchmarkVersusVipsCLI counted in CPU
// instructions instead of seconds: valgrind's callgrind counts every instruction of every thread, the
// same count (±0.1 %) on every run whatever else the machine is doing, so it settles differences smaller
// than a shared VM's timing noise. Both sides are measured the same way, as whole processes, the
// start-up subtracted by running the same process on a 1x1 image of the same format:
//
//	imageops  = this test binary upsizing the input (see upsizeOnly) − the same on the 1x1 image
//	vips CLI  = `vips resize` on the input                            − the same on the 1x1 image
//
// Subtracting a 1x1 run, not a run that upsizes nothing, also removes one-time costs that a long-running
// worker pays once: lazy binding of libvips' symbols and GObject class set-up (~18 M instructions).
//
// Both run with VIPS_CONCURRENCY=1 and without libvips' optional modules (VIPSHOME points nowhere):
// libjxl's SIMD library executes RDTSCP, which valgrind 3.19 cannot run, and neither side needs a
// module for JPEG, PNG or WebP. For the same reason Go's runtime is told not to use RDTSCP, and not to
// preempt goroutines with signals, on which callgrind trips. Every process is counted: a WebP result is
// encoded in a process of its own (webpsave.c). Under callgrind a case takes 50-100 times its native
// time (the fourteen cases: about 15 minutes on 2 cores).
//
//	go test -run '^$' -bench VersusVipsCLIInstructions -benchtime 1x -timeout 60m ./internal/imageops/
func BenchmarkVersusVipsCLIInstructions(b *testing.B) {
	valgrind, err := exec.LookPath("valgrind")
	if err != nil {
		b.Fatalf("valgrind is needed (apt-get install valgrind): %v", err)
	}
	vips, err := exec.LookPath("vips")
	if err != nil {
		b.Fatalf("the vips command is needed (apt-get install libvips-tools): %v", err)
	}
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	env := append(os.Environ(), "VIPS_CONCURRENCY=1", "VIPSHOME="+filepath.Join(dir, "no-vips-modules"),
		"GODEBUG=cpu.rdtscp=off,asyncpreemptoff=1")
	count := func(extraEnv, name string, args ...string) (int64, error) {
		cmd := exec.Command(valgrind, append([]string{"--tool=callgrind", "--callgrind-out-file=/dev/null", name}, args...)...)
		cmd.Env = append(slices.Clip(env), extraEnv)
		out, err := cmd.CombinedOutput()
		// One count per process (the encoder server and the WebP encoders it forks too).
		ms := collected.FindAllSubmatch(out, -1)
		if err != nil || ms == nil {
			return 0, fmt.Errorf("callgrind %s %v: %v\n%s", name, args, err, out)
		}
		var total int64
		for _, m := range ms {
			n, err := strconv.ParseInt(string(m[1]), 10, 64)
			if err != nil {
				return 0, err
			}
			total += n
		}
		return total, nil
	}
	ours := func(in string, scale int) (int64, error) {
		out := filepath.Join(dir, fmt.Sprintf("ours-%d-%s", scale, filepath.Base(in)))
		return count(fmt.Sprintf("%s=%s %d %s", upsizeOnlyEnv, in, scale, out), self)
	}
	theirs := func(in string, f Format, scale int) (int64, error) {
		out := filepath.Join(dir, fmt.Sprintf("theirs-%d-%s", scale, filepath.Base(in))) + cliSaveOptions[f]
		return count("", vips, "resize", in, out, fmt.Sprint(scale), "--kernel", "lanczos3")
	}

	tiny := map[Format]string{
		JPEG: writeFile(b, dir, "tiny.jpeg", encJPEG(b, photoLike(1, 1, 0), 90)),
		PNG:  writeFile(b, dir, "tiny.png", encPNG(b, photoLike(1, 1, 0))),
		WebP: writeFile(b, dir, "tiny.webp", encWebP(b, photoLike(1, 1, 0))),
	}
	// WebP encodes cost about ten times JPEG's: its cases stop at 4 MP out.
	for _, c := range []struct {
		side   int
		f      Format
		scales []int
	}{
		{512, JPEG, []int{2, 4, 8}}, {512, PNG, []int{2, 4, 8}}, {1024, JPEG, []int{2, 4, 8}}, {1024, PNG, []int{2, 4, 8}},
		{512, WebP, []int{2, 4}},
	} {
		side, f := c.side, c.f
		img := photoLike(side, side, int64(side))
		var src []byte
		switch f {
		case JPEG:
			src = encJPEG(b, img, 90)
		case PNG:
			src = encPNG(b, img)
		case WebP:
			src = encWebP(b, img)
		}
		in := writeFile(b, dir, fmt.Sprintf("in-%d.%s", side, f), src)
		for _, scale := range c.scales {
			b.Run(fmt.Sprintf("%s-%d-%dx", f, side, scale), func(b *testing.B) {
				// Counts do not vary between runs: one measurement whatever b.N is. The four
				// processes run two at a time (callgrind runs a process on one core).
				var n [4]int64
				runs := []func() (int64, error){
					func() (int64, error) { return ours(in, scale) },
					func() (int64, error) { return theirs(in, f, scale) },
					func() (int64, error) { return ours(tiny[f], scale) },
					func() (int64, error) { return theirs(tiny[f], f, scale) },
				}
				errs := make(chan error, len(runs))
				sem := make(chan struct{}, 2)
				for i, run := range runs {
					go func() {
						sem <- struct{}{}
						defer func() { <-sem }()
						var err error
						n[i], err = run()
						errs <- err
					}()
				}
				for range runs {
					if err := <-errs; err != nil {
						b.Fatal(err)
					}
				}
				o, th := n[0]-n[2], n[1]-n[3]
				b.ReportMetric(float64(o)/1e6, "Minstr-upsize")
				b.ReportMetric(float64(th)/1e6, "Minstr-vips-cli")
				b.ReportMetric(float64(o)/float64(th), "ratio")
			})
		}
	}
}

var collected = regexp.MustCompile(`Collected : (\d+)`)
