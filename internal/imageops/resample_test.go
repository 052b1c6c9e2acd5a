package imageops

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"math/rand"
	"testing"
)

// TestResamplerMatchesAffine: the separable resampler gives vips_affine's result within rounding for
// every pixel format and band layout it handles (8 and 16 bits, grey and colour, with and without
// alpha), on an odd-sized noise image (edges, partial tiles, the largest local differences), for both
// kernels it serves.
//
// At 2x, 4x and 8x (what the service offers) every sample position is a multiple of 1/64 px, which
// vips_affine represents exactly: the two must agree to one step of the format's depth. At 3x and 5x,
// vips_affine rounds positions to 1/64 px (VIPS_TRANSFORM_SCALE) and the resampler does not: a position
// error of 1/128 px on each axis moves a cubic or linear interpolation by at most 2/128 of the range
// per axis, so there they must agree within 1/32 of the range, which still fails on any shift of
// geometry or wrong weight (tens of percent on noise). pathSeparable makes the upsize fail rather than
// fall back to vips_affine, so the first of each pair did go through the resampler.
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
	// One step of the format's depth, in 16-bit units.
	cases := []struct {
		name  string
		img   image.Image
		alpha bool
		tol   int
	}{
		{"grey8", gray8, false, 257},
		{"grey16", gray16, false, 2},
		{"rgb8", rgb8, false, 257},
		{"rgba8", rgba8, true, 257},
		{"rgb16", rgb16, false, 2},
		{"rgba16", rgba16, true, 2},
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
					tol := c.tol
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

// TestUpsamplerChoice: JPEG and WebP results go through the separable resampler, PNG results through
// vips_affine (upsamplerFor), and nearest through neither: each default upsize gives the bytes of the
// path forced by options and not those of the other.
func TestUpsamplerChoice(t *testing.T) {
	if upsamplerFor(JPEG) != upsampleSeparable || upsamplerFor(WebP) != upsampleSeparable || upsamplerFor(PNG) != upsampleAffine {
		t.Fatal("upsamplerFor: want the resampler for JPEG and WebP, vips_affine for PNG")
	}
	img := photoLike(24, 16, 3)
	for _, c := range []struct {
		name   string
		src    []byte
		kernel Kernel
		path   upsamplePath // pathAuto: neither
	}{
		{"jpeg", encJPEG(t, img, 90), "lanczos3", pathSeparable},
		{"webp", encWebP(t, img), "lanczos3", pathSeparable},
		{"png", encPNG(t, img), "lanczos3", pathAffine},
		{"jpeg-nearest", encJPEG(t, img, 90), "nearest", pathAuto},
	} {
		var def, sep, aff bytes.Buffer
		for out, o := range map[*bytes.Buffer]options{&def: {}, &sep: {path: pathSeparable}, &aff: {path: pathAffine}} {
			if _, err := upsizeWith(context.Background(), c.src, out, Params{Scale: 4, Kernel: c.kernel, Encoding: DefaultEncoding}, o); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
		}
		isSep, isAff := bytes.Equal(def.Bytes(), sep.Bytes()), bytes.Equal(def.Bytes(), aff.Bytes())
		want := map[upsamplePath][2]bool{pathSeparable: {true, false}, pathAffine: {false, true}, pathAuto: {true, true}}[c.path]
		if [2]bool{isSep, isAff} != want {
			t.Errorf("%s: the result is the resampler's: %v, vips_affine's: %v; want %v", c.name, isSep, isAff, want)
		}
	}
}
