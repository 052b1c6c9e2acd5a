#include <malloc.h>
#include <string.h>
#include <stdlib.h>
#include <vips/vips.h>

#include "upsize.h"
#include "resample.h"
#include "_cgo_export.h"

/* libvips reports damaged input and the like through GLib's log; send it to the service's JSON log
 * instead of raw text on stderr. */
static void log_cb(const gchar *domain, GLogLevelFlags level, const gchar *message, gpointer user) {
	upGoLog((int) (level & G_LOG_LEVEL_MASK), (char *) message);
}

void up_init(int vips_concurrency) {
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

/* Called by libvips as the sink computes the output; a set kill flag stops the evaluation at the next
 * tile, which frees the threads and the CPU. */
static void eval_cb(VipsImage *image, VipsProgress *progress, void *user) {
	volatile int *kill = (volatile int *) user;
	if (kill && *kill)
		vips_image_set_kill(image, TRUE);
}

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
 * Bilinear and bicubic go through the separable resampler (resample.c) unless p->affine asks for
 * libvips' general affine path (Go decides, per output format), which the others always take. */
static int upsample(VipsObject *owner, VipsImage *in, VipsImage **out, int s, int interp, int affine) {
	if (interp == 0)
		return vips_zoom(in, out, s, s, NULL);
	if ((interp == 1 || interp == 2) && !affine && up_resample_supported(in))
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

static int save(VipsImage *img, VipsTarget *target, const up_params *p) {
	switch (p->format) {
	case UP_JPEG:
		return vips_jpegsave_target(img, target, "Q", p->jpeg_q, "strip", p->strip, NULL);
	case UP_PNG:
		return vips_pngsave_target(img, target,
			"compression", p->png_level,
			"filter", p->png_adaptive ? VIPS_FOREIGN_PNG_FILTER_ALL : VIPS_FOREIGN_PNG_FILTER_NONE,
			"strip", p->strip, NULL);
	case UP_WEBP:
		return vips_webpsave_target(img, target, "Q", p->webp_q, "effort", p->webp_effort, "strip", p->strip, NULL);
	}
	vips_error("upsize", "unknown output format %d", p->format);
	return -1;
}

int up_upsize(const void *buf, size_t len, const up_params *p, int *out_w, int *out_h, char **err) {
	int result = -1;
	VipsImage *base = vips_image_new();
	VipsImage **t = (VipsImage **) vips_object_local_array(VIPS_OBJECT(base), 3);
	VipsTargetCustom *target = NULL;

	/* fail_on error turns a damaged file into an error instead of grey pixels. */
	t[0] = vips_image_new_from_buffer(buf, len, "",
		"access", p->sequential ? VIPS_ACCESS_SEQUENTIAL : VIPS_ACCESS_RANDOM, "fail_on", VIPS_FAIL_ON_ERROR, NULL);
	if (!t[0]) {
		*err = take_error("load");
		goto done;
	}
	if (vips_autorot(t[0], &t[1], NULL)) {
		*err = take_error("autorot");
		goto done;
	}
	if (upsample(VIPS_OBJECT(base), t[1], &t[2], p->scale, p->interp, p->affine)) {
		*err = take_error("upsample");
		goto done;
	}

	vips_image_set_progress(t[2], TRUE);
	g_signal_connect(t[2], "eval", G_CALLBACK(eval_cb), (void *) p->kill);

	target = vips_target_custom_new();
	g_signal_connect(target, "write", G_CALLBACK(write_cb), (void *) p->sink);
	if (save(t[2], VIPS_TARGET(target), p)) {
		*err = take_error("save");
		goto done;
	}
	*out_w = t[2]->Xsize;
	*out_h = t[2]->Ysize;
	result = 0;

done:
	if (target)
		g_object_unref(target);
	g_object_unref(base);
	/* libvips keeps per-thread buffers; this goroutine's OS thread may never come back to libvips. */
	vips_thread_shutdown();
	return result;
}

int up_validate(const void *buf, size_t len, char **err) {
	int result = -1;
	double avg;
	VipsImage *img = vips_image_new_from_buffer(buf, len, "",
		"access", VIPS_ACCESS_SEQUENTIAL, "fail_on", VIPS_FAIL_ON_ERROR, NULL);
	if (!img) {
		*err = take_error("load");
		goto done;
	}
	/* vips_avg touches every pixel in one streaming pass: constant memory whatever the size. */
	if (vips_avg(img, &avg, NULL)) {
		*err = take_error("decode");
		goto done;
	}
	result = 0;
done:
	if (img)
		g_object_unref(img);
	vips_thread_shutdown();
	return result;
}
