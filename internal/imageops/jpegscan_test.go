package imageops

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"upsize/internal/testimg"
)

// The 7000x7000 inputs take a second or two to make: once per test binary.
var (
	bigBomb = sync.OnceValue(func() []byte { return testimg.ScanBomb(7000, 7000, 3000) })
	// bigLegit has exactly MaxJPEGScans scans: the costliest JPEG of its size Probe lets through.
	bigLegit = sync.OnceValue(func() []byte {
		return testimg.ScanBomb(7000, 7000, MaxJPEGScans-testimg.Scans(testimg.ProgressiveJPEG(8, 8, true)))
	})
	bigInterlacedPNG = sync.OnceValue(func() []byte { return testimg.InterlacedPNG(7000, 7000) })
)

func checkOffsets(t *testing.T, b []byte, l jpegLayout) {
	t.Helper()
	prev := -1
	for i, o := range l.sos {
		if o <= prev || o+1 >= len(b) || b[o] != 0xFF || b[o+1] != mSOS {
			t.Fatalf("scan %d at %d (previous %d): not an SOS marker inside the input (%d bytes)", i, o, prev, len(b))
		}
		prev = o
	}
	if l.end < 0 || l.end > len(b) {
		t.Fatalf("end %d outside the input (%d bytes)", l.end, len(b))
	}
}

func TestWalkJPEG(t *testing.T) {
	baseline := testimg.JPEG(40, 24, testimg.JPEGOptions{})
	progressive := testimg.JPEG(40, 24, testimg.JPEGOptions{Progressive: true})
	grey := testimg.JPEG(40, 24, testimg.JPEGOptions{Progressive: true, Grey: true})
	restarts := testimg.JPEG(64, 64, testimg.JPEGOptions{Restart: 1})
	subsampled := encJPEG(t, noise(33, 17, 4), 80) // Go's encoder: 4:2:0
	withGarbage := append(append([]byte{}, baseline[:2]...), append([]byte("\x00\x01junk\xff\x00"), baseline[2:]...)...)
	fill := bytes.Replace(progressive, []byte{0xFF, mSOS}, []byte{0xFF, 0xFF, 0xFF, mSOS}, -1)
	for _, c := range []struct {
		name             string
		b                []byte
		scans            int
		progressive, eoi bool
		multi            bool
		comps            int
	}{
		{"baseline", baseline, 1, false, true, false, 3},
		{"progressive", progressive, 10, true, true, true, 3},
		{"grey progressive", grey, 6, true, true, true, 1},
		{"restart markers", restarts, 1, false, true, false, 3},
		{"subsampled", subsampled, 1, false, true, false, 3},
		{"trailing garbage", append(append([]byte{}, progressive...), "\xff\xda\x00\x08garbage after EOI"...), 10, true, true, true, 3},
		{"garbage between segments", withGarbage, 1, false, true, false, 3},
		{"fill bytes", fill, 10, true, true, true, 3},
		{"truncated", progressive[:len(progressive)*2/3], 0, true, false, true, 3}, // scans: counted below
		{"no EOI", progressive[:len(progressive)-2], 10, true, false, true, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := walkJPEG(c.b, 0)
			checkOffsets(t, c.b, l)
			if c.scans == 0 {
				c.scans = bytes.Count(c.b, []byte{0xFF, mSOS})
			}
			if len(l.sos) != c.scans || l.progressive != c.progressive || l.eoi != c.eoi || l.halted ||
				l.multiScan() != c.multi || len(l.components) != c.comps || l.width == 0 || l.height == 0 {
				t.Fatalf("walk = %+v; want %d scans, progressive %v, EOI %v, multi-scan %v, %d components",
					l, c.scans, c.progressive, c.eoi, c.multi, c.comps)
			}
			if c.name == "subsampled" && (l.components[0].h != 2 || l.components[0].v != 2 || l.components[1].h != 1) {
				t.Fatalf("sampling factors %+v, want 2x2,1x1,1x1", l.components)
			}
		})
	}

	// Where libjpeg stops with an error, the walk stops too: no scan past that point is decoded.
	secondSOI := append(append([]byte{}, baseline[:len(baseline)-2]...), progressive...)
	if l := walkJPEG(secondSOI, 0); !l.halted || len(l.sos) != 1 {
		t.Fatalf("second SOI: %+v, want halted after 1 scan", l)
	}
	if l := walkJPEG([]byte("\xff\xd8\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"), 0); !l.halted || len(l.sos) != 0 {
		t.Fatalf("SOS before SOF: %+v, want halted", l)
	}
	// The limit stops the walk after limit+1 scans.
	if l := walkJPEG(progressive, 4); !l.overLimit || len(l.sos) != 5 {
		t.Fatalf("limit 4: %+v, want over the limit with 5 scans", l)
	}
	if l := walkJPEG(progressive, 10); l.overLimit || len(l.sos) != 10 {
		t.Fatalf("limit 10: %+v, want 10 scans, not over", l)
	}
}

// The bomb generator's output is what it claims: a valid progression that libvips decodes.
func TestScanBombDecodes(t *testing.T) {
	b := testimg.ScanBomb(64, 48, 30)
	l := walkJPEG(b, 0)
	checkOffsets(t, b, l)
	if len(l.sos) != 40 || !l.eoi || l.halted {
		t.Fatalf("walk = %+v, want 40 scans and EOI", l)
	}
	var logged bytes.Buffer
	if err := Validate(context.Background(), b, slogJSON(&logged, "bomb")); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if logged.Len() != 0 {
		t.Fatalf("libvips warned about a bomb meant to be warning-free: %s", logged.String())
	}
}

// The scan limit is inclusive, and a bomb is refused from its structure, with ErrInvalidImage.
func TestScanLimit(t *testing.T) {
	base := testimg.Scans(testimg.ProgressiveJPEG(8, 8, true))
	at := testimg.ScanBomb(64, 48, MaxJPEGScans-base)
	over := testimg.ScanBomb(64, 48, MaxJPEGScans-base+1)
	if _, err := Probe(at); err != nil {
		t.Fatalf("Probe(%d scans) = %v", MaxJPEGScans, err)
	}
	if err := Validate(context.Background(), at, nil); err != nil {
		t.Fatalf("Validate(%d scans) = %v", MaxJPEGScans, err)
	}
	for name, check := range map[string]func([]byte) error{
		"Probe":    func(b []byte) error { _, err := Probe(b); return err },
		"Validate": func(b []byte) error { return Validate(context.Background(), b, nil) },
		"Upsize": func(b []byte) error {
			_, err := Upsize(context.Background(), b, io.Discard, Params{Scale: 2, Kernel: "lanczos3", Encoding: DefaultEncoding})
			return err
		},
	} {
		if err := check(over); !errors.Is(err, ErrDecodeBomb) || !errors.Is(err, ErrInvalidImage) {
			t.Errorf("%s(%d scans) = %v, want ErrDecodeBomb and ErrInvalidImage", name, MaxJPEGScans+1, err)
		}
	}
}

// A 1 MB JPEG whose scans would take libvips about a minute to decode (7000x7000, 3010 scans) is
// refused in milliseconds, before anything is decoded.
func TestScanBombRefusedFast(t *testing.T) {
	bomb := bigBomb()
	for name, check := range map[string]func() error{
		"Probe":    func() error { _, err := Probe(bomb); return err },
		"Validate": func() error { return Validate(context.Background(), bomb, nil) },
		"Upsize": func() error {
			_, err := Upsize(context.Background(), bomb, io.Discard, Params{Scale: 2, Kernel: "lanczos3", Encoding: DefaultEncoding})
			return err
		},
	} {
		start := time.Now()
		err := check()
		d := time.Since(start)
		if !errors.Is(err, ErrInvalidImage) || !errors.Is(err, ErrDecodeBomb) {
			t.Errorf("%s = %v, want ErrDecodeBomb (ErrInvalidImage)", name, err)
		}
		if d > 100*time.Millisecond {
			t.Errorf("%s took %s to refuse the bomb: it must not decode it", name, d)
		}
		t.Logf("%s refused the bomb in %s", name, d)
	}
}
