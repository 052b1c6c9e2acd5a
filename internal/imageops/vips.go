package imageops

/*
#cgo pkg-config: vips libwebp libwebpdemux libwebpmux
#cgo CFLAGS: -O3
#include <stdlib.h>
#include <glib.h>
#include "upsize.h"
#include <vips/vips.h>
*/
import "C"

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime/cgo"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/h2non/bimg"
)

var initOnce sync.Once

// logger receives libvips' own messages (warnings about damaged input and the like).
var logger atomic.Pointer[slog.Logger]

// SetLogger sends libvips' messages to l (by default they are dropped after Init).
func SetLogger(l *slog.Logger) { logger.Store(l) }

// callLog is what libvips' messages about one call need: the call's logger (nil: the one given to
// SetLogger) and whether the call was killed.
type callLog struct {
	log    *slog.Logger
	killed *atomic.Bool
}

//export upGoLog
func upGoLog(level C.int, msg *C.char, tag C.uintptr_t) {
	// tag is the handle of the callLog of the call the message belongs to, when libvips emitted it on
	// a thread working for one (upsize.c, log_tag).
	l := logger.Load()
	killed := false
	if tag != 0 {
		cl := cgo.Handle(tag).Value().(*callLog)
		if cl.log != nil {
			l = cl.log
		}
		killed = cl.killed.Load()
	}
	if l == nil {
		return
	}
	lvl := slog.LevelWarn
	switch {
	case killed:
		// Once a call is killed its decoder and encoder complain that their reads and writes are
		// refused ("not enough data"): the consequence of a cancel, which is no error.
		lvl = slog.LevelDebug
	case level&(C.G_LOG_LEVEL_ERROR|C.G_LOG_LEVEL_CRITICAL) != 0:
		lvl = slog.LevelError
	case level&(C.G_LOG_LEVEL_INFO|C.G_LOG_LEVEL_DEBUG) != 0:
		lvl = slog.LevelDebug
	}
	l.Log(context.Background(), lvl, "libvips", "message", C.GoString(msg))
}

// Init configures libvips once per process: operation cache off, malloc arenas bounded, libvips' log
// into SetLogger's logger, and the number of threads one libvips evaluation may use (0 keeps the
// current setting). It also starts the process WebP results are encoded in (webpsave.c): call it
// before any image work, while no other goroutine uses libvips. bimg starts libvips itself when the
// package loads.
func Init(vipsConcurrency int) {
	initOnce.Do(func() {
		bimg.VipsCacheSetMax(0)
		bimg.VipsCacheSetMaxMem(0)
		if errno := C.up_init(C.int(vipsConcurrency)); errno != 0 {
			l := logger.Load()
			if l == nil {
				l = slog.Default()
			}
			l.Warn("imageops: the WebP encoder process did not start: WebP results are encoded in-process, where a cancel waits for libwebp's progress steps",
				"err", syscall.Errno(errno))
		}
	})
}

// sink is what the C encoder writes through: a Go writer and the first error it returned.
type sink struct {
	w      io.Writer
	n      int64
	err    error
	killed *atomic.Bool
}

//export upGoWrite
func upGoWrite(h C.uintptr_t, data unsafe.Pointer, n C.longlong) C.longlong {
	s := cgo.Handle(h).Value().(*sink)
	// The kill flag stops tile computation, but the encoder would still finish the strips it holds
	// (megabytes at 8x): refusing its writes stops it within a few kilobytes.
	if s.err != nil || s.killed.Load() {
		return -1
	}
	// unsafe.Slice over C memory: the bytes are only read during this call.
	m, err := s.w.Write(unsafe.Slice((*byte)(data), int(n)))
	s.n += int64(m)
	if err != nil {
		s.err = err
		return -1
	}
	return C.longlong(m)
}

var formatCodes = map[Format]C.int{JPEG: C.UP_JPEG, PNG: C.UP_PNG, WebP: C.UP_WEBP}

// call is what one C call needs beside the bytes: the kill flag and the scan offsets in C memory
// (libvips threads read them while Go may move its own memory), the handle of its callLog.
type call struct {
	in     C.up_input
	killed atomic.Bool
	stop   func() bool
	fired  chan struct{} // closed once the kill has been stored
	logH   cgo.Handle
}

// newCall prepares a call on an input of format f. The kill flag is set when ctx is done; the caller
// must call free.
func newCall(ctx context.Context, f Format, layout *jpegLayout, log *slog.Logger) *call {
	c := &call{}
	c.in.format = formatCodes[f]
	kill := (*C.int)(C.calloc(1, C.size_t(unsafe.Sizeof(C.int(0)))))
	c.in.kill = kill
	if n := len(layout.sos); n > 0 {
		sos := unsafe.Slice((*C.int64_t)(C.malloc(C.size_t(n)*C.size_t(unsafe.Sizeof(C.int64_t(0))))), n)
		for i, o := range layout.sos {
			sos[i] = C.int64_t(o)
		}
		c.in.sos, c.in.nsos = &sos[0], C.int(n)
	}
	c.logH = cgo.NewHandle(&callLog{log: log, killed: &c.killed})
	c.in.log = C.uintptr_t(c.logH)
	c.fired = make(chan struct{})
	c.stop = context.AfterFunc(ctx, func() {
		defer close(c.fired)
		c.killed.Store(true)
		atomic.StoreInt32((*int32)(unsafe.Pointer(kill)), 1)
	})
	return c
}

func (c *call) free() {
	if !c.stop() {
		<-c.fired // the kill is being stored: the flag must outlive it
	}
	C.free(unsafe.Pointer(c.in.kill))
	if c.in.sos != nil {
		C.free(unsafe.Pointer(c.in.sos))
	}
	c.logH.Delete()
}

// Upsize enlarges src by p.Scale and streams the encoded result, in src's format, into dst.
//
// Limits are checked from the header before anything is decoded: the pixel limits of p, and a result
// side over what its format can hold (Format.MaxSide), both ErrTooLarge. When ctx is done the libvips
// evaluation is aborted, decode included: at the decoder's next read of input (every 4 KB, and before
// every JPEG scan), between the chunks a WebP is decoded in (about 20 ms of decoding each) or at its
// next macroblock row, or at the next tile, whichever comes first (see the package documentation for
// what is left); a WebP result's encoder within milliseconds (its process is ended). Upsize then
// returns ctx.Err().
func Upsize(ctx context.Context, src []byte, dst io.Writer, p Params) (Result, error) {
	return upsizeWith(ctx, src, dst, p, options{})
}

// upsamplePath picks the upsampler for bilinear and bicubic.
type upsamplePath int

const (
	// pathAuto: upsamplerFor's choice.
	pathAuto upsamplePath = iota
	// pathAffine: vips_affine.
	pathAffine
	// pathSeparable: the separable resampler, and an error where it cannot run.
	pathSeparable
)

// upsamplerFor is how bilinear and bicubic enlarge for a result in format out: through the resampler
// (resample.c) for JPEG and WebP, falling back to vips_affine for pixel formats it does not handle; for
// PNG, through the resampler where its result is vips_affine's bit for bit (every power-of-two factor,
// so every factor the service offers), vips_affine elsewhere: a lossless result keeps the pixels of
// libvips' own enlargement, whose rounding compresses best (docs/imageops.md, "The resampler").
func upsamplerFor(out Format) int {
	if out == PNG {
		return upsampleExact
	}
	return upsampleSeparable
}

// The upsamplers (upsize.h, UP_UPSAMPLE_*).
const (
	upsampleAffine        = C.UP_UPSAMPLE_AFFINE
	upsampleSeparable     = C.UP_UPSAMPLE_SEPARABLE
	upsampleSeparableOnly = C.UP_UPSAMPLE_SEPARABLE_ONLY
	upsampleExact         = C.UP_UPSAMPLE_EXACT
)

// Pixel formats of a decoded image, libvips' band formats (the ones usesResampler is asked about).
const (
	bandUchar  = C.VIPS_FORMAT_UCHAR
	bandUshort = C.VIPS_FORMAT_USHORT
	bandFloat  = C.VIPS_FORMAT_FLOAT
	bandDouble = C.VIPS_FORMAT_DOUBLE
)

// usesResampler is the choice upsize.c makes between the resampler and vips_affine (up_uses_resampler)
// for uncoded pixels of band format band, enlarged by scale with kernel, under upsampler.
func usesResampler(band, scale int, kernel Kernel, upsampler int) bool {
	return C.up_uses_resampler(C.VIPS_CODING_NONE, C.int(band), C.int(scale), C.int(kernels[kernel]), C.int(upsampler)) != 0
}

// options change an upsize for tests and benchmarks, which compare paths. Upsize passes none.
type options struct {
	path   upsamplePath
	output Format // the result's format instead of the source's (tests compare decodes through PNG)
	// libvipsWebP loads WebP through libvips' own loader; libvipsWebPSave saves WebP results through
	// libvips' own saver; webpInProcess encodes them with ours, in this process (webpsave.c).
	libvipsWebP, libvipsWebPSave, webpInProcess bool
}

// upsizeWith is Upsize changed by o.
func upsizeWith(ctx context.Context, src []byte, dst io.Writer, p Params, o options) (Result, error) {
	info, layout, err := probe(src)
	if err != nil {
		return Result{}, err
	}
	interp, ok := kernels[p.Kernel]
	if !ok {
		return Result{}, fmt.Errorf("%w: %q", ErrUnknownKernel, p.Kernel)
	}
	if p.Scale < 1 || p.Scale > 64 {
		return Result{}, fmt.Errorf("imageops: scale %d out of range", p.Scale)
	}
	if p.MaxInputPixels > 0 && info.Pixels() > p.MaxInputPixels {
		return Result{}, ErrTooLarge
	}
	if p.MaxOutputPixels > 0 && info.Pixels()*int64(p.Scale*p.Scale) > p.MaxOutputPixels {
		return Result{}, ErrTooLarge
	}
	out := info.Format
	if o.output != "" {
		out = o.output
	}
	// The encoder would refuse it too, but only once the image is decoded (WebP decodes whole first).
	if max(info.Width, info.Height)*p.Scale > out.MaxSide() {
		return Result{}, ErrTooLarge
	}
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}

	c := newCall(ctx, info.Format, &layout, p.Log)
	defer c.free()
	c.in.libvips_webp = boolC(o.libvipsWebP)
	s := &sink{w: dst, killed: &c.killed}
	h := cgo.NewHandle(s)
	defer h.Delete()

	e := p.Encoding
	cp := C.up_params{
		format:           formatCodes[out],
		scale:            C.int(p.Scale),
		interp:           C.int(interp),
		jpeg_q:           C.int(e.JPEGQuality),
		png_level:        C.int(e.PNGLevel),
		png_filter:       C.int(e.PNGFilter),
		webp_q:           C.int(e.WebPQuality),
		webp_effort:      C.int(e.WebPEffort),
		strip:            boolC(e.StripMetadata),
		upsampler:        C.int(upsamplerFor(out)),
		libvips_webpsave: boolC(o.libvipsWebPSave),
		webp_in_process:  boolC(o.webpInProcess),
		sink:             C.uintptr_t(h),
	}
	switch o.path {
	case pathAffine:
		cp.upsampler = upsampleAffine
	case pathSeparable:
		cp.upsampler = upsampleSeparableOnly
	}
	var w, hgt C.int
	var cerr *C.char
	// src stays referenced by this frame, so the GC keeps it alive for the whole C call.
	rc := C.up_upsize(unsafe.Pointer(unsafe.SliceData(src)), C.size_t(len(src)), &c.in, &cp, &w, &hgt, &cerr)
	if rc != 0 {
		msg := C.GoString(cerr)
		C.free(unsafe.Pointer(cerr))
		switch {
		case c.killed.Load():
			return Result{}, ctx.Err()
		case s.err != nil:
			return Result{}, fmt.Errorf("imageops: writing result: %w", s.err)
		default:
			return Result{}, fmt.Errorf("%w: %s", ErrInvalidImage, msg)
		}
	}
	return Result{Format: out, Width: int(w), Height: int(hgt)}, nil
}

// Validate decodes every pixel of src in one streaming pass and reports ErrInvalidImage if any part
// does not decode (ErrDecodeBomb for a JPEG with too many scans, refused from its structure). When ctx
// is done the decode is aborted as in Upsize and Validate returns ctx.Err(). libvips' messages about
// src go to log (nil: the logger given to SetLogger). Call it after Probe and the pixel limit check:
// its peak memory is about Info.DecodeBytes.
func Validate(ctx context.Context, src []byte, log *slog.Logger) error {
	f, err := Sniff(src)
	if err != nil {
		return err
	}
	layout, err := checkStructure(f, src)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	c := newCall(ctx, f, &layout, log)
	defer c.free()
	var cerr *C.char
	if C.up_validate(unsafe.Pointer(unsafe.SliceData(src)), C.size_t(len(src)), &c.in, &cerr) != 0 {
		msg := C.GoString(cerr)
		C.free(unsafe.Pointer(cerr))
		if c.killed.Load() {
			return ctx.Err()
		}
		return fmt.Errorf("%w: %s", ErrInvalidImage, msg)
	}
	return nil
}

func boolC(b bool) C.int {
	if b {
		return 1
	}
	return 0
}
