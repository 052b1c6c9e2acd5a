#ifndef UPSIZE_IMAGEOPS_H
#define UPSIZE_IMAGEOPS_H

#include <stdint.h>
#include <stddef.h>

/* Formats, in step with imageops.go. */
enum { UP_JPEG = 1, UP_PNG = 2, UP_WEBP = 3 };

/* What one call needs beside the encoded bytes (passed apart: this struct lives in Go memory and
 * must hold no Go pointer). */
typedef struct {
	int format; /* the sniffed format: the loader is called directly */
	/* JPEG: offsets of the SOS markers, increasing. Reads of the source stop before each, so libjpeg
	 * comes back for input, and the kill flag is checked, before every scan. */
	const int64_t *sos; /* C memory */
	int nsos;
	int sequential; /* load top to bottom, overlapping decode and the rest (not for rotations) */
	/* Set to non-zero from Go to abort the call: read by the source and by every tile. */
	volatile int *kill;
	/* cgo.Handle of the call's *slog.Logger for libvips' messages (0: the global logger). */
	uintptr_t log;
	/* WebP through libvips' own loader instead of load_webp (tests compare the two). */
	int libvips_webp;
} up_input;

typedef struct {
	int format; /* of the result */
	int scale;
	int interp; /* 0 nearest (zoom), 1 bilinear, 2 bicubic, 3 nohalo, 4 lbb, 5 vsqbs */
	int jpeg_q;
	int png_level;
	int png_adaptive;
	int webp_q;
	int webp_effort;
	int strip;
	int affine; /* bilinear/bicubic through vips_affine instead of the separable resampler */
	/* cgo.Handle of the Go io.Writer the encoder streams into. */
	uintptr_t sink;
} up_params;

/* up_init bounds malloc arenas, turns libvips' operation cache off, routes libvips' log to Go and
 * adds the kill check to libwebp's worker interface (call it before any WebP is read or written). */
void up_init(int vips_concurrency);

/* up_upsize runs the whole pipeline. Returns 0 on success; on failure
 * -1 and *err holds a message the caller must free().
 *
 * How each format loads (the kill flag must reach every decoder, whatever the image):
 *   JPEG, PNG: libvips' loaders from a custom source that fails every read once killed, and cuts
 *     reads before every JPEG scan (libjpeg and libpng come back to it every few KB).
 *   WebP: libvips reads the header and metadata only; the first frame is decoded by libwebp's
 *     incremental decoder into a memory image before the pipeline starts, fed ~20 ms of data at a
 *     time, the flag checked between feeds and, for lossy frames, at every macroblock row (libvips'
 *     loader decodes a frame in one call nothing interrupts: 1.5 s for the worst upload). */
int up_upsize(const void *buf, size_t len, const up_input *in, const up_params *p, int *out_w, int *out_h, char **err);

/* up_validate decodes every pixel (sequentially, failing on any decode error). */
int up_validate(const void *buf, size_t len, const up_input *in, char **err);

/* up_webp_decodes counts the WebP frames decoded by load_webp (tests check which loader ran). */
int up_webp_decodes(void);

#endif
