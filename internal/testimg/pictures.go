package testimg

import (
	"bytes"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"math"
	"math/rand"

	"github.com/h2non/bimg"
)

// Small pictures drawn in Go and their encodings, for tests that need an image of a given look rather
// than a given file structure.

// Gradient is an opaque colour gradient.
func Gradient(w, h int) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.SetNRGBA(x, y, color.NRGBA{uint8(x * 255 / max(w-1, 1)), uint8(y * 255 / max(h-1, 1)), 128, 255})
		}
	}
	return img
}

// Noise is opaque random pixels: incompressible, so slow to encode.
func Noise(w, h int, seed int64) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	rand.New(rand.NewSource(seed)).Read(img.Pix)
	for i := 3; i < len(img.Pix); i += 4 {
		img.Pix[i] = 255
	}
	return img
}

// HalfTransparent has a transparent left half and an opaque right half.
func HalfTransparent(w, h int) *image.NRGBA {
	img := Gradient(w, h)
	for y := 0; y < h; y++ {
		for x := 0; x < w/2; x++ {
			img.Pix[img.PixOffset(x, y)+3] = 0
		}
	}
	return img
}

// EncodePNG encodes with Go's encoder at its fastest setting.
func EncodePNG(img image.Image) []byte {
	var b bytes.Buffer
	if err := (&png.Encoder{CompressionLevel: png.BestSpeed}).Encode(&b, img); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// EncodeJPEG encodes with Go's encoder at quality 90.
func EncodeJPEG(img image.Image) []byte {
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, &jpeg.Options{Quality: 90}); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// EncodeWebP encodes with libvips (the standard library has no WebP encoder).
func EncodeWebP(img image.Image) []byte {
	b, err := bimg.NewImage(EncodePNG(img)).Convert(bimg.WEBP)
	if err != nil {
		panic(err)
	}
	return b
}

// PhotoLike is a synthetic stand-in for a photograph: smooth shading, hard edges and a little grain, so
// encoders see something between a flat gradient and pure noise.
func PhotoLike(w, h int, seed int64) *image.NRGBA {
	rng := rand.New(rand.NewSource(seed))
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	cx, cy, r := float64(w)*0.4, float64(h)*0.55, float64(min(w, h))*0.3
	clamp := func(v float64) uint8 { return uint8(max(0, min(255, v))) }
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			fx, fy := float64(x)/float64(w), float64(y)/float64(h)
			v := 120 + 60*math.Sin(6*fx+2*fy) + 40*math.Cos(9*fy)
			c := color.NRGBA{clamp(v), clamp(v*0.8 + 40*fx), clamp(200 - v*0.5), 255}
			if (float64(x)-cx)*(float64(x)-cx)+(float64(y)-cy)*(float64(y)-cy) < r*r {
				c = color.NRGBA{clamp(220 - 80*fy), 60, 40, 255}
			}
			g := rng.NormFloat64() * 4
			c.R, c.G, c.B = clamp(float64(c.R)+g), clamp(float64(c.G)+g), clamp(float64(c.B)+g)
			img.SetNRGBA(x, y, c)
		}
	}
	return img
}
