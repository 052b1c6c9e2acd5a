package testimg

import (
	"bytes"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"testing"
)

// sof returns the SOFn code and component count of a JPEG made here.
func sof(t *testing.T, b []byte) (code byte, comps int) {
	t.Helper()
	for p := 2; p+4 <= len(b) && b[p] == 0xFF; p += 2 + (int(b[p+2])<<8 | int(b[p+3])) {
		if m := b[p+1]; m >= 0xC0 && m <= 0xC2 {
			return m, int(b[p+9])
		}
	}
	t.Fatal("no SOF")
	return 0, 0
}

func near(c color.Color, want [4]float64, grey bool) bool {
	r, g, b, _ := c.RGBA()
	if grey {
		g, b = r, r
		want[1], want[2] = want[0], want[0]
	}
	for i, v := range []uint32{r >> 8, g >> 8, b >> 8} {
		if d := int(v) - int(want[i]); d < -2 || d > 2 {
			return false
		}
	}
	return true
}

func TestJPEG(t *testing.T) {
	for _, c := range []struct {
		o            JPEGOptions
		code         byte
		comps, scans int
	}{
		{JPEGOptions{Flat: true}, 0xC0, 3, 1},
		{JPEGOptions{Progressive: true}, 0xC2, 3, 10},
		{JPEGOptions{Progressive: true, Grey: true, Flat: true}, 0xC2, 1, 6},
		{JPEGOptions{Restart: 1}, 0xC0, 3, 1},
	} {
		b := JPEG(40, 24, c.o)
		code, comps := sof(t, b)
		if code != c.code || comps != c.comps || Scans(b) != c.scans {
			t.Errorf("%+v: SOF %#x with %d components, %d scans; want %#x, %d, %d", c.o, code, comps, Scans(b), c.code, c.comps, c.scans)
		}
		if hasRST := bytes.Contains(b, []byte{0xFF, 0xD0}); hasRST != (c.o.Restart > 0) {
			t.Errorf("%+v: restart markers %v", c.o, hasRST)
		}
		img, err := jpeg.Decode(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%+v: %v", c.o, err)
		}
		if c.o.Flat && !near(img.At(20, 12), Colour, c.o.Grey) {
			t.Errorf("%+v: flat image has %v, want %v", c.o, img.At(20, 12), Colour)
		}
	}
}

// The bombs have the scans they say and decode (with Go's decoder: an independent reading) to the
// flat colour.
func TestScanBombs(t *testing.T) {
	base := Scans(ProgressiveJPEG(8, 8, true))
	for name, b := range map[string][]byte{"AC": ScanBomb(48, 40, 100), "DC": DCScanBomb(48, 40, 7)} {
		want := base + 100
		if name == "DC" {
			want = base + 7
		}
		if n := Scans(b); n != want {
			t.Errorf("%s: %d scans, want %d", name, n, want)
		}
		img, err := jpeg.Decode(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !near(img.At(47, 39), Colour, false) {
			t.Errorf("%s: pixel %v, want %v", name, img.At(47, 39), Colour)
		}
	}
}

func TestInterlacedPNG(t *testing.T) {
	b := InterlacedPNG(37, 21)
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if img.Bounds() != image.Rect(0, 0, 37, 21) || b[8+8+12] != 1 {
		t.Fatalf("bounds %v, interlace %d", img.Bounds(), b[28])
	}
	want := color.NRGBA{byte(Colour[0]), byte(Colour[1]), byte(Colour[2]), byte(Colour[3])}
	for y := 0; y < 21; y++ {
		for x := 0; x < 37; x++ {
			if got := color.NRGBAModel.Convert(img.At(x, y)); got != want {
				t.Fatalf("(%d,%d) = %v, want %v", x, y, got, want)
			}
		}
	}
}

func TestPNGAndWebP(t *testing.T) {
	for _, interlaced := range []bool{false, true} {
		b := PNG(30, 20, false, interlaced)
		if _, err := png.Decode(bytes.NewReader(b)); err != nil || (b[28] == 1) != interlaced {
			t.Errorf("PNG interlaced=%v: %v, interlace byte %d", interlaced, err, b[28])
		}
	}
	for _, lossless := range []bool{false, true} {
		b := WebP(30, 20, lossless, true)
		chunk := "VP8 "
		if lossless {
			chunk = "VP8L"
		}
		if len(b) < 16 || string(b[0:4]) != "RIFF" || string(b[8:12]) != "WEBP" || !bytes.Contains(b, []byte(chunk)) {
			t.Errorf("WebP lossless=%v: no %q chunk in %q", lossless, chunk, b[:min(64, len(b))])
		}
	}
}

// WebPWith makes what it is asked for: the codec's chunk, an alpha band (lossy: an ALPH chunk), the
// metadata chunks, and an EXIF orientation libvips reads back.
func TestWebPWith(t *testing.T) {
	for _, c := range []struct {
		o      WebPOptions
		chunks []string
		bands  int
	}{
		{WebPOptions{}, []string{"VP8 "}, 3},
		{WebPOptions{Quality: 75, Flat: true}, []string{"VP8 "}, 3},
		{WebPOptions{Alpha: true}, []string{"VP8X", "ALPH", "VP8 "}, 4},
		{WebPOptions{Lossless: true, Alpha: true}, []string{"VP8X", "VP8L"}, 4},
		{WebPOptions{ICC: SRGBProfile(), EXIF: EXIF(6), XMP: []byte("<x/>")}, []string{"VP8X", "ICCP", "VP8 ", "EXIF", "XMP "}, 3},
	} {
		b := WebPWith(30, 20, c.o)
		for _, tag := range c.chunks {
			if !bytes.Contains(b, []byte(tag)) {
				t.Errorf("%+v: no %q chunk", c.o, tag)
			}
		}
		w, h, bands, _, orientation, err := libvipsHeader(b)
		want := 1
		if c.o.EXIF != nil {
			want = 6
		}
		if err != nil || w != 30 || h != 20 || bands != c.bands || orientation != want {
			t.Errorf("%+v: libvips reads %dx%d, %d bands, orientation %d, %v; want 30x20, %d, %d", c.o, w, h, bands, orientation, err, c.bands, want)
		}
	}
}

// AnimatedWebP writes a file libvips reads as an animation of the canvas size, with alpha (its first
// frame does not cover the canvas).
func TestAnimatedWebP(t *testing.T) {
	b := AnimatedWebP(40, 30, []WebPFrame{{X: 4, Y: 2, W: 20, H: 10, Alpha: true}, {W: 40, H: 30, Lossless: true}, {X: 10, W: 8, H: 8}})
	w, h, bands, pages, _, err := libvipsHeader(b)
	if err != nil || w != 40 || h != 30 || bands != 4 || pages != 3 {
		t.Fatalf("libvips reads %dx%d, %d bands, %d pages, %v; want 40x30, 4 bands, 3 pages", w, h, bands, pages, err)
	}
	if n := bytes.Count(b, []byte("ANMF")); n != 3 {
		t.Errorf("%d ANMF chunks", n)
	}
}
