package imageops

import (
	"bytes"
	"compress/zlib"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"log/slog"
	"math/rand"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/h2non/bimg"

	"upsize/internal/testimg"
)

func TestMain(m *testing.M) {
	// The instruction-count benchmark runs this binary under callgrind as a bare upsize process.
	if spec := os.Getenv(upsizeOnlyEnv); spec != "" {
		os.Exit(upsizeOnly(spec))
	}
	Init(0)
	m.Run()
}

func encPNG(t testing.TB, img image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// encWebP encodes img as a lossy WebP at Q90 with libvips (through bimg).
func encWebP(t testing.TB, img image.Image) []byte {
	t.Helper()
	b, err := bimg.NewImage(encPNG(t, img)).Process(bimg.Options{Type: bimg.WEBP, Quality: 90})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func encJPEG(t testing.TB, img image.Image, q int) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, &jpeg.Options{Quality: q}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func solid(w, h int, c color.NRGBA) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for i := 0; i < len(img.Pix); i += 4 {
		img.Pix[i], img.Pix[i+1], img.Pix[i+2], img.Pix[i+3] = c.R, c.G, c.B, c.A
	}
	return img
}

// checker is black and white cells of cell x cell pixels, white at (0,0).
func checker(w, h, cell int) *image.Gray {
	img := image.NewGray(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			if (x/cell+y/cell)%2 == 0 {
				img.Pix[y*img.Stride+x] = 255
			}
		}
	}
	return img
}

func noise(w, h int, seed int64) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	rand.New(rand.NewSource(seed)).Read(img.Pix)
	for i := 3; i < len(img.Pix); i += 4 {
		img.Pix[i] = 255
	}
	return img
}

func upsize(t testing.TB, src []byte, scale int, kernel Kernel) ([]byte, Result) {
	t.Helper()
	var out bytes.Buffer
	res, err := Upsize(context.Background(), src, &out, Params{Scale: scale, Kernel: kernel, Encoding: DefaultEncoding})
	if err != nil {
		t.Fatalf("Upsize %dx %s: %v", scale, kernel, err)
	}
	return out.Bytes(), res
}

func decode(t testing.TB, b []byte) image.Image {
	t.Helper()
	img, _, err := image.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("result does not decode: %v", err)
	}
	return img
}

func nrgba(img image.Image, x, y int) color.NRGBA {
	return color.NRGBAModel.Convert(img.At(x, y)).(color.NRGBA)
}

func TestSniff(t *testing.T) {
	var g bytes.Buffer
	if err := gif.Encode(&g, solid(4, 4, color.NRGBA{1, 2, 3, 255}), nil); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"gif": g.Bytes(), "text": []byte("this is plain text, not an image"), "empty": nil,
		"riff not webp": []byte("RIFF\x00\x00\x00\x00WAVEfmt "), "png prefix only": []byte("\x89PNG"),
	} {
		if _, err := Sniff(b); !errors.Is(err, ErrUnsupportedFormat) {
			t.Errorf("%s: Sniff err = %v, want ErrUnsupportedFormat", name, err)
		}
	}
	p := encPNG(t, solid(4, 4, color.NRGBA{255, 0, 0, 255}))
	j := encJPEG(t, solid(4, 4, color.NRGBA{255, 0, 0, 255}), 90)
	w, err := bimg.NewImage(p).Convert(bimg.WEBP)
	if err != nil {
		t.Fatal(err)
	}
	for want, b := range map[Format][]byte{PNG: p, JPEG: j, WebP: w} {
		if got, err := Sniff(b); err != nil || got != want {
			t.Errorf("Sniff = %v, %v; want %v", got, err, want)
		}
	}
}

// A white image must stay white to the last pixel: no dark fringe on the right or bottom edge.
func TestUpsizeWhiteHasNoDarkBorder(t *testing.T) {
	src := encPNG(t, solid(37, 23, color.NRGBA{255, 255, 255, 255}))
	for _, k := range []Kernel{"lanczos3", "linear", "nearest", "nohalo", "lbb"} {
		for _, s := range []int{2, 4, 8} {
			out, res := upsize(t, src, s, k)
			if res.Width != 37*s || res.Height != 23*s {
				t.Fatalf("%s %dx: size %dx%d", k, s, res.Width, res.Height)
			}
			img := decode(t, out)
			b := img.Bounds()
			for y := 0; y < b.Dy(); y++ {
				for x := 0; x < b.Dx(); x++ {
					if c := nrgba(img, x, y); c.R < 254 || c.G < 254 || c.B < 254 {
						t.Fatalf("%s %dx: pixel (%d,%d) is %v, want white", k, s, x, y, c)
					}
				}
			}
		}
	}
}

// On a checkerboard, every output cell's centre has the source cell's colour, and each edge between
// cells sits exactly on the output cell boundary: the pixels on either side of it mirror each other
// (a content shift of (s-1)/2 px would break the mirror).
func TestUpsizeCheckerboardIsCentreAligned(t *testing.T) {
	const w, h, cell = 24, 16, 4
	src := encPNG(t, checker(w, h, cell))
	for _, k := range []Kernel{"lanczos3", "linear", "nearest"} {
		for _, s := range []int{2, 4, 8} {
			out, _ := upsize(t, src, s, k)
			img := decode(t, out)
			oc := cell * s // output cell size
			gray := func(x, y int) int { return int(nrgba(img, x, y).R) }
			for cy := 0; cy < h/cell; cy++ {
				for cx := 0; cx < w/cell; cx++ {
					want := 0
					if (cx+cy)%2 == 0 {
						want = 255
					}
					x, y := cx*oc+oc/2, cy*oc+oc/2
					if g := gray(x, y); abs(g-want) > 2 {
						t.Fatalf("%s %dx: centre of cell (%d,%d) at (%d,%d) is %d, want %d", k, s, cx, cy, x, y, g, want)
					}
				}
			}
			// Mirror across each vertical cell edge, on a row through cell centres.
			y := oc / 2
			for e := 1; e < w/cell; e++ {
				edge := e * oc
				for d := 0; d < oc/2; d++ {
					l, r := gray(edge-1-d, y), gray(edge+d, y)
					if abs(l+r-255) > 3 {
						t.Fatalf("%s %dx: around x=%d (±%d) values %d and %d are not mirror images: content is shifted", k, s, edge, d, l, r)
					}
				}
			}
			// The same across horizontal edges.
			x := oc / 2
			for e := 1; e < h/cell; e++ {
				edge := e * oc
				for d := 0; d < oc/2; d++ {
					a, b := gray(x, edge-1-d), gray(x, edge+d)
					if abs(a+b-255) > 3 {
						t.Fatalf("%s %dx: around y=%d (±%d) values %d and %d are not mirror images", k, s, edge, d, a, b)
					}
				}
			}
		}
	}
}

// Nearest is an exact replication of each source pixel into an s x s block.
func TestUpsizeNearestReplicates(t *testing.T) {
	srcImg := noise(9, 7, 1)
	out, _ := upsize(t, encPNG(t, srcImg), 4, "nearest")
	img := decode(t, out)
	for y := 0; y < 28; y++ {
		for x := 0; x < 36; x++ {
			if got, want := nrgba(img, x, y), srcImg.NRGBAAt(x/4, y/4); got != want {
				t.Fatalf("(%d,%d) = %v, want %v", x, y, got, want)
			}
		}
	}
}

func TestUpsizeKeepsAlpha(t *testing.T) {
	// Left half fully transparent but with garish RGB; right half opaque grey.
	img := image.NewNRGBA(image.Rect(0, 0, 16, 8))
	for y := 0; y < 8; y++ {
		for x := 0; x < 16; x++ {
			i := img.PixOffset(x, y)
			if x < 8 {
				img.Pix[i], img.Pix[i+1], img.Pix[i+2], img.Pix[i+3] = 255, 0, 255, 0
			} else {
				img.Pix[i], img.Pix[i+1], img.Pix[i+2], img.Pix[i+3] = 100, 100, 100, 255
			}
		}
	}
	out, res := upsize(t, encPNG(t, img), 4, "lanczos3")
	if res.Format != PNG {
		t.Fatalf("format %s", res.Format)
	}
	got := decode(t, out)
	if _, ok := got.(*image.NRGBA); !ok {
		if _, ok := got.(*image.NRGBA64); !ok {
			t.Fatalf("result has no alpha channel: %T", got)
		}
	}
	for y := 0; y < 32; y++ {
		if c := nrgba(got, 2, y); c.A != 0 {
			t.Fatalf("transparent side became alpha %d", c.A)
		}
		if c := nrgba(got, 60, y); c.A != 255 || c.R != 100 {
			t.Fatalf("opaque side became %v", c)
		}
		// Next to the edge the colour of partly transparent pixels must still be the grey: the
		// transparent pixels' magenta must not bleed in (alpha is premultiplied while resampling).
		for x := 28; x < 36; x++ {
			if c := nrgba(got, x, y); c.A > 16 && (abs(int(c.R)-100) > 6 || abs(int(c.G)-100) > 6) {
				t.Fatalf("pixel (%d,%d) = %v: colour bleeds from transparent pixels", x, y, c)
			}
		}
	}
}

func TestUpsizeKeepsFormat(t *testing.T) {
	base := noise(20, 10, 2)
	p := encPNG(t, base)
	j := encJPEG(t, base, 90)
	w, err := bimg.NewImage(p).Convert(bimg.WEBP)
	if err != nil {
		t.Fatal(err)
	}
	for want, src := range map[Format][]byte{PNG: p, JPEG: j, WebP: w} {
		out, res := upsize(t, src, 2, "lanczos3")
		got, err := Sniff(out)
		if err != nil || got != want || res.Format != want {
			t.Errorf("%s upsized to %v (%v), result says %s", want, got, err, res.Format)
		}
		info, err := Probe(out)
		if err != nil || info.Width != 40 || info.Height != 20 {
			t.Errorf("%s: result header %+v, %v", want, info, err)
		}
	}
}

// withOrientation inserts an Exif APP1 segment with the Orientation tag after the SOI marker.
func withOrientation(jpg []byte, o uint16) []byte {
	var tiff bytes.Buffer
	tiff.WriteString("MM\x00\x2a")
	binary.Write(&tiff, binary.BigEndian, uint32(8))
	binary.Write(&tiff, binary.BigEndian, uint16(1))
	binary.Write(&tiff, binary.BigEndian, uint16(0x0112))
	binary.Write(&tiff, binary.BigEndian, uint16(3))
	binary.Write(&tiff, binary.BigEndian, uint32(1))
	binary.Write(&tiff, binary.BigEndian, o)
	binary.Write(&tiff, binary.BigEndian, uint16(0))
	binary.Write(&tiff, binary.BigEndian, uint32(0))
	payload := append([]byte("Exif\x00\x00"), tiff.Bytes()...)
	var out bytes.Buffer
	out.Write(jpg[:2])
	out.Write([]byte{0xff, 0xe1})
	binary.Write(&out, binary.BigEndian, uint16(len(payload)+2))
	out.Write(payload)
	out.Write(jpg[2:])
	return out.Bytes()
}

func TestUpsizeAppliesEXIFOrientation(t *testing.T) {
	// 40x20 stored: left half red, right half blue. Orientation 6 means "rotate 90° clockwise to
	// display": displayed 20x40 with red on top.
	img := image.NewNRGBA(image.Rect(0, 0, 40, 20))
	for y := 0; y < 20; y++ {
		for x := 0; x < 40; x++ {
			c := color.NRGBA{0, 0, 255, 255}
			if x < 20 {
				c = color.NRGBA{255, 0, 0, 255}
			}
			img.SetNRGBA(x, y, c)
		}
	}
	src := withOrientation(encJPEG(t, img, 95), 6)
	info, err := Probe(src)
	if err != nil || info.Width != 20 || info.Height != 40 || info.Orientation != 6 {
		t.Fatalf("Probe = %+v, %v; want displayed 20x40, orientation 6", info, err)
	}
	out, res := upsize(t, src, 2, "lanczos3")
	if res.Width != 40 || res.Height != 80 {
		t.Fatalf("result %dx%d, want 40x80", res.Width, res.Height)
	}
	got := decode(t, out)
	if b := got.Bounds(); b.Dx() != 40 || b.Dy() != 80 {
		t.Fatalf("decoded %v", b)
	}
	if top, bottom := nrgba(got, 20, 10), nrgba(got, 20, 70); top.R < 200 || bottom.B < 200 {
		t.Fatalf("top %v bottom %v: want red on top, blue below", top, bottom)
	}
	if o, _ := Probe(out); o.Orientation > 1 {
		t.Fatalf("result still carries orientation %d: viewers would rotate it twice", o.Orientation)
	}
}

func pngChunk(typ string, data []byte) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.BigEndian, uint32(len(data)))
	b.WriteString(typ)
	b.Write(data)
	crc := crc32.NewIEEE()
	crc.Write([]byte(typ))
	crc.Write(data)
	binary.Write(&b, binary.BigEndian, crc.Sum32())
	return b.Bytes()
}

func pngHeader(w, h uint32) []byte {
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8], ihdr[9] = 8, 0 // 8-bit grey
	return append([]byte("\x89PNG\r\n\x1a\n"), pngChunk("IHDR", ihdr)...)
}

// corruptPNG has a valid header and an IDAT that is not zlib.
func corruptPNG() []byte {
	junk := make([]byte, 512)
	rand.New(rand.NewSource(77)).Read(junk)
	junk[0], junk[1] = 0xff, 0xff
	b := append(pngHeader(64, 48), pngChunk("IDAT", junk)...)
	return append(b, pngChunk("IEND", nil)...)
}

// blankPNG is a valid w x h grey PNG of zeros, cheap to build at any size.
func blankPNG(w, h int) []byte {
	var z bytes.Buffer
	zw, _ := zlib.NewWriterLevel(&z, zlib.BestCompression)
	row := make([]byte, 1+w)
	for y := 0; y < h; y++ {
		zw.Write(row)
	}
	zw.Close()
	b := append(pngHeader(uint32(w), uint32(h)), pngChunk("IDAT", z.Bytes())...)
	return append(b, pngChunk("IEND", nil)...)
}

func TestCorruptImage(t *testing.T) {
	bad := corruptPNG()
	if _, err := Probe(bad); err != nil {
		t.Fatalf("Probe of a valid header: %v", err)
	}
	if err := Validate(context.Background(), bad, nil); !errors.Is(err, ErrInvalidImage) {
		t.Fatalf("Validate = %v, want ErrInvalidImage", err)
	}
	if _, err := Upsize(context.Background(), bad, io.Discard, Params{Scale: 2, Kernel: "lanczos3"}); !errors.Is(err, ErrInvalidImage) {
		t.Fatalf("Upsize = %v, want ErrInvalidImage", err)
	}
	// A truncated JPEG is refused too, not filled with grey.
	j := encJPEG(t, noise(64, 64, 3), 90)
	if err := Validate(context.Background(), j[:len(j)/2], nil); !errors.Is(err, ErrInvalidImage) {
		t.Fatalf("Validate(truncated JPEG) = %v, want ErrInvalidImage", err)
	}
	if err := Validate(context.Background(), j, nil); err != nil {
		t.Fatalf("Validate(good JPEG) = %v", err)
	}
}

// Limits are decided from the header: a 10000x5001 image is refused without decoding its 50 MP.
func TestPixelLimitsFromHeader(t *testing.T) {
	big := blankPNG(10000, 5001)
	start := time.Now()
	info, err := Probe(big)
	if err != nil || info.Pixels() != 50010000 {
		t.Fatalf("Probe = %+v, %v", info, err)
	}
	_, err = Upsize(context.Background(), big, io.Discard, Params{Scale: 2, Kernel: "lanczos3", MaxInputPixels: 50000000})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("input over the limit: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Logf("header checks took %s", d) // informative: a decode would take far longer
	}
	small := blankPNG(1251, 1251)
	_, err = Upsize(context.Background(), small, io.Discard, Params{Scale: 8, Kernel: "lanczos3", MaxOutputPixels: 100000000})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("output over the limit: %v", err)
	}
	// A result side the format cannot hold: refused before the WebP is decoded (the encoder would
	// refuse it too, but only once the decode is done). With a context already canceled, anything
	// that reached libvips would answer context.Canceled. And where it fits, the result is made.
	wide := testimg.WebPWith(8200, 16, testimg.WebPOptions{Flat: true})
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err = Upsize(canceled, wide, io.Discard, Params{Scale: 2, Kernel: "lanczos3"}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("a %d px wide WebP result: %v", 2*8200, err)
	}
	if _, err = upsizeWith(context.Background(), wide, io.Discard, Params{Scale: 2, Kernel: "lanczos3", Encoding: DefaultEncoding}, options{output: JPEG}); err != nil {
		t.Fatalf("as a JPEG: %v", err)
	}
}

func TestUnknownKernel(t *testing.T) {
	if KnownKernel("bicubic9") {
		t.Fatal("bicubic9 known")
	}
	_, err := Upsize(context.Background(), encPNG(t, noise(4, 4, 1)), io.Discard, Params{Scale: 2, Kernel: "bicubic9"})
	if !errors.Is(err, ErrUnknownKernel) {
		t.Fatalf("err = %v", err)
	}
}

type failWriter struct{ after int }

func (f *failWriter) Write(p []byte) (int, error) {
	if f.after -= len(p); f.after < 0 {
		return 0, errors.New("disk full")
	}
	return len(p), nil
}

func TestWriterErrorIsReported(t *testing.T) {
	_, err := Upsize(context.Background(), encPNG(t, noise(256, 256, 4)), &failWriter{after: 1000}, Params{Scale: 4, Kernel: "lanczos3", Encoding: DefaultEncoding})
	if err == nil || errors.Is(err, ErrInvalidImage) {
		t.Fatalf("err = %v, want the writer's error", err)
	}
}

// A canceled context aborts a long evaluation: Upsize returns soon after, with ctx's error.
func TestUpsizeAbortsOnCancel(t *testing.T) {
	src := encPNG(t, noise(1024, 1024, 5))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := Upsize(ctx, src, io.Discard, Params{Scale: 8, Kernel: "lanczos3", Encoding: DefaultEncoding})
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	canceled := time.Now()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		t.Logf("Upsize returned %s after cancel", time.Since(canceled))
	case <-time.After(10 * time.Second):
		t.Fatal("Upsize did not stop after cancel")
	}
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// libvips' warnings reach the service's JSON log, not raw stderr.
func TestLibvipsMessagesGoToTheLogger(t *testing.T) {
	var buf bytes.Buffer
	SetLogger(slog.New(slog.NewJSONHandler(&buf, nil)))
	defer SetLogger(nil)
	j := encJPEG(t, noise(64, 64, 3), 90)
	Validate(context.Background(), j[:len(j)/2], nil)
	if !strings.Contains(buf.String(), `"msg":"libvips"`) {
		t.Fatalf("no libvips line in the log: %q", buf.String())
	}
}
