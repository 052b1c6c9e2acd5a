package imageops

/*
#cgo pkg-config: vips
#cgo CFLAGS: -O3
#include <stdlib.h>
#include <glib.h>
#include "upsize.h"
#include "resample.h"
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
	"unsafe"

	"github.com/h2non/bimg"
)

var initOnce sync.Once

// logger receives libvips' own messages (warnings about damaged input and the like).
var logger atomic.Pointer[slog.Logger]

// SetLogger sends libvips' messages to l (by default they are dropped after Init).
func SetLogger(l *slog.Logger) { logger.Store(l) }

//export upGoLog
func upGoLog(level C.int, msg *C.char) {
	l := logger.Load()
	if l == nil {
		return
	}
	lvl := slog.LevelWarn
	if level&(C.G_LOG_LEVEL_ERROR|C.G_LOG_LEVEL_CRITICAL) != 0 {
		lvl = slog.LevelError
	} else if level&(C.G_LOG_LEVEL_INFO|C.G_LOG_LEVEL_DEBUG) != 0 {
		lvl = slog.LevelDebug
	}
	l.Log(context.Background(), lvl, "libvips", "message", C.GoString(msg))
}

// Init configures libvips once per process: operation cache off, malloc arenas bounded, libvips' log
// into SetLogger's logger, and the number of threads one libvips evaluation may use (0 keeps the
// current setting). bimg starts libvips itself when the package loads.
func Init(vipsConcurrency int) {
	initOnce.Do(func() {
		bimg.VipsCacheSetMax(0)
		bimg.VipsCacheSetMaxMem(0)
		C.up_init(C.int(vipsConcurrency))
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

// Upsize enlarges src by p.Scale and streams the encoded result, in src's format, into dst.
//
// Limits are checked from the header before anything is decoded. When ctx is done the libvips
// evaluation is aborted at its next tile and Upsize returns ctx.Err().
func Upsize(ctx context.Context, src []byte, dst io.Writer, p Params) (Result, error) {
	info, err := Probe(src)
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
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}

	// The kill flag lives in C memory: libvips threads read it while Go may move its own memory.
	kill := (*C.int)(C.calloc(1, C.size_t(unsafe.Sizeof(C.int(0)))))
	defer C.free(unsafe.Pointer(kill))
	var killed atomic.Bool
	stop := context.AfterFunc(ctx, func() {
		killed.Store(true)
		atomic.StoreInt32((*int32)(unsafe.Pointer(kill)), 1)
	})
	defer stop()

	s := &sink{w: dst, killed: &killed}
	h := cgo.NewHandle(s)
	defer h.Delete()

	e := p.Encoding
	cp := C.up_params{
		scale:        C.int(p.Scale),
		interp:       C.int(interp),
		format:       formatCodes[info.Format],
		jpeg_q:       C.int(e.JPEGQuality),
		png_level:    C.int(e.PNGLevel),
		png_adaptive: boolC(e.PNGAdaptive),
		webp_q:       C.int(e.WebPQuality),
		webp_effort:  C.int(e.WebPEffort),
		strip:        boolC(e.StripMetadata),
		affine:       boolC(p.path == pathAffine || (p.path == pathAuto && info.Format == PNG)),
		sequential:   boolC(info.Orientation <= 1),
		kill:         kill,
		sink:         C.uintptr_t(h),
	}
	var w, hgt C.int
	var cerr *C.char
	// src stays referenced by this frame, so the GC keeps it alive for the whole C call.
	rc := C.up_upsize(unsafe.Pointer(unsafe.SliceData(src)), C.size_t(len(src)), &cp, &w, &hgt, &cerr)
	if rc != 0 {
		msg := C.GoString(cerr)
		C.free(unsafe.Pointer(cerr))
		switch {
		case killed.Load():
			return Result{}, ctx.Err()
		case s.err != nil:
			return Result{}, fmt.Errorf("imageops: writing result: %w", s.err)
		default:
			return Result{}, fmt.Errorf("%w: %s", ErrInvalidImage, msg)
		}
	}
	return Result{Format: info.Format, Width: int(w), Height: int(hgt)}, nil
}

// Validate decodes every pixel of src in one streaming pass and reports ErrInvalidImage if any part
// does not decode. Call it after Probe and the pixel limit check.
func Validate(src []byte) error {
	var cerr *C.char
	if C.up_validate(unsafe.Pointer(unsafe.SliceData(src)), C.size_t(len(src)), &cerr) != 0 {
		msg := C.GoString(cerr)
		C.free(unsafe.Pointer(cerr))
		return fmt.Errorf("%w: %s", ErrInvalidImage, msg)
	}
	return nil
}

// resamplerRuns counts the upsizes that went through the separable resampler (resample.c).
func resamplerRuns() int { return int(C.up_resample_runs()) }

func boolC(b bool) C.int {
	if b {
		return 1
	}
	return 0
}
