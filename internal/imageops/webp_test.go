package imageops

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"image"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/h2non/bimg"

	"upsize/internal/testimg"
	"upsize/internal/testlog"
)

// webpCases are WebPs for every way load_webp decodes: lossy (VP8) and lossless (VP8L), with and
// without alpha (lossy alpha is a separate ALPH chunk), narrower and wider than 512 (libwebp's lossy
// decoder filters in a thread from 512 on), flat, metadata, and animations whose first frame covers the
// canvas or sits on it at an offset.
func webpCases() map[string][]byte {
	meta := testimg.WebPOptions{ICC: testimg.SRGBProfile(), EXIF: testimg.EXIF(1), XMP: []byte(`<x:xmpmeta xmlns:x="adobe:ns:meta/"/>`)}
	rotated := meta
	rotated.EXIF = testimg.EXIF(6)
	return map[string][]byte{
		"lossy":                     testimg.WebPWith(203, 151, testimg.WebPOptions{}),
		"lossy Q75, wide":           testimg.WebPWith(733, 61, testimg.WebPOptions{Quality: 75}),
		"lossy flat":                testimg.WebPWith(640, 480, testimg.WebPOptions{Flat: true}),
		"lossy alpha":               testimg.WebPWith(203, 151, testimg.WebPOptions{Alpha: true}),
		"lossy alpha, wide":         testimg.WebPWith(601, 77, testimg.WebPOptions{Alpha: true}),
		"lossless":                  testimg.WebPWith(203, 151, testimg.WebPOptions{Lossless: true}),
		"lossless alpha":            testimg.WebPWith(203, 151, testimg.WebPOptions{Lossless: true, Alpha: true}),
		"lossless flat, wide":       testimg.WebPWith(1100, 300, testimg.WebPOptions{Lossless: true, Flat: true}),
		"metadata":                  testimg.WebPWith(203, 151, meta),
		"metadata, EXIF rotated":    testimg.WebPWith(203, 151, rotated),
		"lossless metadata rotated": testimg.WebPWith(203, 151, testimg.WebPOptions{Lossless: true, EXIF: testimg.EXIF(8)}),
		"animation, frame 1 at an offset": testimg.AnimatedWebP(300, 200, []testimg.WebPFrame{
			{X: 20, Y: 10, W: 100, H: 80, Alpha: true, DurationMS: 70},
			{W: 300, H: 200, Lossless: true, DurationMS: 90},
		}),
		"animation, opaque frames": testimg.AnimatedWebP(320, 200, []testimg.WebPFrame{
			{W: 320, H: 200, DurationMS: 50},
			{W: 320, H: 200, Lossless: true, DurationMS: 50},
		}),
		"animation, lossless frame 1": testimg.AnimatedWebP(600, 100, []testimg.WebPFrame{
			{X: 100, Y: 2, W: 400, H: 90, Lossless: true, Alpha: true},
			{W: 600, H: 100, Blend: true, Dispose: true},
		}),
	}
}

// TestWebPDecodesAsLibvips: the pixels load_webp decodes (libwebp's incremental decoder, fed in
// chunks) are exactly those libvips' own webpload gives (bimg uses it), alpha included. Both sides are
// written as PNG so the comparison is lossless.
func TestWebPDecodesAsLibvips(t *testing.T) {
	for name, src := range webpCases() {
		t.Run(name, func(t *testing.T) {
			var ours bytes.Buffer
			p := Params{Scale: 1, Kernel: "nearest", Encoding: Encoding{PNGLevel: 1, StripMetadata: true}}
			if _, err := upsizeWith(context.Background(), src, &ours, p, options{output: PNG}); err != nil {
				t.Fatal(err)
			}
			// bimg rotates by the EXIF orientation as Upsize does.
			ref, err := bimg.NewImage(src).Convert(bimg.PNG)
			if err != nil {
				t.Fatal(err)
			}
			a, b := decode(t, ours.Bytes()), decode(t, ref)
			if a.Bounds() != b.Bounds() {
				t.Fatalf("bounds %v, libvips %v", a.Bounds(), b.Bounds())
			}
			for y := a.Bounds().Min.Y; y < a.Bounds().Max.Y; y++ {
				for x := a.Bounds().Min.X; x < a.Bounds().Max.X; x++ {
					if pixelDiff(a.At(x, y), b.At(x, y), false) != 0 {
						t.Fatalf("pixel (%d,%d) = %v, libvips' loader gives %v", x, y, a.At(x, y), b.At(x, y))
					}
				}
			}
		})
	}
}

// TestWebPUpsizesAsLibvips: through the whole pipeline, metadata kept, load_webp gives the same bytes
// as libvips' loader (the image load_webp makes has the same header, fields and pixels: the encoders
// are deterministic), and the metadata is there: the ICC profile and XMP unchanged, EXIF present, the
// EXIF orientation applied (libvips writes an EXIF block to every WebP it saves with metadata).
func TestWebPUpsizesAsLibvips(t *testing.T) {
	run := func(t *testing.T, src []byte, p Params, o options) ([]byte, Result) {
		var out bytes.Buffer
		res, err := upsizeWith(context.Background(), src, &out, p, o)
		if err != nil {
			t.Fatal(err)
		}
		return out.Bytes(), res
	}
	for name, src := range webpCases() {
		for _, out := range []Format{WebP, PNG, JPEG} {
			t.Run(fmt.Sprintf("%s to %s", name, out), func(t *testing.T) {
				p := Params{Scale: 2, Kernel: "lanczos3", Encoding: DefaultEncoding}
				ours, res := run(t, src, p, options{output: out})
				theirs, ref := run(t, src, p, options{output: out, libvipsWebP: true})
				if res != ref || !bytes.Equal(ours, theirs) {
					t.Fatalf("%+v, %d bytes; libvips' loader: %+v, %d bytes", res, len(ours), ref, len(theirs))
				}
				if out != WebP {
					return
				}
				info, err := Probe(src)
				if err != nil {
					t.Fatal(err)
				}
				if res.Width != 2*info.Width || res.Height != 2*info.Height {
					t.Errorf("result %dx%d, source displayed %dx%d", res.Width, res.Height, info.Width, info.Height)
				}
				chunks := riffChunks(ours)
				for tag, want := range map[string][]byte{"ICCP": riffChunks(src)["ICCP"], "XMP ": riffChunks(src)["XMP "]} {
					if !bytes.Equal(chunks[tag], want) {
						t.Errorf("%q chunk: %d bytes, want the source's %d", tag, len(chunks[tag]), len(want))
					}
				}
				if riffChunks(src)["EXIF"] != nil && chunks["EXIF"] == nil {
					t.Errorf("no EXIF chunk")
				}
			})
		}
	}
}

// riffChunks maps the top-level chunks of a WebP to their payloads.
func riffChunks(b []byte) map[string][]byte {
	m := map[string][]byte{}
	for p := 12; p+8 <= len(b); {
		n := int(binary.LittleEndian.Uint32(b[p+4:]))
		if p+8+n > len(b) {
			break
		}
		m[string(b[p:p+4])] = b[p+8 : p+8+n]
		p += 8 + n + n&1
	}
	return m
}

// TestWebPSaveAsLibvips: WebP results, encoded by our saver (webpsave.c) in its encoder process and in
// this process (the fallback), are byte for byte what libvips' own webpsave writes for the same image
// and settings: lossy with and without alpha, metadata kept (ICC, EXIF rebuilt from the header, XMP), a
// profile libvips drops because it does not fit, animations (their first frame), results in WebP of
// other formats' sources; stripped, the same image data without the metadata.
func TestWebPSaveAsLibvips(t *testing.T) {
	cases := webpCases()
	// A profile that does not parse: libvips drops it (vips_icc_is_compatible_profile).
	broken := testimg.WebPWith(64, 48, testimg.WebPOptions{ICC: testimg.SRGBProfile(), XMP: []byte("<x/>")})
	icc := riffChunks(broken)["ICCP"]
	for i := 16; i < len(icc); i++ {
		icc[i] = byte(i)
	}
	cases["broken profile"] = broken
	cases["JPEG source"] = encJPEG(t, photoLike(203, 151, 4), 90)
	cases["PNG source, alpha"] = encPNG(t, noise(97, 61, 5))
	grey := image.NewGray(image.Rect(0, 0, 40, 30))
	cases["grey PNG source (libvips' saver converts it)"] = encPNG(t, grey)
	encodings := map[string]Encoding{
		"default":       DefaultEncoding,
		"stripped":      {WebPQuality: 90, WebPEffort: 4, StripMetadata: true},
		"Q50 effort 0":  {WebPQuality: 50, WebPEffort: 0},
		"Q100 effort 6": {WebPQuality: 100, WebPEffort: 6},
	}
	for name, src := range cases {
		for ename, e := range encodings {
			// Effort 6 on a noise alpha plane at Q100 runs libwebp's slowest lossless search
			// (seconds): there, the cases without alpha.
			if e.WebPEffort == 6 && name != "lossy" && name != "metadata" && name != "JPEG source" && name != "lossy flat" {
				continue
			}
			t.Run(name+", "+ename, func(t *testing.T) {
				p := Params{Scale: 2, Kernel: "lanczos3", Encoding: e}
				var outs [3]bytes.Buffer
				for i, o := range []options{{}, {webpInProcess: true}, {libvipsWebPSave: true}} {
					o.output = WebP
					if _, err := upsizeWith(context.Background(), src, &outs[i], p, o); err != nil {
						t.Fatal(err)
					}
				}
				if !bytes.Equal(outs[0].Bytes(), outs[1].Bytes()) {
					t.Errorf("encoder process: %d bytes, in-process: %d, not the same", outs[0].Len(), outs[1].Len())
				}
				ours, theirs := outs[0].Bytes(), outs[2].Bytes()
				if !e.StripMetadata || name == "grey PNG source (libvips' saver converts it)" {
					if !bytes.Equal(ours, theirs) {
						t.Errorf("ours: %d bytes, libvips' webpsave %d, not the same", len(ours), len(theirs))
					}
					return
				}
				// libvips 8.14.1's webpsave ignores strip (its own field, never set: fixed in
				// 8.14.2); ours strips, as 8.14.2 does: the same image chunks, no metadata.
				oc, tc := riffChunks(ours), riffChunks(theirs)
				for _, tag := range []string{"ICCP", "EXIF", "XMP "} {
					if oc[tag] != nil {
						t.Errorf("stripped, but the result has a %q chunk", tag)
					}
				}
				for _, tag := range []string{"ALPH", "VP8 ", "VP8L"} {
					if !bytes.Equal(oc[tag], tc[tag]) {
						t.Errorf("%q chunk: %d bytes, libvips' %d, not the same", tag, len(oc[tag]), len(tc[tag]))
					}
				}
				if oc["VP8 "] == nil && oc["VP8L"] == nil {
					t.Errorf("no image chunk")
				}
			})
		}
	}
}

// TestWebPEncoderServerGone: should the encoder server die (the OOM killer, say), WebP results are
// still made, in this process, byte for byte the same, and a warning says that cancels now wait for
// libwebp's progress steps. Run in a child process of the test binary: the server it kills is its own.
func TestWebPEncoderServerGone(t *testing.T) {
	const env = "IMAGEOPS_TEST_SERVER_GONE"
	if os.Getenv(env) == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestWebPEncoderServerGone$", "-test.v")
		cmd.Env = append(os.Environ(), env+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !bytes.Contains(out, []byte("--- PASS: TestWebPEncoderServerGone")) {
			t.Fatalf("the test in a child process: %v\n%s", err, out)
		}
		return
	}
	src := testimg.WebPWith(203, 151, testimg.WebPOptions{Alpha: true})
	p := Params{Scale: 2, Kernel: "lanczos3", Encoding: DefaultEncoding}
	var ref bytes.Buffer
	if _, err := upsizeWith(context.Background(), src, &ref, p, options{libvipsWebPSave: true}); err != nil {
		t.Fatal(err)
	}
	servers := childProcesses(t)
	if len(servers) != 1 {
		t.Fatalf("child processes %v, want the encoder server alone", servers)
	}
	if err := syscall.Kill(servers[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", servers[0]))
		if err != nil || bytes.Contains(stat, []byte(") Z ")) {
			break // dead (a zombie until the next WebP encode finds it gone)
		}
		if time.Now().After(deadline) {
			t.Fatal("the server does not die")
		}
	}
	for i := 0; i < 2; i++ {
		var out bytes.Buffer
		var log testlog.Buffer
		p.Log = slogJSON(&log, "call")
		if _, err := Upsize(context.Background(), src, &out, p); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), ref.Bytes()) {
			t.Fatalf("%d bytes, libvips' webpsave %d: not the same", out.Len(), ref.Len())
		}
		warned := strings.Contains(log.String(), "encoder server is gone")
		if want := i == 0; warned != want {
			t.Errorf("upsize %d after the server died: warned %v, want %v (once):\n%s", i+1, warned, want, log.String())
		}
	}
	if n := len(childProcesses(t)); n != 0 {
		t.Errorf("%d child processes left: the dead server was not reaped", n)
	}
}

// childProcesses lists the pids of this process's children.
func childProcesses(t *testing.T) []int {
	t.Helper()
	var pids []int
	for pid, ppid := range processParents(t) {
		if ppid == os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestWebPEncodesConcurrently: WebP results encoded at the same time (each call forks its own encoder
// through the one server) are each the result encoded alone.
func TestWebPEncodesConcurrently(t *testing.T) {
	srcs := [][]byte{
		testimg.WebPWith(301, 211, testimg.WebPOptions{}),
		testimg.WebPWith(211, 301, testimg.WebPOptions{Alpha: true}),
		testimg.WebPWith(256, 256, testimg.WebPOptions{Lossless: true}),
		testimg.WebPWith(97, 640, testimg.WebPOptions{Flat: true}),
	}
	p := Params{Scale: 2, Kernel: "lanczos3", Encoding: DefaultEncoding}
	want := make([][]byte, len(srcs))
	for i, src := range srcs {
		want[i], _ = upsize(t, src, 2, "lanczos3")
	}
	var wg sync.WaitGroup
	for round := 0; round < 3; round++ {
		for i, src := range srcs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var out bytes.Buffer
				if _, err := Upsize(context.Background(), src, &out, p); err != nil {
					t.Error(err)
				} else if !bytes.Equal(out.Bytes(), want[i]) {
					t.Errorf("source %d: %d bytes, alone %d: not the same", i, out.Len(), len(want[i]))
				}
			}()
		}
	}
	wg.Wait()
}
