package testimg

import (
	"bytes"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
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
