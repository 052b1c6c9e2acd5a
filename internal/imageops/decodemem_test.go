package imageops

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"upsize/internal/testimg"
)

// procStatusKB reads a field of /proc/self/status in kB.
func procStatusKB(t testing.TB, field string) int64 {
	s, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(s), "\n") {
		if strings.HasPrefix(line, field+":") {
			n, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return n
		}
	}
	t.Fatalf("no %s in /proc/self/status", field)
	return 0
}

// peakGrowth is how far resident memory rises above its level before f while f runs: the peak
// (VmHWM, reset through clear_refs) minus the resident size before.
func peakGrowth(t testing.TB, f func()) int64 {
	runtime.GC()
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Skipf("cannot reset the peak RSS: %v", err)
	}
	before := procStatusKB(t, "VmRSS")
	f()
	return (procStatusKB(t, "VmHWM") - before) * 1024
}

// TestDecodeBytesMatchesRSS: Info.DecodeBytes against the resident memory Validate adds, for the
// structures it distinguishes, at 7000x7000 where the whole-image buffers dominate: the measured peak
// must be within a factor of 2 of the estimate, and not above the estimate by more than the strip
// allowance (the estimate is meant to err high).
func TestDecodeBytesMatchesRSS(t *testing.T) {
	if testing.Short() {
		t.Skip("decodes 49 MP images")
	}
	for _, c := range []struct {
		name  string
		src   func() []byte
		whole bool // the decode holds the whole image
	}{
		{"progressive JPEG", func() []byte { return testimg.ProgressiveJPEG(7000, 7000, true) }, true},
		{"baseline JPEG", func() []byte { return testimg.JPEG(7000, 7000, testimg.JPEGOptions{Flat: true}) }, false},
		{"interlaced PNG", bigInterlacedPNG, true},
		{"PNG", func() []byte { return testimg.PNG(7000, 7000, true, false) }, false},
		{"lossy WebP", func() []byte { return testimg.WebP(7000, 7000, false, true) }, true},
		// Noise: a flat lossless image packs its one-colour palette, 8 pixels to the word, and
		// holds half the estimate. 12.6 MP: both whole-image buffers are over malloc's mmap
		// threshold (32 MB), so they show in full.
		{"lossless WebP", func() []byte { return testimg.WebP(4096, 3072, true, false) }, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			src := c.src()
			info, err := Probe(src)
			if err != nil {
				t.Fatal(err)
			}
			got := peakGrowth(t, func() {
				if err := Validate(context.Background(), src, nil); err != nil {
					t.Fatal(err)
				}
			})
			t.Logf("estimate %.1f MB, measured peak growth %.1f MB", float64(info.DecodeBytes)/1e6, float64(got)/1e6)
			if got > info.DecodeBytes*11/10 {
				t.Errorf("the decode held %.1f MB, over the estimate of %.1f MB", float64(got)/1e6, float64(info.DecodeBytes)/1e6)
			}
			// Strip-sized decodes reuse memory earlier tests left in malloc's arenas: only
			// whole-image buffers must show up in full.
			if c.whole && 2*got < info.DecodeBytes {
				t.Errorf("the decode held %.1f MB, under half the estimate of %.1f MB", float64(got)/1e6, float64(info.DecodeBytes)/1e6)
			}
		})
	}
}

func TestDecodeBytes(t *testing.T) {
	comps := func(hv ...int) []jpegComponent {
		var c []jpegComponent
		for i := 0; i < len(hv); i += 2 {
			c = append(c, jpegComponent{id: byte(i/2 + 1), h: hv[i], v: hv[i+1]})
		}
		return c
	}
	sos := []int{100}
	strip := func(w, bpp int64) int64 { return w * stripRows * bpp }
	for _, c := range []struct {
		name string
		l    jpegLayout
		want int64
	}{
		// 875 x 875 blocks in each of 3 components, 128 bytes each.
		{"progressive 4:4:4", jpegLayout{frame: mSOF2, progressive: true, width: 7000, height: 7000, components: comps(1, 1, 1, 1, 1, 1), firstScanComponents: 3, sos: sos},
			decodeBase + 3*875*875*128 + strip(7000, 3)},
		// Luma: ceil(7000*2/16) = 875 blocks a row, padded to a whole MCU (876); chroma 438.
		{"progressive 4:2:0", jpegLayout{frame: mSOF2, progressive: true, width: 7000, height: 7000, components: comps(2, 2, 1, 1, 1, 1), firstScanComponents: 3, sos: sos},
			decodeBase + (876*876+2*438*438)*128 + strip(7000, 3)},
		// Sequential, one component per scan: the whole buffer too.
		{"sequential multi-scan", jpegLayout{frame: mSOF0, width: 17, height: 9, components: comps(1, 1, 1, 1, 1, 1), firstScanComponents: 1, sos: sos},
			decodeBase + 3*3*2*128 + strip(17, 3)},
		{"baseline", jpegLayout{frame: mSOF0, width: 7000, height: 7000, components: comps(2, 2, 1, 1, 1, 1), firstScanComponents: 3, sos: sos},
			decodeBase + strip(7000, 3)},
		{"grey progressive", jpegLayout{frame: mSOF2, progressive: true, width: 9, height: 8, components: comps(1, 1), firstScanComponents: 1, sos: sos},
			decodeBase + 2*1*128 + strip(9, 1)},
	} {
		if got := decodeBytes(JPEG, nil, &c.l, c.l.width, c.l.height, len(c.l.components)); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}

	// PNG: the IHDR decides.
	ihdr := func(depth, interlace byte) []byte {
		b := pngHeader(7000, 5000)
		b[24], b[28] = depth, interlace
		return b
	}
	if got, want := decodeBytes(PNG, ihdr(8, 1), nil, 7000, 5000, 4), int64(decodeBase+7000*5000*4+strip(7000, 4)); got != want {
		t.Errorf("interlaced RGBA PNG: %d, want %d", got, want)
	}
	if got, want := decodeBytes(PNG, ihdr(16, 1), nil, 7000, 5000, 3), int64(decodeBase+7000*5000*6+strip(7000, 6)); got != want {
		t.Errorf("interlaced 16-bit RGB PNG: %d, want %d", got, want)
	}
	if got, want := decodeBytes(PNG, ihdr(8, 0), nil, 7000, 5000, 4), int64(decodeBase+strip(7000, 4)); got != want {
		t.Errorf("non-interlaced PNG: %d, want %d", got, want)
	}
	// WebP: the image, and what libwebp holds beside it for the (first) frame's codec.
	anim := func(frame []byte) []byte {
		b := []byte("RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x12\x00\x00\x00\x00\x00\x00\x00\x00\x00ANIM\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00")
		b = binary.LittleEndian.AppendUint32(append(b, "ANMF"...), uint32(16+len(frame)))
		return append(append(b, make([]byte, 16)...), frame...)
	}
	lossyAlpha := testimg.WebPWith(16, 8, testimg.WebPOptions{Alpha: true})
	if !bytes.Contains(lossyAlpha, []byte("ALPH")) {
		t.Fatal("the lossy RGBA WebP has no ALPH chunk")
	}
	for _, c := range []struct {
		name  string
		b     []byte
		bands int
		extra int64 // bytes a pixel beside the image
	}{
		{"lossy", testimg.WebP(16, 8, false, true), 3, 0},
		{"lossless", testimg.WebP(16, 8, true, true), 3, 4},
		{"lossy with alpha", lossyAlpha, 4, 5},
		{"lossless with alpha", testimg.WebPWith(16, 8, testimg.WebPOptions{Alpha: true, Lossless: true}), 4, 4},
		{"animated, lossy frame 1", anim([]byte("VP8 \x00\x00\x00\x00VP8L\x00\x00\x00\x00")), 4, 0},
		{"animated, lossless frame 1", anim([]byte("VP8L\x00\x00\x00\x00VP8 \x00\x00\x00\x00")), 4, 4},
		{"animated, lossy frame 1 with alpha", anim([]byte("ALPH\x00\x00\x00\x00VP8 \x00\x00\x00\x00")), 4, 5},
		{"truncated animation", anim(nil)[:60], 4, 5},
	} {
		if got, want := decodeBytes(WebP, c.b, nil, 1000, 1000, c.bands), decodeBase+int64(c.bands)*1000*1000+c.extra*1000*1000+strip(1000, int64(c.bands)); got != want {
			t.Errorf("%s WebP: %d, want %d", c.name, got, want)
		}
	}

	// Probe fills it in from the file.
	info, err := Probe(testimg.JPEG(800, 600, testimg.JPEGOptions{Progressive: true, Flat: true}))
	if want := int64(decodeBase + 3*100*75*128 + strip(800, 3)); err != nil || info.DecodeBytes != want {
		t.Errorf("Probe(progressive 800x600) = %+v, %v; want DecodeBytes %d", info, err, want)
	}
	info, err = Probe(blankPNG(300, 200))
	if want := int64(decodeBase + strip(300, 1)); err != nil || info.DecodeBytes != want {
		t.Errorf("Probe(grey PNG 300x200) = %+v, %v; want DecodeBytes %d", info, err, want)
	}
}
