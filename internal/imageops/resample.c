/* Separable upsampling by an integer factor.
 *
 * vips_affine, which libvips' own resize uses for enlarging, evaluates a 4x4 interpolation stencil per
 * output pixel through a function pointer, with a coordinate transform and bounds checks on every
 * pixel. For an integer factor s with centre-aligned sampling the sample positions repeat every s
 * pixels, so the same result comes from two 1-D passes with s precomputed weight sets: a horizontal pass
 * over the s-times fewer input rows, then a vertical pass that is a straight multiply-add over
 * contiguous rows (vectorised by the compiler). Same kernel, same positions, same edge rule (copy the
 * edge), same alpha handling (premultiplied) as the affine path; results agree within rounding (tests
 * compare the two on every supported format). Formats other than 8-bit, 16-bit and float stay on
 * vips_affine, and so do PNG results (vips.go, upsamplerFor, says why).
 */
#include <math.h>
#include <vips/vips.h>

#include "resample.h"

typedef struct {
	int s;
	int in_w, in_h, bands;
	VipsBandFormat fmt;
	int *base;  /* [s] input index of the second tap for output phase j, relative to k = X / s */
	float *w;   /* [s][4] tap weights for output phase j */
} Resample;

/* Per thread: the input region and scratch space reused between tiles. */
typedef struct {
	VipsRegion *ir;
	float *rows;  /* horizontally resampled input rows, each out_width * bands floats */
	size_t rows_cap;
	int *taps;    /* [out_width][4] input column offsets (in elements) of each output column's taps */
	size_t taps_cap;
} Seq;

/* Catmull-Rom, the cubic libvips' "bicubic" interpolator uses. */
static void cubic_weights(double t, float *w) {
	double t2 = t * t, t3 = t2 * t;
	w[0] = (float) (0.5 * (-t3 + 2 * t2 - t));
	w[1] = (float) (0.5 * (3 * t3 - 5 * t2 + 2));
	w[2] = (float) (0.5 * (-3 * t3 + 4 * t2 + t));
	w[3] = (float) (0.5 * (t3 - t2));
}

static void linear_weights(double t, float *w) {
	w[0] = 0;
	w[1] = (float) (1 - t);
	w[2] = (float) t;
	w[3] = 0;
}

static void resample_free(VipsImage *image, Resample *r) {
	g_free(r->base);
	g_free(r->w);
	g_free(r);
}

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Output coordinate X (either axis) reads input taps base(X)-1 .. base(X)+2, clamped to the image. */
static int tap_base(const Resample *r, int X) { return X / r->s + r->base[X % r->s]; }

static void *seq_start(VipsImage *out, void *a, void *b) {
	Seq *seq = g_new0(Seq, 1);
	seq->ir = vips_region_new((VipsImage *) a);
	return seq;
}

static int seq_stop(void *vseq, void *a, void *b) {
	Seq *seq = (Seq *) vseq;
	VIPS_UNREF(seq->ir);
	g_free(seq->rows);
	g_free(seq->taps);
	g_free(seq);
	return 0;
}

static int grow(void **p, size_t *cap, size_t want) {
	if (want <= *cap)
		return 0;
	g_free(*p);
	if (!(*p = g_try_malloc(want))) {
		*cap = 0;
		vips_error("upsize", "out of memory");
		return -1;
	}
	*cap = want;
	return 0;
}

/* The two passes, one function per pixel type: the inner loops must be specialised to vectorise.
 *
 * hpass_* resample one input row p horizontally into out[x * bands + b], for the tile's ow output
 * columns from left on. taps holds, for each of those columns, the element offsets in p of its four
 * input taps; weights holds the four tap weights of each of the s output phases. They stay out of gen:
 * inlined there, gcc 12 spills a register in the column loop (an instruction more per output column:
 * +0.4 % of gen's instructions at 4x); out of line they take 0.3 % fewer than the macro they replace.
 *
 * vpass_* make one output row q of n elements from four horizontally resampled rows r0-r3 and the four
 * weights w of the row's phase, rounded and clamped to the type. */
static inline float hsample(const float *w, float a, float b, float c, float d) {
	return w[0] * a + w[1] * b + w[2] * c + w[3] * d;
}

static __attribute__((noinline)) void hpass_uchar(const unsigned char *p, float *out, const int *taps, const float *weights, int s,
	int left, int ow, int bands) {
	for (int x = 0; x < ow; x++) {
		const float *w = weights + 4 * ((left + x) % s);
		const int *t = taps + 4 * x;
		for (int b = 0; b < bands; b++)
			out[x * bands + b] = hsample(w, p[t[0] + b], p[t[1] + b], p[t[2] + b], p[t[3] + b]);
	}
}

static __attribute__((noinline)) void hpass_ushort(const unsigned short *p, float *out, const int *taps, const float *weights, int s,
	int left, int ow, int bands) {
	for (int x = 0; x < ow; x++) {
		const float *w = weights + 4 * ((left + x) % s);
		const int *t = taps + 4 * x;
		for (int b = 0; b < bands; b++)
			out[x * bands + b] = hsample(w, p[t[0] + b], p[t[1] + b], p[t[2] + b], p[t[3] + b]);
	}
}

static __attribute__((noinline)) void hpass_float(const float *p, float *out, const int *taps, const float *weights, int s,
	int left, int ow, int bands) {
	for (int x = 0; x < ow; x++) {
		const float *w = weights + 4 * ((left + x) % s);
		const int *t = taps + 4 * x;
		for (int b = 0; b < bands; b++)
			out[x * bands + b] = hsample(w, p[t[0] + b], p[t[1] + b], p[t[2] + b], p[t[3] + b]);
	}
}

static inline void vpass_uchar(unsigned char *q, const float *w, const float *r0, const float *r1, const float *r2,
	const float *r3, int n) {
	for (int i = 0; i < n; i++) {
		float v = w[0] * r0[i] + w[1] * r1[i] + w[2] * r2[i] + w[3] * r3[i];
		q[i] = v <= 0 ? 0 : v >= 255 ? 255 : (int) (v + 0.5f);
	}
}

static inline void vpass_ushort(unsigned short *q, const float *w, const float *r0, const float *r1, const float *r2,
	const float *r3, int n) {
	for (int i = 0; i < n; i++) {
		float v = w[0] * r0[i] + w[1] * r1[i] + w[2] * r2[i] + w[3] * r3[i];
		q[i] = v <= 0 ? 0 : v >= 65535 ? 65535 : (int) (v + 0.5f);
	}
}

static inline void vpass_float(float *q, const float *w, const float *r0, const float *r1, const float *r2,
	const float *r3, int n) {
	for (int i = 0; i < n; i++)
		q[i] = w[0] * r0[i] + w[1] * r1[i] + w[2] * r2[i] + w[3] * r3[i];
}

/* Reading another format's pixels as floats would be garbage: refuse, never assume. */
static int unsupported(VipsBandFormat fmt) {
	vips_error("upsize", "the resampler does not handle band format %d", (int) fmt);
	return -1;
}

static int gen(VipsRegion *or, void *vseq, void *a, void *b, gboolean *stop) {
	Seq *seq = (Seq *) vseq;
	const Resample *r = (const Resample *) b;
	const VipsRect *o = &or->valid;
	const int left = o->left, top = o->top, ow = o->width, bands = r->bands;
	const int n = ow * bands;

	/* The input rectangle every tap of this tile falls in. */
	int x0 = clampi(tap_base(r, left) - 1, 0, r->in_w - 1);
	int x1 = clampi(tap_base(r, left + ow - 1) + 2, 0, r->in_w - 1);
	int y0 = clampi(tap_base(r, top) - 1, 0, r->in_h - 1);
	int y1 = clampi(tap_base(r, top + o->height - 1) + 2, 0, r->in_h - 1);
	VipsRect need = {x0, y0, x1 - x0 + 1, y1 - y0 + 1};
	if (vips_region_prepare(seq->ir, &need))
		return -1;

	if (grow((void **) &seq->taps, &seq->taps_cap, sizeof(int) * 4 * ow) ||
		grow((void **) &seq->rows, &seq->rows_cap, sizeof(float) * n * need.height))
		return -1;
	for (int x = 0; x < ow; x++) {
		int base = tap_base(r, left + x);
		for (int t = 0; t < 4; t++)
			seq->taps[4 * x + t] = (clampi(base - 1 + t, 0, r->in_w - 1) - x0) * bands;
	}

	for (int iy = y0; iy <= y1; iy++) {
		const VipsPel *in = VIPS_REGION_ADDR(seq->ir, x0, iy);
		float *out = seq->rows + (size_t) (iy - y0) * n;
		switch (r->fmt) {
		case VIPS_FORMAT_UCHAR: hpass_uchar(in, out, seq->taps, r->w, r->s, left, ow, bands); break;
		case VIPS_FORMAT_USHORT: hpass_ushort((const unsigned short *) in, out, seq->taps, r->w, r->s, left, ow, bands); break;
		case VIPS_FORMAT_FLOAT: hpass_float((const float *) in, out, seq->taps, r->w, r->s, left, ow, bands); break;
		default: return unsupported(r->fmt);
		}
	}

	for (int Y = top; Y < top + o->height; Y++) {
		int base = tap_base(r, Y);
		const float *w = r->w + 4 * (Y % r->s);
		const float *r0 = seq->rows + (size_t) (clampi(base - 1, 0, r->in_h - 1) - y0) * n;
		const float *r1 = seq->rows + (size_t) (clampi(base, 0, r->in_h - 1) - y0) * n;
		const float *r2 = seq->rows + (size_t) (clampi(base + 1, 0, r->in_h - 1) - y0) * n;
		const float *r3 = seq->rows + (size_t) (clampi(base + 2, 0, r->in_h - 1) - y0) * n;
		VipsPel *q = VIPS_REGION_ADDR(or, left, Y);
		switch (r->fmt) {
		case VIPS_FORMAT_UCHAR: vpass_uchar(q, w, r0, r1, r2, r3, n); break;
		case VIPS_FORMAT_USHORT: vpass_ushort((unsigned short *) q, w, r0, r1, r2, r3, n); break;
		case VIPS_FORMAT_FLOAT: vpass_float((float *) q, w, r0, r1, r2, r3, n); break;
		default: return unsupported(r->fmt);
		}
	}
	return 0;
}

int up_resample_supported(const VipsImage *in) {
	return in->Coding == VIPS_CODING_NONE &&
		(in->BandFmt == VIPS_FORMAT_UCHAR || in->BandFmt == VIPS_FORMAT_USHORT || in->BandFmt == VIPS_FORMAT_FLOAT);
}

int up_resample(VipsObject *owner, VipsImage *in, VipsImage **out, int s, int cubic) {
	if (!up_resample_supported(in))
		return unsupported(in->BandFmt);
	if ((gint64) in->Xsize * s > VIPS_MAX_COORD || (gint64) in->Ysize * s > VIPS_MAX_COORD) {
		vips_error("upsize", "output of %dx%d at %dx is too large", in->Xsize, in->Ysize, s);
		return -1;
	}
	VipsImage **t = (VipsImage **) vips_object_local_array(owner, 4);
	VipsBandFormat fmt = in->BandFmt;
	int alpha = vips_image_hasalpha(in);

	/* Interpolate colour weighted by alpha, as vips_affine does, so transparent pixels do not bleed. */
	if (alpha) {
		if (vips_premultiply(in, &t[0], NULL))
			return -1;
		in = t[0];
	}

	Resample *r = g_new0(Resample, 1);
	r->s = s;
	r->in_w = in->Xsize;
	r->in_h = in->Ysize;
	r->bands = in->Bands;
	r->fmt = in->BandFmt;
	r->base = g_new(int, s);
	r->w = g_new(float, 4 * s);
	/* Output pixel X samples input position (X + 0.5) / s - 0.5, as upsample() in upsize.c. */
	for (int j = 0; j < s; j++) {
		double x = (j + 0.5) / s - 0.5;
		double f = floor(x);
		r->base[j] = (int) f;
		if (cubic)
			cubic_weights(x - f, r->w + 4 * j);
		else
			linear_weights(x - f, r->w + 4 * j);
	}

	t[1] = vips_image_new();
	g_signal_connect(t[1], "close", G_CALLBACK(resample_free), r);
	/* Whole-width strips: what the encoders ask for, and each input row is resampled once per strip. */
	if (vips_image_pipelinev(t[1], VIPS_DEMAND_STYLE_FATSTRIP, in, NULL))
		return -1;
	t[1]->Xsize = in->Xsize * s;
	t[1]->Ysize = in->Ysize * s;
	if (vips_image_generate(t[1], seq_start, gen, seq_stop, in, r))
		return -1;

	if (!alpha) {
		*out = t[1];
		g_object_ref(*out);
		return 0;
	}
	if (vips_unpremultiply(t[1], &t[2], NULL) || vips_cast(t[2], &t[3], fmt, NULL))
		return -1;
	*out = t[3];
	g_object_ref(*out);
	return 0;
}
