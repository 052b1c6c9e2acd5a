package imageops

import (
	"bytes"
	"context"
	"testing"

	"github.com/h2non/bimg"

	"upsize/internal/testimg"
)

// JPEG and PNG now load from the killable source (reads cut before every scan) instead of libvips'
// memory source: the decoded pixels must be exactly those libvips' own buffer loader gives (bimg
// still uses it), for every layout the source treats differently. Both sides are written as PNG so the
// comparison is lossless.
func TestKillableSourceDecodesAsLibvips(t *testing.T) {
	for name, src := range map[string][]byte{
		"baseline":         testimg.JPEG(203, 151, testimg.JPEGOptions{}),
		"progressive":      testimg.JPEG(203, 151, testimg.JPEGOptions{Progressive: true}),
		"grey progressive": testimg.JPEG(203, 151, testimg.JPEGOptions{Progressive: true, Grey: true}),
		"restart markers":  testimg.JPEG(203, 151, testimg.JPEGOptions{Restart: 2}),
		"4:2:0":            testimg.JPEG(203, 151, testimg.JPEGOptions{Quality: 80, Progressive: true}),
		"Go's encoder":     encJPEG(t, noise(203, 151, 6), 85),
		"scan limit":       testimg.ScanBomb(203, 151, MaxJPEGScans-10),
		"PNG":              testimg.PNG(203, 151, false, false),
		"interlaced PNG":   testimg.PNG(203, 151, false, true),
	} {
		t.Run(name, func(t *testing.T) {
			var ours bytes.Buffer
			p := Params{Scale: 1, Kernel: "nearest", Encoding: Encoding{PNGLevel: 1}}
			if _, err := upsizeWith(context.Background(), src, &ours, p, options{output: PNG}); err != nil {
				t.Fatal(err)
			}
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
						t.Fatalf("pixel (%d,%d) = %v, libvips' buffer loader gives %v", x, y, a.At(x, y), b.At(x, y))
					}
				}
			}
		})
	}
}
