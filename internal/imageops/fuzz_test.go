package imageops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"upsize/internal/testimg"
)

// FuzzUploadBytes feeds arbitrary bytes through what an upload and a worker do with them. Whatever the
// bytes, nothing panics and every failure is one of the defined errors (a 4xx for the client, never a
// crashed worker). Seeds run in every `go test`; `go test -fuzz FuzzUploadBytes ./internal/imageops/`
// explores further.
func FuzzUploadBytes(f *testing.F) {
	Init(0)
	png := encPNG(f, noise(16, 12, 1))
	jpg := encJPEG(f, noise(16, 12, 2), 80)
	f.Add(png)
	f.Add(jpg)
	f.Add(corruptPNG())
	f.Add(png[:len(png)/2])
	f.Add(jpg[:40])
	f.Add([]byte("RIFF\x10\x00\x00\x00WEBPVP8 \x00\x00\x00\x00"))
	f.Add(pngHeader(1<<30, 1<<30))
	f.Add([]byte{})
	f.Add(testimg.JPEG(16, 12, testimg.JPEGOptions{Progressive: true}))
	f.Add(testimg.ScanBomb(16, 12, MaxJPEGScans)) // refused from its structure
	f.Add(testimg.InterlacedPNG(16, 12))
	// WebP: every codec and layout our loader decodes, whole and damaged.
	for _, b := range [][]byte{
		testimg.WebPWith(16, 12, testimg.WebPOptions{Alpha: true}),
		testimg.WebPWith(16, 12, testimg.WebPOptions{Lossless: true, Alpha: true}),
		testimg.WebPWith(16, 12, testimg.WebPOptions{EXIF: testimg.EXIF(6)}),
		testimg.AnimatedWebP(24, 20, []testimg.WebPFrame{{X: 2, Y: 4, W: 16, H: 12, Lossless: true}, {W: 24, H: 20, Alpha: true}}),
	} {
		f.Add(b)
		damaged := slices.Clone(b)
		for i := len(b) / 2; i < len(b)/2+8 && i < len(b); i++ {
			damaged[i] ^= 0x5a
		}
		f.Add(damaged)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		known := func(err error) bool {
			return err == nil || errors.Is(err, ErrUnsupportedFormat) || errors.Is(err, ErrInvalidImage) || errors.Is(err, ErrTooLarge)
		}
		info, err := Probe(b)
		if !known(err) {
			t.Fatalf("Probe: undefined error %v", err)
		}
		// Where libjpeg read a header, the marker walk found it too (it follows libjpeg's reader).
		if f, _ := Sniff(b); err == nil && f == JPEG {
			if l := walkJPEG(b, 0); l.frame == 0 || len(l.sos) == 0 {
				t.Fatalf("libjpeg read a header the marker walk did not find: %+v", l)
			}
		}
		if err != nil || info.Pixels() > 1<<20 {
			return // the API refuses these before any decode
		}
		if err := Validate(context.Background(), b, nil); !known(err) {
			t.Fatalf("Validate: undefined error %v", err)
		}
		_, err = Upsize(context.Background(), b, io.Discard, Params{Scale: 2, Kernel: "lanczos3", Encoding: DefaultEncoding, MaxOutputPixels: 1 << 22})
		if !known(err) {
			t.Fatalf("Upsize: undefined error %v", err)
		}
	})
}

// FuzzJPEGMarkers feeds arbitrary bytes to the JPEG marker walk: it never panics, always ends (it
// moves forward at every step), every scan offset it reports is an SOS marker inside the input, in
// increasing order, and a scan limit only cuts the same list short. The seed corpus in
// testdata/fuzz/FuzzJPEGMarkers holds real files (TestWriteFuzzSeeds writes them).
//
//	go test -run '^$' -fuzz FuzzJPEGMarkers -fuzztime 1m ./internal/imageops/
func FuzzJPEGMarkers(f *testing.F) {
	f.Add([]byte("\xff\xd8\xff\xd9"))
	f.Add([]byte("\xff\xd8\xff\xc2\x00\x0b\x08\x00\x01\x00\x01\x01\x01\x11\x00\xff\xda\x00\x08\x01\x01\x00\x00\x00\x00\xff\x00\xff\xd0\xff\xff\xda"))
	f.Fuzz(func(t *testing.T, b []byte) {
		all := walkJPEG(b, 0)
		checkOffsets(t, b, all)
		if all.overLimit {
			t.Fatal("over the limit without a limit")
		}
		for _, limit := range []int{1, 3} {
			l := walkJPEG(b, limit)
			checkOffsets(t, b, l)
			if l.overLimit != (len(all.sos) > limit) || (l.overLimit && len(l.sos) != limit+1) {
				t.Fatalf("limit %d: %d scans, over %v; without a limit %d scans", limit, len(l.sos), l.overLimit, len(all.sos))
			}
			if !slices.Equal(l.sos, all.sos[:len(l.sos)]) {
				t.Fatalf("limit %d: scans %v, without a limit %v", limit, l.sos, all.sos)
			}
		}
		if all.frame != 0 && all.coefficientBytes() <= 0 {
			t.Fatalf("frame %+v: coefficient buffer of %d bytes", all, all.coefficientBytes())
		}
	})
}

// TestFuzzSeedsAreCommitted: FuzzJPEGMarkers' seed corpus holds one real file of each kind: libvips'
// baseline, progressive and grey progressive JPEGs, one with restart markers, Go's 4:2:0 encoder, a
// truncated one, one with fill bytes and trailing garbage, and a small scan bomb. With
// IMAGEOPS_WRITE_FUZZ_SEEDS=1 it (re)writes them from the encoders (their bytes depend on libvips' and
// Go's versions, so they are not compared otherwise).
func TestFuzzSeedsAreCommitted(t *testing.T) {
	progressive := testimg.JPEG(16, 16, testimg.JPEGOptions{Progressive: true})
	seeds := map[string][]byte{
		"baseline":         testimg.JPEG(16, 16, testimg.JPEGOptions{Quality: 75}),
		"progressive":      progressive,
		"grey-progressive": testimg.JPEG(16, 16, testimg.JPEGOptions{Progressive: true, Grey: true}),
		"restart-markers":  testimg.JPEG(32, 16, testimg.JPEGOptions{Restart: 1, Quality: 75}),
		"subsampled":       encJPEG(t, noise(17, 9, 5), 75),
		"truncated":        progressive[:len(progressive)*2/3],
		"fill-and-trailing": append(slices.Concat(progressive[:len(progressive)-2], []byte{0xFF, 0xFF, 0xFF, 0xD9}),
			"trailing garbage\xff\xda"...),
		"scan-bomb": testimg.ScanBomb(16, 16, MaxJPEGScans),
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzJPEGMarkers")
	if os.Getenv("IMAGEOPS_WRITE_FUZZ_SEEDS") == "" {
		for name := range seeds {
			if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
				t.Errorf("seed %s: %v (IMAGEOPS_WRITE_FUZZ_SEEDS=1 writes it)", name, err)
			}
		}
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range seeds {
		data := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
