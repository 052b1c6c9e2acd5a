#include <errno.h>
#include <malloc.h>
#include <string.h>
#include <stdlib.h>
#include <vips/vips.h>
#include <webp/decode.h>
#include <webp/demux.h>

#include "upsize.h"
#include "resample.h"
#include "webpsave.h"
#include "_cgo_export.h"

/* The logger handle of the evaluation this thread is working for (0: none). libvips logs from its
 * worker threads, not from the thread that called it, so the handle travels with the work: the calling
 * thread sets it for the whole call, and the stage below sets it on a worker thread while that thread
 * computes a tile for the evaluation (decode included). */
static _Thread_local uintptr_t log_tag;

/* libvips reports damaged input and the like through GLib's log; send it to the service's JSON log,
 * with the logger of the call the message belongs to, instead of raw text on stderr. */
static void log_cb(const gchar *domain, GLogLevelFlags level, const gchar *message, gpointer user) {
	upGoLog((int) (level & G_LOG_LEVEL_MASK), (char *) message, log_tag);
}

static void webp_hook_workers(void);

int up_init(int vips_concurrency) {
	webp_hook_workers();
	/* Failing that, WebP results are encoded in-process (webpsave.c says what a cancel then does). */
	int encoder = up_webp_start_encoder() ? (errno ? errno : EIO) : 0;
	g_log_set_handler("VIPS", G_LOG_LEVEL_MASK | G_LOG_FLAG_FATAL | G_LOG_FLAG_RECURSION, log_cb, NULL);
	/* Worker memory must stay flat: glibc's default of 8 arenas per core fragments badly under
	 * libvips' thread pools. Two arenas keep RSS bounded at no measurable speed cost. */
	mallopt(M_ARENA_MAX, 2);
	/* Every task works on new pixels: the operation cache would only hold memory. */
	vips_cache_set_max(0);
	vips_cache_set_max_mem(0);
	vips_cache_set_max_files(0);
	if (vips_concurrency > 0)
		vips_concurrency_set(vips_concurrency);
	return encoder;
}

static char *take_error(const char *what) {
	const char *msg = vips_error_buffer();
	size_t n = strlen(what) + strlen(msg) + 3;
	char *s = malloc(n);
	if (s)
		snprintf(s, n, "%s: %s", what, msg);
	vips_error_clear();
	return s;
}

static int killed(const up_input *in) { return in->kill && *in->kill; }

/* ---- The killable source ----
 *
 * JPEG and PNG load from a custom source over the bytes instead of libvips' memory source, because
 * their decoders can run for seconds inside one tile: libjpeg consumes every scan of a progressive or
 * multi-scan JPEG inside jpeg_start_decompress, libpng decodes an interlaced PNG whole, both before the
 * first tile is done. Both decoders come back to the source for every few KB of input, and a read that
 * fails makes them stop with an error (jpeg2vips.c: ERREXIT under fail_on=error; vipspng.c:
 * png_error). So once the kill flag is set the source fails every read. A scan whose data is a few
 * bytes can still cost a whole pass over the image (a flat image's EOB runs), so a read never goes past
 * the next SOS marker: libjpeg must ask again, and the flag is seen, before each scan. */
typedef struct {
	const unsigned char *buf;
	gint64 len, pos;
	const int64_t *sos;
	int nsos;
	volatile int *kill;
} Feed;

static gint64 feed_read(VipsSourceCustom *source, void *data, gint64 length, Feed *f) {
	if (f->kill && *f->kill) {
		errno = ECANCELED;
		return -1;
	}
	gint64 n = VIPS_MIN(length, f->len - f->pos);
	if (n <= 0)
		return 0;
	/* The first SOS marker after pos (seeks may move pos back: search, do not remember). */
	int lo = 0, hi = f->nsos;
	while (lo < hi) {
		int mid = (lo + hi) / 2;
		if (f->sos[mid] <= f->pos)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < f->nsos)
		n = VIPS_MIN(n, f->sos[lo] - f->pos);
	memcpy(data, f->buf + f->pos, n);
	f->pos += n;
	return n;
}

/* Seekable, so libvips knows the length and never buffers the source itself. */
static gint64 feed_seek(VipsSourceCustom *source, gint64 offset, int whence, Feed *f) {
	gint64 p;
	switch (whence) {
	case SEEK_SET: p = offset; break;
	case SEEK_CUR: p = f->pos + offset; break;
	case SEEK_END: p = f->len + offset; break;
	default: return -1;
	}
	if (p < 0 || p > f->len)
		return -1;
	f->pos = p;
	return p;
}

/* What a load keeps beside its image: for JPEG and PNG, the source and its state. */
typedef struct {
	Feed feed;
	VipsSourceCustom *source;
} Load;

static VipsImage *load_webp(const void *buf, size_t len, const up_input *in);

/* load starts the loader for the sniffed format (no sniffing here: Go did it), sequential: decoding
 * overlaps the rest of the pipeline. fail_on error turns a damaged file into an error instead of grey
 * pixels. WebP decodes here, whole, before anything else (load_webp below). */
static VipsImage *load(const void *buf, size_t len, const up_input *in, Load *l) {
	VipsImage *out = NULL;
	VipsAccess access = VIPS_ACCESS_SEQUENTIAL;
	if (in->format == UP_WEBP) {
		if (!in->libvips_webp)
			return load_webp(buf, len, in);
		/* libvips' own loader, kept for the tests that compare the two. */
		if (vips_webpload_buffer((void *) buf, len, &out, "access", access, "fail_on", VIPS_FAIL_ON_ERROR, NULL))
			return NULL;
		return out;
	}
	l->feed = (Feed) {.buf = buf, .len = (gint64) len, .sos = in->sos, .nsos = in->nsos, .kill = in->kill};
	l->source = vips_source_custom_new();
	g_signal_connect(l->source, "read", G_CALLBACK(feed_read), &l->feed);
	g_signal_connect(l->source, "seek", G_CALLBACK(feed_seek), &l->feed);
	int r;
	if (in->format == UP_JPEG)
		r = vips_jpegload_source(VIPS_SOURCE(l->source), &out, "access", access, "fail_on", VIPS_FAIL_ON_ERROR, NULL);
	else if (in->format == UP_PNG)
		r = vips_pngload_source(VIPS_SOURCE(l->source), &out, "access", access, "fail_on", VIPS_FAIL_ON_ERROR, NULL);
	else {
		vips_error("upsize", "unknown input format %d", in->format);
		r = -1;
	}
	return r ? NULL : out;
}

/* ---- WebP ----
 *
 * libvips' webpload decodes a frame with one WebPDecode call over the whole frame, on the first tile
 * asked of it: nothing can interrupt it (1.5 s for a 28 MB lossy 16383x3051 noise image, the worst
 * that fits an upload). So libvips only reads the header here (its webpload is lazy: the header,
 * band count and every metadata field it attaches, ICC, EXIF and the fields parsed from it,
 * orientation included, XMP, animation fields, without decoding a pixel), and the frame is decoded
 * with libwebp's incremental decoder straight into a memory image with that header: RGB or RGBA as
 * libvips' loader would give them (it decodes RGBA and drops the alpha when the file says there is
 * none, which leaves the same colour bytes), one frame buffer of w x h x bands.
 *
 * The decoder is fed the frame's compressed bytes a chunk at a time and the kill flag is checked
 * between chunks. Lossless (VP8L) decoding needs the data a row block at a time, but resumes from a
 * checkpoint taken every 8 rows: chunks too small would decode the same rows over and over. The
 * chunk is therefore sized from the time the last call took, to about WEBP_CALL_US of decoding a call.
 * Lossy (VP8) data can need no bytes at all for whole rows (skipped macroblocks: a flat image decodes
 * from its first partition alone), so chunks cannot bound a lossy call: there, the kill flag is also
 * checked once a macroblock row (16 pixel rows), where libwebp waits for its filtering thread (see
 * webp_sync). The first chunk is sized from the frame's average density (WEBP_FIRST_PIXELS' worth):
 * a flat lossless 49 MP frame is 2 KB. What remains uninterruptible: lossless rows whose pixels take
 * no bits at all, all decoded by the call that reaches them (3-4 ns a pixel: up to 0.15-0.2 s for a
 * whole 49 MP frame), and lossy frames under 512 pixels wide (no thread there; at most 8 MP, 35 ms
 * flat). Measured, cancel to return: 2-12 ms for 50 MP of lossy noise (30 MB, 1.5-2 s to decode),
 * 2 ms for a flat lossy 49 MP frame, 20 ms for a flat lossless one.
 *
 * An animation loads as libvips loads it, its first frame on a canvas: frame 1 is decoded, the same
 * way, into its place on a transparent canvas (libvips copies frame 1 without blending), the bands
 * and the animation fields are libvips' header's. */

/* Time one call of the decoder aims at; pixels the first chunk holds at the frame's average density;
 * bounds of a chunk. */
#define WEBP_CALL_US 20000
#define WEBP_FIRST_PIXELS (1 << 20)
#define WEBP_MIN_CHUNK 64
#define WEBP_MAX_FIRST_CHUNK (64 << 10)

/* libwebp's worker interface (src/utils/thread_utils.h, not installed): six functions taking the
 * worker, in this order, unchanged since libwebp 0.5. libwebp exports the functions that get and set
 * it, to let programs supply their own threads; here it only adds the kill check to Sync. */
typedef struct {
	void (*init)(void *worker);
	int (*reset)(void *worker);
	int (*sync)(void *worker);
	void (*launch)(void *worker);
	void (*execute)(void *worker);
	void (*end)(void *worker);
} webp_worker_interface;
extern const webp_worker_interface *WebPGetWorkerInterface(void);
extern int WebPSetWorkerInterface(const webp_worker_interface *);

static webp_worker_interface webp_workers;

/* The kill flag of the decode running on this thread (NULL: none, or not ours). */
static _Thread_local volatile int *webp_kill;

/* The lossy decoder hands each macroblock row to its thread for filtering and output, after a Sync
 * that waits for the previous row (frame_dec.c, VP8ProcessRow). Failing that Sync once the kill flag
 * is set makes the decoder stop with an error (VP8_STATUS_USER_ABORT) at the next row. Sync always
 * runs on the decoding thread, so a thread-local flag tells our decodes from any other (libvips'
 * encoder uses workers too). */
static int webp_sync(void *worker) {
	int ok = webp_workers.sync(worker);
	volatile int *kill = webp_kill;
	return ok && !(kill && *kill);
}

/* Called once, before any WebP is read or written (libwebp's condition for changing the interface):
 * the rest of the interface stays libwebp's own. */
static void webp_hook_workers(void) {
	const webp_worker_interface *cur = WebPGetWorkerInterface();
	if (!cur || cur->sync == webp_sync)
		return;
	webp_workers = *cur;
	webp_worker_interface hooked = webp_workers;
	hooked.sync = webp_sync;
	WebPSetWorkerInterface(&hooked);
}

static const char *webp_status(VP8StatusCode status) {
	switch (status) {
	case VP8_STATUS_OUT_OF_MEMORY: return "out of memory";
	case VP8_STATUS_INVALID_PARAM: return "invalid parameter";
	case VP8_STATUS_BITSTREAM_ERROR: return "bitstream error";
	case VP8_STATUS_UNSUPPORTED_FEATURE: return "unsupported feature";
	case VP8_STATUS_SUSPENDED: return "truncated";
	case VP8_STATUS_USER_ABORT: return "aborted";
	case VP8_STATUS_NOT_ENOUGH_DATA: return "not enough data";
	default: return "unknown error";
	}
}

/* webp_decode decodes fragment (a frame's ALPH/VP8/VP8L chunks) into out at (x, y), fed in chunks. */
static int webp_decode(const WebPData *fragment, VipsImage *out, int x, int y, int w, int h, const up_input *in) {
	WebPDecoderConfig config;
	if (!WebPInitDecoderConfig(&config)) {
		vips_error("webp", "%s", "libwebp version mismatch");
		return -1;
	}
	/* As libvips' loader: a thread filters and converts while the main one parses. */
	config.options.use_threads = 1;
	config.output.colorspace = out->Bands == 4 ? MODE_RGBA : MODE_RGB;
	config.output.is_external_memory = 1;
	config.output.u.RGBA.rgba = VIPS_IMAGE_ADDR(out, x, y);
	config.output.u.RGBA.stride = VIPS_IMAGE_SIZEOF_LINE(out);
	config.output.u.RGBA.size = (size_t) VIPS_IMAGE_SIZEOF_LINE(out) * (h - 1) + (size_t) w * out->Bands;
	WebPIDecoder *idec = WebPIDecode(NULL, 0, &config);
	if (!idec) {
		vips_error("webp", "%s", "out of memory");
		return -1;
	}

	int result = -1;
	size_t fed = 0;
	/* The first chunk: at the average density, about a millisecond or two of decoding for lossy
	 * noise, a few for a frame whose pixels take almost no bits. */
	size_t chunk = (size_t) VIPS_CLIP(WEBP_MIN_CHUNK,
		(double) fragment->size * WEBP_FIRST_PIXELS / ((double) w * h), WEBP_MAX_FIRST_CHUNK);
	volatile int *saved = webp_kill;
	webp_kill = in->kill;
	for (;;) {
		if (killed(in)) {
			vips_error("upsize", "%s", "canceled");
			break;
		}
		fed = VIPS_MIN(fed + chunk, fragment->size);
		gint64 t = g_get_monotonic_time();
		/* Update, not Append: the decoder reads the caller's bytes in place, nothing is copied. */
		VP8StatusCode status = WebPIUpdate(idec, fragment->bytes, fed);
		t = g_get_monotonic_time() - t;
		if (status == VP8_STATUS_OK) {
			result = 0;
			break;
		}
		if (status != VP8_STATUS_SUSPENDED || fed == fragment->size) {
			if (killed(in))
				vips_error("upsize", "%s", "canceled");
			else
				vips_error("webp2vips", "unable to read pixels (%s)", webp_status(status));
			break;
		}
		/* The next chunk: as much as decodes in about WEBP_CALL_US at the rate of this call,
		 * growing at most twofold (a call that waited for data, on headers or on the first
		 * partition, took no time) and shrinking at most fourfold. */
		if (t <= WEBP_CALL_US / 2)
			chunk *= 2;
		else
			chunk = VIPS_MAX(WEBP_MIN_CHUNK, VIPS_MAX(chunk / 4, (size_t) ((double) chunk * WEBP_CALL_US / t)));
	}
	webp_kill = saved;
	WebPIDelete(idec);
	return result;
}

static VipsImage *load_webp(const void *buf, size_t len, const up_input *in) {
	VipsImage *header = NULL, *out = NULL;
	WebPDemuxer *demux = NULL;
	WebPIterator frame;
	int have_frame = 0, ok = 0;

	if (vips_webpload_buffer((void *) buf, len, &header, NULL))
		return NULL;
	/* The frame as libvips finds it: frame 1 of the demuxer over the whole file. */
	WebPData data = {.bytes = buf, .size = len};
	if (!(demux = WebPDemux(&data)) || !(have_frame = WebPDemuxGetFrame(demux, 1, &frame))) {
		vips_error("webp", "%s", "unable to parse image");
		goto done;
	}
	if (header->BandFmt != VIPS_FORMAT_UCHAR || header->Coding != VIPS_CODING_NONE ||
		(header->Bands != 3 && header->Bands != 4) ||
		frame.x_offset < 0 || frame.y_offset < 0 || frame.width <= 0 || frame.height <= 0 ||
		frame.x_offset + frame.width > header->Xsize || frame.y_offset + frame.height > header->Ysize) {
		vips_error("webp", "unexpected layout: %dx%d, %d bands; frame %dx%d at (%d, %d)",
			header->Xsize, header->Ysize, header->Bands, frame.width, frame.height, frame.x_offset, frame.y_offset);
		goto done;
	}
	/* A memory image with every field of the header, metadata included (copied as libvips copies
	 * them along a pipeline: the EXIF block is not parsed again). The header goes first, with the
	 * frame buffer libvips' reader allocated (untouched: no pixel was read), then ours is allocated,
	 * zeroed (transparent where an animation's first frame does not reach). */
	out = vips_image_new_memory();
	if (vips_image_pipelinev(out, VIPS_DEMAND_STYLE_ANY, header, NULL))
		goto done;
	VIPS_UNREF(header);
	if (vips_image_write_prepare(out) ||
		webp_decode(&frame.fragment, out, frame.x_offset, frame.y_offset, frame.width, frame.height, in))
		goto done;
	ok = 1;

done:
	if (have_frame)
		WebPDemuxReleaseIterator(&frame);
	WebPDemuxDelete(demux);
	VIPS_UNREF(header);
	if (!ok)
		VIPS_UNREF(out);
	return out;
}

/* load_done detaches the source from Go's bytes: after this nothing can read them, even if libvips
 * still held a reference to the source. */
static void load_done(Load *l) {
	if (!l->source)
		return;
	g_signal_handlers_disconnect_by_data(l->source, &l->feed);
	g_object_unref(l->source);
	l->source = NULL;
}

/* ---- The stage ----
 *
 * A pass-through at the end of the pipeline: every tile of the evaluation is asked of it, on whatever
 * thread computes it, and everything upstream of that tile (decode included) runs inside its generate.
 * It sets the thread's log tag for that time and refuses tiles once the call is killed. It hands out
 * its input's pixels without copying (vips_region_region), so its cost is a function call per tile. */
typedef struct {
	uintptr_t log;
	volatile int *kill;
} Stage;

static int stage_gen(VipsRegion *or, void *seq, void *a, void *b, gboolean *stop) {
	VipsRegion *ir = (VipsRegion *) seq;
	const Stage *st = (const Stage *) b;
	const VipsRect *r = &or->valid;
	if (st->kill && *st->kill) {
		vips_error("upsize", "%s", "canceled");
		return -1;
	}
	uintptr_t saved = log_tag;
	log_tag = st->log;
	int fail = vips_region_prepare(ir, r) || vips_region_region(or, ir, r, r->left, r->top);
	log_tag = saved;
	return fail ? -1 : 0;
}

static void stage_free(VipsImage *image, Stage *st) { g_free(st); }

static int stage(VipsImage *in, VipsImage **out, const up_input *inp) {
	Stage *st = g_new(Stage, 1);
	st->log = inp->log;
	st->kill = inp->kill;
	*out = vips_image_new();
	g_signal_connect(*out, "close", G_CALLBACK(stage_free), st);
	/* ANY: the input's demand style decides, as if the stage were not there. */
	if (vips_image_pipelinev(*out, VIPS_DEMAND_STYLE_ANY, in, NULL) ||
		vips_image_generate(*out, vips_start_one, stage_gen, vips_stop_one, in, st))
		return -1;
	return 0;
}

/* decode_whole decodes in, through the stage, into an image that holds every pixel: the decode runs in
 * the evaluation's threads with the call's log tag and kill checks. libvips' own random-access load
 * would do the same decode in a thread pool of its own that neither reaches (its messages went to the
 * global logger). The copy is where libvips' random-access load would put it (libvips' foreign.c,
 * vips_foreign_load_temp): in memory up to the disc threshold (100 MB unless VIPS_DISC_THRESHOLD says
 * otherwise), in a temporary file, deleted on close, above: the same memory as libvips' own load. */
static int decode_whole(VipsImage *in, VipsImage **out, const up_input *inp) {
	VipsImage *staged = NULL, *whole;
	if ((guint64) VIPS_IMAGE_SIZEOF_IMAGE(in) > vips_get_disc_threshold())
		whole = vips_image_new_temp_file("%s.v");
	else
		whole = vips_image_new_memory();
	if (!whole)
		return -1;
	int fail = stage(in, &staged, inp) || vips_image_write(staged, whole) || vips_image_pio_input(whole);
	VIPS_UNREF(staged);
	if (fail) {
		g_object_unref(whole);
		return -1;
	}
	*out = whole;
	return 0;
}

/* ---- Upsize ---- */

static gint64 write_cb(VipsTargetCustom *target, const void *data, gint64 length, void *user) {
	return upGoWrite((uintptr_t) user, (void *) data, (long long) length);
}

static VipsInterpolate *interpolator(int interp) {
	switch (interp) {
	case 1: return vips_interpolate_new("bilinear");
	case 3: return vips_interpolate_new("nohalo");
	case 4: return vips_interpolate_new("lbb");
	case 5: return vips_interpolate_new("vsqbs");
	default: return vips_interpolate_new("bicubic");
	}
}

/* upsample enlarges by an integer factor with pixel centres aligned: output pixel X samples input
 * position (X + 0.5) / s - 0.5, and samples outside the image copy the edge (no dark border).
 * Bilinear and bicubic go through the resampler (resample.c) when upsampler says so (Go decides, per
 * output format: vips.go, upsamplerFor); the other interpolators, pixel formats the resampler does not
 * handle, and (UP_UPSAMPLE_EXACT) factors where its result would not be vips_affine's bit for bit,
 * through libvips' general affine path. */
int up_uses_resampler(int coding, int fmt, int s, int interp, int upsampler) {
	if (interp != 1 && interp != 2)
		return 0;
	switch (upsampler) {
	case UP_UPSAMPLE_SEPARABLE: return up_resample_supported(coding, fmt);
	case UP_UPSAMPLE_SEPARABLE_ONLY: return 1;
	case UP_UPSAMPLE_EXACT: return up_resample_exact(coding, fmt, s);
	default: return 0;
	}
}

static int upsample(VipsObject *owner, VipsImage *in, VipsImage **out, int s, int interp, int upsampler) {
	if (interp == 0)
		return vips_zoom(in, out, s, s, NULL);
	if (up_uses_resampler(in->Coding, in->BandFmt, s, interp, upsampler))
		return up_resample(owner, in, out, s, interp == 2);

	VipsInterpolate *ip = interpolator(interp);
	if (!ip)
		return -1;
	VipsArrayInt *area = vips_array_int_newv(4, 0, 0, in->Xsize * s, in->Ysize * s);
	/* vips_affine maps out = s * (in + idx) + odx: idx = 0.5 and odx = -0.5 give the centre alignment
	 * above. It premultiplies alpha itself, so transparent pixels do not bleed colour. */
	int r = vips_affine(in, out, (double) s, 0.0, 0.0, (double) s,
		"interpolate", ip,
		"idx", 0.5, "idy", 0.5, "odx", -0.5, "ody", -0.5,
		"extend", VIPS_EXTEND_COPY,
		"oarea", area,
		NULL);
	vips_area_unref(VIPS_AREA(area));
	g_object_unref(ip);
	return r;
}

static int save(VipsImage *img, VipsTarget *target, const up_params *p, const up_input *in) {
	switch (p->format) {
	case UP_JPEG:
		return vips_jpegsave_target(img, target, "Q", p->jpeg_q, "strip", p->strip, NULL);
	case UP_PNG:
		return vips_pngsave_target(img, target,
			"compression", p->png_level,
			"filter", p->png_filter ? p->png_filter : VIPS_FOREIGN_PNG_FILTER_NONE,
			"strip", p->strip, NULL);
	case UP_WEBP:
		if (p->libvips_webpsave)
			return vips_webpsave_target(img, target, "Q", p->webp_q, "effort", p->webp_effort, "strip", p->strip, NULL);
		return up_webpsave(img, target, p->webp_q, p->webp_effort, p->strip, in->kill, p->webp_in_process);
	}
	vips_error("upsize", "unknown output format %d", p->format);
	return -1;
}

int up_upsize(const void *buf, size_t len, const up_input *in, const up_params *p, int *out_w, int *out_h, char **err) {
	int result = -1;
	uintptr_t saved_tag = log_tag;
	log_tag = in->log; /* the header read and the save's set-up run on this thread */
	VipsImage *base = vips_image_new();
	VipsImage **t = (VipsImage **) vips_object_local_array(VIPS_OBJECT(base), 5);
	VipsTargetCustom *target = NULL;
	Load l = {0};

	if (!(t[0] = load(buf, len, in, &l))) {
		*err = take_error(killed(in) ? "canceled" : "load");
		goto done;
	}
	/* A rotation reads its input in another order than it writes: decode the whole image first
	 * (WebP already is). */
	VipsImage *upright = t[0];
	if (vips_image_get_orientation(t[0]) > 1 && (in->format != UP_WEBP || in->libvips_webp)) {
		if (decode_whole(t[0], &t[1], in)) {
			*err = take_error(killed(in) ? "canceled" : "load");
			goto done;
		}
		upright = t[1];
	}
	if (vips_autorot(upright, &t[2], NULL)) {
		*err = take_error("autorot");
		goto done;
	}
	if (upsample(VIPS_OBJECT(base), t[2], &t[3], p->scale, p->interp, p->upsampler)) {
		*err = take_error("upsample");
		goto done;
	}
	if (stage(t[3], &t[4], in)) {
		*err = take_error("stage");
		goto done;
	}

	target = vips_target_custom_new();
	g_signal_connect(target, "write", G_CALLBACK(write_cb), (void *) p->sink);
	if (save(t[4], VIPS_TARGET(target), p, in)) {
		*err = take_error("save");
		goto done;
	}
	*out_w = t[4]->Xsize;
	*out_h = t[4]->Ysize;
	result = 0;

done:
	if (target)
		g_object_unref(target);
	g_object_unref(base);
	load_done(&l);
	/* libvips keeps per-thread buffers; this goroutine's OS thread may never come back to libvips. */
	vips_thread_shutdown();
	log_tag = saved_tag;
	return result;
}

/* ---- Validate ---- */

int up_validate(const void *buf, size_t len, const up_input *in, char **err) {
	int result = -1;
	uintptr_t saved_tag = log_tag;
	log_tag = in->log;
	double avg;
	Load l = {0};
	VipsImage *staged = NULL;
	VipsImage *img = load(buf, len, in, &l);
	if (!img) {
		*err = take_error(killed(in) ? "canceled" : "load");
		goto done;
	}
	if (stage(img, &staged, in)) {
		*err = take_error("stage");
		goto done;
	}
	/* vips_avg touches every pixel in one streaming pass: constant memory whatever the size (beyond
	 * what the decoder itself holds: Info.DecodeBytes). */
	if (vips_avg(staged, &avg, NULL)) {
		*err = take_error("decode");
		goto done;
	}
	result = 0;
done:
	if (staged)
		g_object_unref(staged);
	if (img)
		g_object_unref(img);
	load_done(&l);
	vips_thread_shutdown();
	log_tag = saved_tag;
	return result;
}
