// Package imageops reads image headers and upsizes images with libvips.
//
// The pipeline is a few named steps: sniff the format from the bytes, check the structure (a JPEG's
// scans, jpegscan.go), probe the header (through bimg, no pixel decode), then load, autorotate,
// upsample and encode in one libvips evaluation that streams its output to an io.Writer and can be
// aborted from a context, decode included. For JPEG and WebP results, upsampling by the integer factor
// is a separable two-pass resampler (resample.c): the whole upsize then takes about a third of the
// instructions it takes through libvips' general affine transform, which PNG results keep.
//
// How each format is loaded (upsize.c), so that a cancel stops its decode within a few tens of
// milliseconds, not only between tiles where libvips itself looks at its kill flag:
//
//   - JPEG and PNG: libvips' loaders, reading from a source of ours that fails every read once the
//     call is killed, and never reads past the next JPEG scan. libjpeg (a progressive or multi-scan
//     JPEG's scans) and libpng (an interlaced PNG) can each run for seconds inside one tile, but come
//     back to the source every few KB of input and before each scan.
//   - WebP: libvips' loader decodes a frame with one libwebp call that nothing interrupts (1.5 s for
//     the costliest lossy file an upload holds). libvips reads only the header (its fields and
//     metadata, exactly as its loader gives them); the frame is decoded by libwebp's incremental
//     decoder straight into a memory image, fed about 20 ms of compressed data at a time with the kill
//     flag checked in between, and, for lossy frames, at every macroblock row too (lossy data can hold
//     whole rows in no bytes at all). The pixels are libvips' own, byte for byte; an animation loads as
//     libvips loads it, its first frame on the canvas. What is left uninterruptible: lossless rows
//     whose pixels take no bits at all (up to 0.15-0.2 s for a whole 49 MP frame) and lossy frames
//     under 512 pixels wide (at most 8 MP). Decoded whole before the pipeline (libvips' loader too
//     decodes the frame whole, on the first tile), the frame is the only image-sized buffer: no
//     RGBA frame and canvas beside it.
//   - Images whose EXIF orientation asks for a rotation: decoded whole before they are rotated, as
//     libvips' random-access load does (in memory up to libvips' disc threshold, in a temporary file
//     above), but by the call's own evaluation, so that the kill flag and the call's log tag reach it.
//
// And how each result is encoded (JPEG and PNG through libvips' savers, WebP through webpsave.c):
//
//   - JPEG and PNG: the encoders stream into the io.Writer, which refuses every write once the call
//     is killed: they stop within the strip they hold.
//   - WebP: libvips' saver encodes the whole picture in one libwebp call, seconds for a large noisy
//     result, that nothing interrupts (libwebp's progress hook comes seconds apart in places). The
//     picture is gathered as libvips' saver gathers it, then encoded, byte for byte as libvips would,
//     in a process forked for it by a small server started by Init; a cancel ends that process (5-16
//     ms from the cancel to the return, where libvips' saver ran on for up to 9 s).
//
// Once a call is killed, what libvips says about it (decoders and encoders complaining that their
// reads and writes are refused) goes to the log at Debug: a canceled task is no error.
//
// bimg gives us libvips start-up, cache control and header reads. The pipeline itself is C (upsize.c,
// resample.c, webpsave.c) because bimg cannot express what the contract needs: centre-aligned sampling
// with edges extended by copying (bimg's enlarge shifts content by (s-1)/2 px and pads with black), and
// aborting a running evaluation, decode and encode included, when the request is canceled.
package imageops

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/h2non/bimg"
)

// Format is an image file format the service accepts and produces.
type Format string

const (
	JPEG Format = "jpeg"
	PNG  Format = "png"
	WebP Format = "webp"
)

// ContentType is the media type of the format.
func (f Format) ContentType() string { return "image/" + string(f) }

// MaxSide is the longest side the format can hold: JPEG's headers allow 65,535 but libjpeg writes at most
// 65,500; WebP's VP8 headers hold 14 bits. PNG's limit is libvips' own (VIPS_MAX_COORD).
func (f Format) MaxSide() int {
	switch f {
	case JPEG:
		return 65500
	case WebP:
		return 16383
	}
	return 10_000_000
}

var (
	// ErrUnsupportedFormat: the bytes are not JPEG, PNG or WebP.
	ErrUnsupportedFormat = errors.New("imageops: unsupported image format")
	// ErrInvalidImage: a supported format whose header or pixels do not decode.
	ErrInvalidImage = errors.New("imageops: image does not decode")
	// ErrDecodeBomb: the structure says decoding would cost far more than the pixels justify (a JPEG
	// with more than MaxJPEGScans scans). It wraps ErrInvalidImage: callers answer it as one.
	ErrDecodeBomb = fmt.Errorf("%w: decoding would cost far more than its pixels justify", ErrInvalidImage)
	// ErrTooLarge: the image has more pixels than allowed.
	ErrTooLarge = errors.New("imageops: image has too many pixels")
	// ErrUnknownKernel: the kernel name is not one imageops knows.
	ErrUnknownKernel = errors.New("imageops: unknown kernel")
)

// Sniff tells the format from the first bytes, never from a file name or declared type.
func Sniff(b []byte) (Format, error) {
	switch {
	case len(b) >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF:
		return JPEG, nil
	case len(b) >= 8 && bytes.Equal(b[:8], []byte("\x89PNG\r\n\x1a\n")):
		return PNG, nil
	case len(b) >= 16 && string(b[0:4]) == "RIFF" && string(b[8:12]) == "WEBP" && strings.HasPrefix(string(b[12:16]), "VP8"):
		return WebP, nil
	}
	return "", ErrUnsupportedFormat
}

// MaxJPEGScans is the most scans a JPEG may have; Probe and Validate refuse more with ErrDecodeBomb.
//
// libjpeg decodes every scan it finds, and a scan of a few bytes can make it visit every coefficient
// block of a component (a flat image's EOB runs): a 7000x7000 flat progressive JPEG with its AC scans
// repeated 3000 times (870 KB) costs libvips 58 s of CPU and 332 MB. Real encoders write few scans:
// libjpeg's jpeg_simple_progression (cjpeg and jpegtran -progressive, libvips, ImageMagick) writes 10
// for colour, 6 for grey, 18 for CMYK, 60 at most (10 components); mozjpeg's optimised scripts stay in
// that range; a sequential file has at most one scan per component. 64 admits all of them. Each scan
// costs at most one pass over the coefficient buffer, so a decode is bounded by 64 passes: at 50 MP
// (the default MAX_INPUT_PIXELS, 7071x7071 flat) the worst a file can do within the limit measured
// 2.9 s of CPU with 64 DC scans (a 16 MB file) and 1.9 s with 64 AC scans, against 0.6 s for the same
// image with the standard 10 scans (BenchmarkScanLimitWorstCase, AMD EPYC, one thread).
const MaxJPEGScans = 64

// Info is what the header says about an image.
type Info struct {
	Format Format
	// Width and Height are as displayed: EXIF orientation 5-8 swaps the stored sides.
	Width, Height int
	Orientation   int
	// DecodeBytes estimates, from the file's structure, the most memory decoding it holds at once
	// (Validate's peak, and Upsize's decode): the whole coefficient buffer of a progressive or
	// multi-scan JPEG, the whole image of an interlaced PNG or of a WebP, a few strips otherwise.
	// It errs on the high side; callers bound concurrent decodes by it.
	DecodeBytes int64
}

// Pixels is Width*Height.
func (i Info) Pixels() int64 { return int64(i.Width) * int64(i.Height) }

// Probe reads the header only: no pixels are decoded, so it is safe to call before any pixel limit check.
// A JPEG with more than MaxJPEGScans scans is refused with ErrDecodeBomb.
func Probe(b []byte) (Info, error) {
	info, _, err := probe(b)
	return info, err
}

// probe is Probe that also returns the JPEG marker walk (zero for other formats).
func probe(b []byte) (Info, jpegLayout, error) {
	f, err := Sniff(b)
	if err != nil {
		return Info{}, jpegLayout{}, err
	}
	// The structure first: it decides before libvips reads anything.
	layout, err := checkStructure(f, b)
	if err != nil {
		return Info{}, jpegLayout{}, err
	}
	md, err := bimg.NewImage(b).Metadata()
	if err != nil || md.Size.Width <= 0 || md.Size.Height <= 0 {
		return Info{}, jpegLayout{}, fmt.Errorf("%w: %v", ErrInvalidImage, err)
	}
	info := Info{Format: f, Width: md.Size.Width, Height: md.Size.Height, Orientation: md.Orientation}
	info.DecodeBytes = decodeBytes(f, b, &layout, md.Size.Width, md.Size.Height, md.Channels)
	if info.Orientation >= 5 && info.Orientation <= 8 {
		info.Width, info.Height = info.Height, info.Width
	}
	return info, layout, nil
}

// checkStructure walks a JPEG's markers and refuses it when it has too many scans.
func checkStructure(f Format, b []byte) (jpegLayout, error) {
	if f != JPEG {
		return jpegLayout{}, nil
	}
	l := walkJPEG(b, MaxJPEGScans)
	if l.overLimit {
		return l, fmt.Errorf("%w: more than %d scans", ErrDecodeBomb, MaxJPEGScans)
	}
	return l, nil
}

// Kernel names a resampling method. The names are libvips' kernels; for enlarging, libvips maps them to
// its interpolators the same way vips_resize does (linear → bilinear, the cubic family → bicubic), and
// nearest is an exact pixel replication.
type Kernel string

// Interpolator numbers are shared with upsize.c (up_params.interp).
var kernels = map[Kernel]int{
	"nearest":  0,
	"linear":   1,
	"cubic":    2,
	"mitchell": 2,
	"lanczos2": 2,
	"lanczos3": 2,
	"bicubic":  2,
	"bilinear": 1,
	"nohalo":   3,
	"lbb":      4,
	"vsqbs":    5,
}

// KnownKernel reports whether name is a kernel Upsize accepts.
func KnownKernel(name string) bool {
	_, ok := kernels[Kernel(name)]
	return ok
}

// PNGFilter is a set of PNG row filters, libvips' flags (VipsForeignPngFilter): with one, libpng filters
// every row with it; with several, it tries each on every row and keeps the one whose bytes sum smallest.
type PNGFilter int

// The PNG row filters.
const (
	PNGFilterNone  PNGFilter = 0x08
	PNGFilterSub   PNGFilter = 0x10
	PNGFilterUp    PNGFilter = 0x20
	PNGFilterAvg   PNGFilter = 0x40
	PNGFilterPaeth PNGFilter = 0x80
	PNGFilterAll   PNGFilter = 0xF8
)

// Encoding holds the encoder settings. The defaults are chosen and measured in docs/imageops.md.
type Encoding struct {
	JPEGQuality int // 1-100
	PNGLevel    int // zlib level 0-9
	// PNGFilter: the row filters (0: none).
	PNGFilter   PNGFilter
	WebPQuality int // 1-100
	WebPEffort  int // 0-6
	// StripMetadata leaves ICC profile, EXIF and XMP out of the result (libvips 8.14.1's own WebP
	// saver ignored it; webpsave.c does not).
	StripMetadata bool
}

// DefaultEncoding is what the service uses unless configured otherwise.
var DefaultEncoding = Encoding{JPEGQuality: 90, PNGLevel: 4, PNGFilter: PNGFilterPaeth, WebPQuality: 90, WebPEffort: 4}

// Params describe one upsize.
type Params struct {
	Scale    int // 2, 4 or 8
	Kernel   Kernel
	Encoding Encoding
	// MaxInputPixels and MaxOutputPixels are checked from the header before any decode (0: no limit).
	MaxInputPixels, MaxOutputPixels int64
	// Log receives libvips' messages about this upsize (warnings about damaged input and the like);
	// nil: the logger given to SetLogger. Messages about a call that was canceled go to Debug.
	Log *slog.Logger
}

// Result describes what Upsize wrote.
type Result struct {
	Format        Format
	Width, Height int
}
