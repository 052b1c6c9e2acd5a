package imageops

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/h2non/bimg"

	"upsize/internal/testimg"
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
			p := Params{Scale: 1, Kernel: "nearest", Encoding: Encoding{PNGLevel: 1, StripMetadata: true}, output: PNG}
			if _, err := Upsize(context.Background(), src, &ours, p); err != nil {
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
	run := func(t *testing.T, src []byte, p Params) ([]byte, Result) {
		var out bytes.Buffer
		res, err := Upsize(context.Background(), src, &out, p)
		if err != nil {
			t.Fatal(err)
		}
		return out.Bytes(), res
	}
	for name, src := range webpCases() {
		for _, out := range []Format{WebP, PNG, JPEG} {
			t.Run(fmt.Sprintf("%s to %s", name, out), func(t *testing.T) {
				p := Params{Scale: 2, Kernel: "lanczos3", Encoding: DefaultEncoding, output: out}
				n := webpDecodes()
				ours, res := run(t, src, p)
				p.libvipsWebP = true
				theirs, ref := run(t, src, p)
				if d := webpDecodes() - n; d != 1 {
					t.Fatalf("the incremental loader ran %d times, want once (the other run is libvips')", d)
				}
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
