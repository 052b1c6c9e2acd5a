#ifndef UPSIZE_IMAGEOPS_H
#define UPSIZE_IMAGEOPS_H

#include <stdint.h>
#include <stddef.h>

/* Formats, in step with imageops.go. */
enum { UP_JPEG = 1, UP_PNG = 2, UP_WEBP = 3 };

/* How bilinear and bicubic enlarge (nearest is always vips_zoom, the other interpolators always
 * vips_affine): in step with vips.go (upsampleAffine...). */
enum {
	UP_UPSAMPLE_AFFINE = 0,         /* vips_affine */
	UP_UPSAMPLE_SEPARABLE = 1,      /* resample.c, or vips_affine for pixel formats it does not handle */
	UP_UPSAMPLE_SEPARABLE_ONLY = 2, /* resample.c, an error for those formats (tests: no silent fallback) */
	UP_UPSAMPLE_EXACT = 3,          /* resample.c where its result is vips_affine's bit for bit, vips_affine elsewhere */
};

/* What one call needs beside the encoded bytes (passed apart: this struct lives in Go memory and
 * must hold no Go pointer). */
typedef struct {
	int format; /* the sniffed format: the loader is called directly */
	/* JPEG: offsets of the SOS markers, increasing. Reads of the source stop before each, so libjpeg
	 * comes back for input, and the kill flag is checked, before every scan. */
	const int64_t *sos; /* C memory */
	int nsos;
	/* Set to non-zero from Go to abort the call: read by the source, by every tile and by the WebP
	 * encoder's wait. */
	volatile int *kill;
	/* cgo.Handle of the call's logging state for libvips' messages (vips.go, callLog; 0: none). */
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
	int png_filter; /* libvips' VipsForeignPngFilter flags; 0: none */
	int webp_q;
	int webp_effort;
	int strip;
	int upsampler; /* UP_UPSAMPLE_* */
	/* WebP results through libvips' own saver, or through ours but encoded in this process (tests
	 * compare them with ours, webpsave.c). */
	int libvips_webpsave, webp_in_process;
	/* cgo.Handle of the Go io.Writer the encoder streams into. */
	uintptr_t sink;
} up_params;

/* up_init bounds malloc arenas, turns libvips' operation cache off, routes libvips' log to Go, adds
 * the kill check to libwebp's worker interface and starts the WebP encoder server (webpsave.c). Call it
 * once, before any WebP is read or written, while no image work runs. Returns 0, or the errno of the
 * encoder server's start (WebP results are then encoded in-process). */
int up_init(int vips_concurrency);

/* up_upsize runs the whole pipeline. Returns 0 on success; on failure
 * -1 and *err holds a message the caller must free().
 *
 * How each format loads (the kill flag must reach every decoder, whatever the image):
 *   JPEG, PNG: libvips' loaders from a custom source that fails every read once killed, and cuts
 *     reads before every JPEG scan (libjpeg and libpng come back to it every few KB).
 *   WebP: libvips reads the header and metadata only; the first frame is decoded by libwebp's
 *     incremental decoder into a memory image before the pipeline starts, fed ~20 ms of data at a
 *     time, the flag checked between feeds and, for lossy frames, at every macroblock row (libvips'
 *     loader decodes a frame in one call nothing interrupts: 1.5 s for the worst upload).
 * Images whose EXIF orientation asks for a rotation are decoded in full before autorot, like libvips'
 * random-access load but through the stage (tagged, killable). WebP results are encoded in a process
 * of their own, ended on a cancel (webpsave.c); JPEG and PNG encoders stop when the sink refuses
 * their writes. */
int up_upsize(const void *buf, size_t len, const up_input *in, const up_params *p, int *out_w, int *out_h, char **err);

/* up_uses_resampler is upsample's choice for pixels of libvips' coding and band format fmt, enlarged s
 * times with interpolator interp (vips.go, kernels) under upsampler (UP_UPSAMPLE_*): the resampler
 * (resample.c) or not (vips_affine, or vips_zoom for nearest). */
int up_uses_resampler(int coding, int fmt, int s, int interp, int upsampler);

/* up_validate decodes every pixel (sequentially, failing on any decode error). */
int up_validate(const void *buf, size_t len, const up_input *in, char **err);

#endif
