// Package testimg makes images for tests: JPEGs (baseline or progressive, colour or grey, with or
// without restart markers), JPEG scan bombs, costly-to-decode interlaced PNGs, WebPs (lossy or
// lossless, with or without alpha and metadata) and animated WebPs. Everything is deterministic, and
// flat images of tens of megapixels take well under a second to make (libvips encodes a constant
// image; the interlaced PNG is written directly).
//
// The functions panic on failure: they are for tests. The package depends on nothing in the
// repository, so any package's tests can use it, imageops' own included.
package testimg

/*
#cgo pkg-config: vips
#include <stdlib.h>
#include <vips/vips.h>

static int tm_init(void) { return VIPS_INIT("testimg"); }

// tm_flat is a w x h image of one colour.
static VipsImage *tm_flat(int w, int h, int bands, const double *colour) {
	VipsImage *black, *out;
	double one[4] = {1, 1, 1, 1};
	if (vips_black(&black, w, h, "bands", bands, NULL))
		return NULL;
	int r = vips_linear(black, &out, one, (double *) colour, bands, "uchar", TRUE, NULL);
	g_object_unref(black);
	return r ? NULL : out;
}

static VipsImage *tm_memory(const void *data, size_t len, int w, int h, int bands) {
	VipsImage *img = vips_image_new_from_memory_copy(data, len, w, h, bands, VIPS_FORMAT_UCHAR);
	if (img && bands == 1)
		img->Type = VIPS_INTERPRETATION_B_W;
	return img;
}

static int tm_jpeg(VipsImage *in, int q, int interlace, int restart, void **buf, size_t *len) {
	return vips_jpegsave_buffer(in, buf, len, "Q", q, "interlace", interlace, "restart_interval", restart,
		"strip", TRUE, NULL);
}

static int tm_png(VipsImage *in, int interlace, void **buf, size_t *len) {
	return vips_pngsave_buffer(in, buf, len, "interlace", interlace, "compression", 6, "strip", TRUE, NULL);
}

static int tm_webp(VipsImage *in, int lossless, int q, int strip, void **buf, size_t *len) {
	return vips_webpsave_buffer(in, buf, len, "lossless", lossless, "Q", q, "effort", 1, "strip", strip, NULL);
}

static int tm_srgb(void **data, size_t *len) {
	VipsBlob *blob;
	if (vips_profile_load("srgb", &blob, NULL))
		return -1;
	size_t n;
	const void *p = vips_blob_get(blob, &n);
	*data = g_memdup2(p, n);
	*len = n;
	vips_area_unref(VIPS_AREA(blob));
	return 0;
}

// tm_header reads a header with libvips (for this package's tests).
static int tm_header(const void *buf, size_t len, int *w, int *h, int *bands, int *pages, int *orientation) {
	VipsImage *img = vips_image_new_from_buffer(buf, len, "", NULL);
	if (!img)
		return -1;
	*w = img->Xsize;
	*h = img->Ysize;
	*bands = img->Bands;
	*pages = vips_image_get_n_pages(img);
	*orientation = vips_image_get_orientation(img);
	g_object_unref(img);
	return 0;
}

static void tm_set_blob(VipsImage *img, const char *name, const void *data, size_t len) {
	vips_image_set_blob_copy(img, name, data, len);
}
*/
import "C"

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand"
	"sync"
	"unsafe"
)

var initOnce sync.Once

func vipsInit() {
	initOnce.Do(func() {
		if C.tm_init() != 0 {
			panic("testimg: libvips does not start")
		}
	})
}

// Colour is the colour of flat images (grey images take its first value).
var Colour = [4]float64{120, 130, 140, 255}

// makeImage makes a w x h image with bands bands: flat, or noise from a seed derived from the size.
func makeImage(w, h, bands int, flat bool) *C.VipsImage {
	vipsInit()
	var img *C.VipsImage
	if flat {
		img = C.tm_flat(C.int(w), C.int(h), C.int(bands), (*C.double)(unsafe.Pointer(&Colour[0])))
	} else {
		pix := make([]byte, w*h*bands)
		rand.New(rand.NewSource(int64(w)*7919 + int64(h))).Read(pix)
		img = C.tm_memory(unsafe.Pointer(&pix[0]), C.size_t(len(pix)), C.int(w), C.int(h), C.int(bands))
	}
	if img == nil {
		panic(vipsError("making the image"))
	}
	return img
}

// encoded takes the buffer libvips allocated for an encoded image.
func encoded(what string, rc C.int, buf unsafe.Pointer, n C.size_t) []byte {
	if rc != 0 {
		panic(vipsError(what))
	}
	defer C.g_free(C.gpointer(buf))
	return C.GoBytes(buf, C.int(n))
}

func vipsError(what string) string {
	msg := C.GoString(C.vips_error_buffer())
	C.vips_error_clear()
	return fmt.Sprintf("testimg: %s: %s", what, msg)
}

// JPEGOptions describe a JPEG to make.
type JPEGOptions struct {
	Progressive bool // libjpeg's standard progression: 10 scans in colour, 6 in grey
	Grey        bool // one component instead of three (YCbCr)
	Flat        bool // one colour (Colour) instead of noise
	Restart     int  // restart interval in MCUs (0: no restart markers)
	Quality     int  // 0: 90 (libvips then does not subsample chroma)
}

// JPEG encodes a w x h image with libvips (libjpeg).
func JPEG(w, h int, o JPEGOptions) []byte {
	bands := 3
	if o.Grey {
		bands = 1
	}
	q := o.Quality
	if q == 0 {
		q = 90
	}
	img := makeImage(w, h, bands, o.Flat)
	defer C.g_object_unref(C.gpointer(img))
	var buf unsafe.Pointer
	var n C.size_t
	rc := C.tm_jpeg(img, C.int(q), cbool(o.Progressive), C.int(o.Restart), &buf, &n)
	return encoded("jpegsave", rc, buf, n)
}

// ProgressiveJPEG is a w x h colour progressive JPEG (10 scans), flat or noise.
func ProgressiveJPEG(w, h int, flat bool) []byte {
	return JPEG(w, h, JPEGOptions{Progressive: true, Flat: flat})
}

// ScanBomb is a flat w x h progressive JPEG followed by extraScans more scans before its EOI: its own
// AC scans again, in their order, over and over. Each is a few dozen bytes (EOB runs over a flat
// image) and makes libjpeg visit every coefficient block of its component once more. The repeats
// follow a valid progression (each cycle starts where the file's own progression starts and ends
// where it ends: first scans expect no earlier bits, refinements the bits the cycle's scans left), so
// libjpeg decodes every one without a warning. Merely repeating the last scan, a refinement, would
// not do: libjpeg warns about the bogus progression for every coefficient, and libvips gives up after
// 100 warnings.
func ScanBomb(w, h, extraScans int) []byte { return scanBomb(w, h, extraScans, false) }

// DCScanBomb is ScanBomb repeating the file's DC scans (the first one and its refinement) instead:
// each carries a bit or two per block (about 290 KB at 7000x7000) and visits the blocks of every
// component, about twice the CPU of an AC scan. Within an upload's size, these are the costliest
// scans a file can repeat.
func DCScanBomb(w, h, extraScans int) []byte { return scanBomb(w, h, extraScans, true) }

func scanBomb(w, h, extraScans int, dc bool) []byte {
	base := ProgressiveJPEG(w, h, true)
	scans := parseScans(base)
	var cycle [][]byte
	for i, s := range scans {
		switch {
		case dc && i == 0:
			cycle = append(cycle, base[s.at:s.end]) // its tables come first in the file, never redefined
		case dc && s.ss == 0, !dc && i > 0 && s.ss > 0:
			cycle = append(cycle, base[scans[i-1].end:s.end]) // with the tables defined for it
		}
	}
	if len(cycle) == 0 {
		panic("testimg: the progressive JPEG has no scans to repeat")
	}
	last := scans[len(scans)-1].end
	out := bytes.NewBuffer(make([]byte, 0, last+extraScans*len(cycle[0])+2))
	out.Write(base[:last])
	for i := 0; i < extraScans; i++ {
		out.Write(cycle[i%len(cycle)])
	}
	out.Write([]byte{0xFF, 0xD9})
	return out.Bytes()
}

// Scans counts the scans (SOS markers) of a well-formed JPEG such as this package makes.
func Scans(jpeg []byte) int { return len(parseScans(jpeg)) }

type scan struct {
	at, end int // the SOS marker; the end of the scan's entropy-coded data
	ss      int // spectral selection start: 0 for DC scans
}

// parseScans walks a well-formed JPEG (segments with lengths, scans up to the next marker that is not
// a restart marker). It is deliberately simpler than, and independent of, imageops' marker walk.
func parseScans(b []byte) []scan {
	var scans []scan
	p := 2
	for p+4 <= len(b) {
		if b[p] != 0xFF {
			panic(fmt.Sprintf("testimg: no marker at %d", p))
		}
		m := b[p+1]
		if m == 0xD9 {
			break
		}
		n := int(binary.BigEndian.Uint16(b[p+2:]))
		if m != 0xDA {
			p += 2 + n
			continue
		}
		s := scan{at: p, ss: int(b[p+4+1+2*int(b[p+4])])}
		q := p + 2 + n
		for q+1 < len(b) && !(b[q] == 0xFF && b[q+1] != 0 && (b[q+1] < 0xD0 || b[q+1] > 0xD7)) {
			q++
		}
		s.end = q
		scans = append(scans, s)
		p = q
	}
	return scans
}

// InterlacedPNG is a w x h RGBA PNG of one colour, Adam7-interlaced, every row Paeth-filtered: a file
// of a few hundred KB that libpng must inflate and unfilter whole (libvips decodes an interlaced PNG
// into memory before serving its first pixel), about a second of CPU at 7000x7000.
func InterlacedPNG(w, h int) []byte {
	var idat bytes.Buffer
	zw, _ := zlib.NewWriterLevel(&idat, zlib.BestSpeed)
	c := [4]byte{byte(Colour[0]), byte(Colour[1]), byte(Colour[2]), byte(Colour[3])}
	// Adam7 passes: starting column and row, column and row steps.
	for _, pass := range [7][4]int{{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4}, {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}} {
		pw := (w - pass[0] + pass[2] - 1) / pass[2]
		ph := (h - pass[1] + pass[3] - 1) / pass[3]
		if pw <= 0 || ph <= 0 {
			continue
		}
		// Paeth of a constant image: the first pixel of the first row predicts from zeros (the
		// residual is the colour), every other byte predicts itself exactly (residual 0).
		first := make([]byte, 1+4*pw)
		first[0] = 4
		copy(first[1:], c[:])
		rest := make([]byte, 1+4*pw)
		rest[0] = 4
		zw.Write(first)
		for y := 1; y < ph; y++ {
			zw.Write(rest)
		}
	}
	zw.Close()
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], uint32(w))
	binary.BigEndian.PutUint32(ihdr[4:], uint32(h))
	ihdr[8], ihdr[9], ihdr[12] = 8, 6, 1 // 8-bit RGBA, Adam7
	var out bytes.Buffer
	out.WriteString("\x89PNG\r\n\x1a\n")
	chunk(&out, "IHDR", ihdr)
	chunk(&out, "IDAT", idat.Bytes())
	chunk(&out, "IEND", nil)
	return out.Bytes()
}

func chunk(out *bytes.Buffer, typ string, data []byte) {
	binary.Write(out, binary.BigEndian, uint32(len(data)))
	out.WriteString(typ)
	out.Write(data)
	crc := crc32.NewIEEE()
	crc.Write([]byte(typ))
	crc.Write(data)
	binary.Write(out, binary.BigEndian, crc.Sum32())
}

// PNG encodes a w x h RGB image with libvips, flat or noise, interlaced or not.
func PNG(w, h int, flat, interlaced bool) []byte {
	img := makeImage(w, h, 3, flat)
	defer C.g_object_unref(C.gpointer(img))
	var buf unsafe.Pointer
	var n C.size_t
	rc := C.tm_png(img, cbool(interlaced), &buf, &n)
	return encoded("pngsave", rc, buf, n)
}

// WebP encodes a w x h RGB image with libvips (libwebp at effort 1, lossy at Q 90 or lossless), flat
// or noise.
func WebP(w, h int, lossless, flat bool) []byte {
	return WebPWith(w, h, WebPOptions{Lossless: lossless, Flat: flat})
}

// WebPOptions describe a WebP to make.
type WebPOptions struct {
	Lossless bool
	Flat     bool // one colour (Colour) instead of noise
	Alpha    bool // RGBA: noise alpha too, or Colour[3] when flat (opaque, the default: libwebp drops it)
	Quality  int  // lossy quality; 0: 90
	// Metadata to attach (nothing: none). libvips writes them as the ICCP, EXIF and XMP chunks of an
	// extended (VP8X) file; EXIF must parse (libvips rebuilds it from its fields before writing).
	ICC, EXIF, XMP []byte
}

// WebPWith encodes a w x h image with libvips (libwebp at effort 1).
func WebPWith(w, h int, o WebPOptions) []byte {
	bands := 3
	if o.Alpha {
		bands = 4
	}
	q := o.Quality
	if q == 0 {
		q = 90
	}
	img := makeImage(w, h, bands, o.Flat)
	defer C.g_object_unref(C.gpointer(img))
	meta := false
	for _, m := range []struct {
		name string
		data []byte
	}{{"icc-profile-data", o.ICC}, {"exif-data", o.EXIF}, {"xmp-data", o.XMP}} {
		if len(m.data) == 0 {
			continue
		}
		meta = true
		name := C.CString(m.name)
		C.tm_set_blob(img, name, unsafe.Pointer(&m.data[0]), C.size_t(len(m.data)))
		C.free(unsafe.Pointer(name))
	}
	var buf unsafe.Pointer
	var n C.size_t
	rc := C.tm_webp(img, cbool(o.Lossless), C.int(q), cbool(!meta), &buf, &n)
	return encoded("webpsave", rc, buf, n)
}

// SRGBProfile is libvips' built-in sRGB ICC profile.
func SRGBProfile() []byte {
	vipsInit()
	var buf unsafe.Pointer
	var n C.size_t
	return encoded("profile_load", C.tm_srgb(&buf, &n), buf, n)
}

// EXIF is a minimal little-endian EXIF block (as libvips stores it: starting "Exif\0\0") whose
// IFD0 holds only an Orientation tag (1-8).
func EXIF(orientation int) []byte {
	b := []byte("Exif\x00\x00II*\x00\x08\x00\x00\x00")
	b = binary.LittleEndian.AppendUint16(b, 1)      // one entry
	b = binary.LittleEndian.AppendUint16(b, 0x0112) // Orientation
	b = binary.LittleEndian.AppendUint16(b, 3)      // SHORT
	b = binary.LittleEndian.AppendUint32(b, 1)      // one value
	b = binary.LittleEndian.AppendUint16(b, uint16(orientation))
	b = binary.LittleEndian.AppendUint16(b, 0)
	return binary.LittleEndian.AppendUint32(b, 0) // no next IFD
}

// WebPFrame is one frame of AnimatedWebP: a noise image of W x H at (X, Y) on the canvas (even
// offsets, as the format stores them halved).
type WebPFrame struct {
	X, Y, W, H      int
	Lossless, Alpha bool
	DurationMS      int
	Blend           bool // alpha-blend over the canvas (else replace the frame's area)
	Dispose         bool // clear the frame's area to transparent before the next frame
}

// AnimatedWebP assembles an animated WebP of a w x h canvas (looping forever) from frames encoded by
// WebPWith, writing the container chunks (VP8X, ANIM, ANMF) directly: libvips' encoder decides frame
// rectangles itself, this places them where the test wants.
func AnimatedWebP(w, h int, frames []WebPFrame) []byte {
	var body bytes.Buffer
	body.WriteString("WEBP")
	vp8x := make([]byte, 10)
	vp8x[0] = 0x02 // animation
	for _, f := range frames {
		if f.Alpha {
			vp8x[0] |= 0x10
		}
	}
	putLE24(vp8x[4:], w-1)
	putLE24(vp8x[7:], h-1)
	riffChunk(&body, "VP8X", vp8x)
	riffChunk(&body, "ANIM", []byte{0, 0, 0, 0, 0, 0}) // background transparent black, loop forever
	for i, f := range frames {
		img := WebPWith(f.W, f.H, WebPOptions{Lossless: f.Lossless, Alpha: f.Alpha, Quality: 80 + i})
		hdr := make([]byte, 16)
		putLE24(hdr[0:], f.X/2)
		putLE24(hdr[3:], f.Y/2)
		putLE24(hdr[6:], f.W-1)
		putLE24(hdr[9:], f.H-1)
		putLE24(hdr[12:], f.DurationMS)
		if !f.Blend {
			hdr[15] |= 0x02
		}
		if f.Dispose {
			hdr[15] |= 0x01
		}
		payload := append(hdr, imageChunks(img)...)
		riffChunk(&body, "ANMF", payload)
	}
	var out bytes.Buffer
	out.WriteString("RIFF")
	binary.Write(&out, binary.LittleEndian, uint32(body.Len()))
	out.Write(body.Bytes())
	return out.Bytes()
}

// imageChunks returns the ALPH, VP8 and VP8L chunks of a still WebP, as they are stored.
func imageChunks(b []byte) []byte {
	var out []byte
	for p := 12; p+8 <= len(b); {
		n := int(binary.LittleEndian.Uint32(b[p+4:]))
		end := p + 8 + n + n&1
		switch string(b[p : p+4]) {
		case "ALPH", "VP8 ", "VP8L":
			out = append(out, b[p:end]...)
		}
		p = end
	}
	return out
}

func riffChunk(out *bytes.Buffer, tag string, data []byte) {
	out.WriteString(tag)
	binary.Write(out, binary.LittleEndian, uint32(len(data)))
	out.Write(data)
	if len(data)&1 == 1 {
		out.WriteByte(0)
	}
}

func putLE24(b []byte, v int) { b[0], b[1], b[2] = byte(v), byte(v>>8), byte(v>>16) }

func cbool(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

// libvipsHeader is what libvips reads from an image's header (this package's tests check what they
// make with it).
func libvipsHeader(b []byte) (w, h, bands, pages, orientation int, err error) {
	vipsInit()
	var cw, ch, cb, cp, co C.int
	if C.tm_header(unsafe.Pointer(&b[0]), C.size_t(len(b)), &cw, &ch, &cb, &cp, &co) != 0 {
		return 0, 0, 0, 0, 0, fmt.Errorf("%s", vipsError("header"))
	}
	return int(cw), int(ch), int(cb), int(cp), int(co), nil
}
