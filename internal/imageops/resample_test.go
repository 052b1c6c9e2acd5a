package imageops

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"math/rand"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// TestResamplerMatchesAffine: the resampler gives vips_affine's result for every pixel format and band
// layout it handles (8 and 16 bits, grey and colour, with and without alpha), on an odd-sized noise image
// (edges, partial tiles, the largest local differences), for both kernels it serves.
//
// At 2x, 4x and 8x (what the service offers) every sample position is a multiple of 1/16 px, which
// vips_affine's doubles hold exactly, and the resampler does vips_affine's arithmetic: the two must agree
// bit for bit. At 3x and 5x vips_affine accumulates positions in steps of a rounded 1/s, and a position
// next to a 1/64 px boundary may round to the neighbouring weight set: a position error of 1/64 px moves
// a cubic or linear interpolation by at most 2/64 of the range, so there they must agree within 1/32 of
// the range, which still fails on any shift of geometry or wrong weight (tens of percent on noise).
// pathSeparable makes the upsize fail rather than fall back to vips_affine, so the first of each pair did
// go through the resampler.
func TestResamplerMatchesAffine(t *testing.T) {
	const w, h = 37, 23
	rng := rand.New(rand.NewSource(7))
	gray8 := image.NewGray(image.Rect(0, 0, w, h))
	rng.Read(gray8.Pix)
	gray16 := image.NewGray16(image.Rect(0, 0, w, h))
	rng.Read(gray16.Pix)
	rgb8 := noise(w, h, 8)
	rgba8 := noise(w, h, 9)
	rng.Read(rgba8.Pix) // random alpha too
	rgb16 := image.NewNRGBA64(image.Rect(0, 0, w, h))
	rgba16 := image.NewNRGBA64(image.Rect(0, 0, w, h))
	rng.Read(rgb16.Pix)
	rng.Read(rgba16.Pix)
	for i := 6; i < len(rgb16.Pix); i += 8 {
		rgb16.Pix[i], rgb16.Pix[i+1] = 0xff, 0xff
	}
	cases := []struct {
		name  string
		img   image.Image
		alpha bool
	}{
		{"grey8", gray8, false},
		{"grey16", gray16, false},
		{"rgb8", rgb8, false},
		{"rgba8", rgba8, true},
		{"rgb16", rgb16, false},
		{"rgba16", rgba16, true},
	}
	for _, c := range cases {
		src := encPNG(t, c.img)
		for _, kernel := range []Kernel{"lanczos3", "linear"} {
			for _, scale := range []int{2, 3, 4, 5, 8} {
				t.Run(fmt.Sprintf("%s/%s/%dx", c.name, kernel, scale), func(t *testing.T) {
					fast := decode(t, upsizeVia(t, src, scale, kernel, pathSeparable))
					ref := decode(t, upsizeVia(t, src, scale, kernel, pathAffine))
					if fast.Bounds() != ref.Bounds() || fast.Bounds().Dx() != w*scale || fast.Bounds().Dy() != h*scale {
						t.Fatalf("bounds %v, affine %v", fast.Bounds(), ref.Bounds())
					}
					tol := 0
					if scale%2 == 1 {
						tol = 0xffff / 32
					}
					worst := 0
					for y := 0; y < h*scale; y++ {
						for x := 0; x < w*scale; x++ {
							d := pixelDiff(fast.At(x, y), ref.At(x, y), c.alpha)
							if d > tol {
								t.Fatalf("pixel (%d,%d): %v, affine %v (difference %d > %d)", x, y, fast.At(x, y), ref.At(x, y), d, tol)
							}
							worst = max(worst, d)
						}
					}
					t.Logf("largest difference %d", worst)
				})
			}
		}
	}
}

// pixelDiff is the largest channel difference in 16-bit units; with alpha, colour is compared
// premultiplied (what is seen: where alpha is near 0, colour is invisible and ill-defined).
func pixelDiff(a, b color.Color, alpha bool) int {
	p, q := color.NRGBA64Model.Convert(a).(color.NRGBA64), color.NRGBA64Model.Convert(b).(color.NRGBA64)
	d := abs(int(p.A) - int(q.A))
	for _, ch := range [][2]uint16{{p.R, q.R}, {p.G, q.G}, {p.B, q.B}} {
		x, y := int(ch[0]), int(ch[1])
		if alpha {
			x, y = x*int(p.A)/0xffff, y*int(q.A)/0xffff
		}
		d = max(d, abs(x-y))
	}
	return d
}

func upsizeVia(t *testing.T, src []byte, scale int, kernel Kernel, path upsamplePath) []byte {
	t.Helper()
	var out bytes.Buffer
	p := Params{Scale: scale, Kernel: kernel, Encoding: Encoding{PNGLevel: 1}}
	if _, err := upsizeWith(context.Background(), src, &out, p, options{path: path}); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// BenchmarkResampler compares the whole Upsize with the separable resampler and with vips_affine (the
// path libvips' own resize takes), on the inputs of BenchmarkVersusVipsCLI: time and result size.
//
//	go test -run '^$' -bench Resampler -benchtime 5x ./internal/imageops/
func BenchmarkResampler(b *testing.B) {
	for _, side := range []int{512, 1024} {
		img := photoLike(side, side, int64(side))
		srcs := map[Format][]byte{JPEG: encJPEG(b, img, 90), PNG: encPNG(b, img)}
		for _, f := range []Format{JPEG, PNG} {
			for _, scale := range []int{2, 4, 8} {
				for _, path := range []upsamplePath{pathAffine, pathSeparable} {
					name := map[upsamplePath]string{pathAffine: "affine", pathSeparable: "separable"}[path]
					b.Run(fmt.Sprintf("%s-%d-%dx/%s", f, side, scale, name), func(b *testing.B) {
						p := Params{Scale: scale, Kernel: "lanczos3", Encoding: cliEncoding}
						var out countingWriter
						for i := 0; i < b.N; i++ {
							out.n = 0
							if _, err := upsizeWith(context.Background(), srcs[f], &out, p, options{path: path}); err != nil {
								b.Fatal(err)
							}
						}
						b.ReportMetric(float64(out.n)/1e6, "MB/result")
					})
				}
			}
		}
	}
}

// TestUpsamplerChoice: JPEG and WebP results go through the resampler at every factor, PNG results
// through it at power-of-two factors (where it gives vips_affine's pixels bit for bit) and through
// vips_affine at others (upsamplerFor), nearest and the other interpolators through neither, pixel
// formats the resampler does not handle through vips_affine. up_uses_resampler is the choice upsize.c
// makes; where both paths give the same pixels, the result's bytes cannot tell them apart. The default
// PNG result is vips_affine's, byte for byte.
func TestUpsamplerChoice(t *testing.T) {
	if upsamplerFor(JPEG) != upsampleSeparable || upsamplerFor(WebP) != upsampleSeparable || upsamplerFor(PNG) != upsampleExact {
		t.Fatal("upsamplerFor: want the resampler for JPEG and WebP, the resampler where exact for PNG")
	}
	for _, c := range []struct {
		name      string
		band      int
		out       Format
		kernel    Kernel
		scale     int
		resampler bool
	}{
		{"jpeg", bandUchar, JPEG, "lanczos3", 4, true},
		{"jpeg-3x", bandUchar, JPEG, "lanczos3", 3, true},
		{"webp", bandUchar, WebP, "lanczos3", 4, true},
		{"webp-rgba", bandFloat, WebP, "lanczos3", 3, true}, // alpha: premultiplied, in float
		{"png", bandUchar, PNG, "lanczos3", 4, true},
		{"png-2x-linear", bandUchar, PNG, "linear", 2, true},
		{"png-8x", bandUchar, PNG, "lanczos3", 8, true},
		{"png16-8x", bandUshort, PNG, "lanczos3", 8, true},
		{"png-3x", bandUchar, PNG, "lanczos3", 3, false},
		{"png-nohalo", bandUchar, PNG, "nohalo", 4, false},
		{"jpeg-nearest", bandUchar, JPEG, "nearest", 4, false},
		{"jpeg-double", bandDouble, JPEG, "lanczos3", 4, false},
		{"png-double", bandDouble, PNG, "lanczos3", 4, false},
	} {
		if got := usesResampler(c.band, c.scale, c.kernel, upsamplerFor(c.out)); got != c.resampler {
			t.Errorf("%s: the resampler: %v, want %v", c.name, got, c.resampler)
		}
	}
	if !usesResampler(bandDouble, 4, "lanczos3", upsampleSeparableOnly) || usesResampler(bandUchar, 4, "lanczos3", upsampleAffine) {
		t.Error("the paths tests force are not obeyed")
	}

	img := photoLike(24, 16, 3)
	for _, c := range []struct {
		kernel Kernel
		scale  int
	}{{"lanczos3", 4}, {"linear", 2}, {"lanczos3", 8}, {"lanczos3", 3}, {"nohalo", 4}} {
		src := encPNG(t, img)
		var def, aff bytes.Buffer
		p := Params{Scale: c.scale, Kernel: c.kernel, Encoding: DefaultEncoding}
		if _, err := Upsize(context.Background(), src, &def, p); err != nil {
			t.Fatal(err)
		}
		if _, err := upsizeWith(context.Background(), src, &aff, p, options{path: pathAffine}); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(def.Bytes(), aff.Bytes()) {
			t.Errorf("png %s %dx: the PNG result differs from vips_affine's", c.kernel, c.scale)
		}
	}
}

// TestPNGPathMatchesAffine is the check behind PNG results going through the resampler: over several
// sources (photo-like and noise RGB, grey, 16-bit grey, RGBA with random alpha) and the factors the
// service offers, the default PNG result decodes to vips_affine's pixels (no pixel may differ by more
// than one level; the resampler's arithmetic is vips_affine's, so none differs at all), and is at most
// 3 % larger than what the service wrote before: vips_affine's pixels with all five filters
// (PNGFilterAll, level 4).
func TestPNGPathMatchesAffine(t *testing.T) {
	grey16 := image.NewGray16(image.Rect(0, 0, 40, 30))
	rand.New(rand.NewSource(3)).Read(grey16.Pix)
	rgba := noise(40, 30, 4)
	rand.New(rand.NewSource(5)).Read(rgba.Pix)
	grey := image.NewGray(image.Rect(0, 0, 64, 48))
	for i := range grey.Pix {
		grey.Pix[i] = photoLike(64, 48, 6).Pix[4*i+1]
	}
	before := Encoding{PNGLevel: 4, PNGFilter: PNGFilterAll}
	for _, c := range []struct {
		name      string
		img       image.Image
		checkSize bool
	}{
		{"photo", photoLike(96, 80, 2), true},
		{"noise", noise(64, 48, 3), true},
		{"grey", grey, false},
		{"grey16", grey16, false},
		{"rgba", rgba, false},
	} {
		src := encPNG(t, c.img)
		for _, scale := range []int{2, 4, 8} {
			t.Run(fmt.Sprintf("%s/%dx", c.name, scale), func(t *testing.T) {
				var ours, theirs bytes.Buffer
				p := Params{Scale: scale, Kernel: "lanczos3", Encoding: DefaultEncoding}
				if _, err := upsizeWith(context.Background(), src, &ours, p, options{}); err != nil {
					t.Fatal(err)
				}
				p.Encoding = before
				if _, err := upsizeWith(context.Background(), src, &theirs, p, options{path: pathAffine}); err != nil {
					t.Fatal(err)
				}
				a, b := decode(t, ours.Bytes()), decode(t, theirs.Bytes())
				if a.Bounds() != b.Bounds() {
					t.Fatalf("bounds %v, vips_affine's %v", a.Bounds(), b.Bounds())
				}
				// Differences in levels of the source's depth, every channel, alpha included.
				level := 257
				if c.name == "grey16" {
					level = 1
				}
				worst, differ, n := 0, 0, 0
				for y := a.Bounds().Min.Y; y < a.Bounds().Max.Y; y++ {
					for x := a.Bounds().Min.X; x < a.Bounds().Max.X; x++ {
						p, q := color.NRGBA64Model.Convert(a.At(x, y)).(color.NRGBA64), color.NRGBA64Model.Convert(b.At(x, y)).(color.NRGBA64)
						d := max(abs(int(p.R)-int(q.R)), abs(int(p.G)-int(q.G)), abs(int(p.B)-int(q.B)), abs(int(p.A)-int(q.A)))
						worst = max(worst, (d+level-1)/level)
						if d != 0 {
							differ++
						}
						n++
					}
				}
				ratio := float64(ours.Len()) / float64(theirs.Len())
				t.Logf("largest difference %d levels, %.4f %% of pixels differ; %d bytes, vips_affine with all filters %d (%.4f)",
					worst, 100*float64(differ)/float64(n), ours.Len(), theirs.Len(), ratio)
				if worst > 1 {
					t.Errorf("a pixel differs from vips_affine's by %d levels", worst)
				}
				if c.checkSize && ratio > 1.03 {
					t.Errorf("result %.1f %% larger than before", 100*(ratio-1))
				}
			})
		}
	}
}

// BenchmarkPNGThroughput is issue 14's measure: PNG upsizes with two in flight (a worker's two slots on a
// 2-core machine), as the service wrote them before (vips_affine, all five PNG filters, level 4) and as it
// writes them now (DefaultEncoding: the resampler, which gives vips_affine's pixels, and the Paeth filter),
// alternating rounds so that the machine's other load falls on both. Reported per case: ms of wall time per
// image (1000 / images per second) for each, their ratio (throughput now / before) and the result sizes.
//
//	go test -run '^$' -bench PNGThroughput -benchtime 4x ./internal/imageops/
func BenchmarkPNGThroughput(b *testing.B) {
	Init(1)
	before := Encoding{JPEGQuality: 90, PNGLevel: 4, PNGFilter: PNGFilterAll}
	for _, c := range []struct {
		side, scale, per int // per: images per round
	}{{512, 2, 16}, {512, 4, 6}, {1024, 2, 6}, {1024, 4, 2}, {1024, 8, 2}} {
		src := encPNG(b, photoLike(c.side, c.side, int64(c.side)))
		b.Run(fmt.Sprintf("png-%d-%dx", c.side, c.scale), func(b *testing.B) {
			// round runs per upsizes, two at a time, and returns the wall time and one result's size.
			round := func(e Encoding, o options) (time.Duration, int64) {
				var size atomic.Int64
				var g errgroup.Group
				g.SetLimit(2)
				start := time.Now()
				for i := 0; i < c.per; i++ {
					g.Go(func() error {
						var out countingWriter
						_, err := upsizeWith(context.Background(), src, &out, Params{Scale: c.scale, Kernel: "lanczos3", Encoding: e}, o)
						size.Store(out.n)
						return err
					})
				}
				if err := g.Wait(); err != nil {
					b.Fatal(err)
				}
				return time.Since(start), size.Load()
			}
			var was, now time.Duration
			var wasSize, nowSize int64
			for i := 0; i < b.N; i++ {
				d, n := round(before, options{path: pathAffine})
				was, wasSize = was+d, n
				d, n = round(DefaultEncoding, options{})
				now, nowSize = now+d, n
			}
			images := float64(b.N * c.per)
			b.ReportMetric(float64(was.Milliseconds())/images, "ms/img-before")
			b.ReportMetric(float64(now.Milliseconds())/images, "ms/img-now")
			b.ReportMetric(float64(was)/float64(now), "speedup")
			b.ReportMetric(float64(wasSize)/1e6, "MB-before")
			b.ReportMetric(float64(nowSize)/1e6, "MB-now")
		})
	}
}
