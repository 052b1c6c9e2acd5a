/* Upsampling by an integer factor, with vips_affine's arithmetic.
 *
 * vips_affine, which libvips' own resize uses for enlarging, evaluates a 4x4 interpolation stencil per
 * output pixel through a function pointer, with a coordinate transform and bounds checks on every
 * pixel. For an integer factor s with centre-aligned sampling the sample positions repeat every s
 * pixels, so a handful of precomputed weight sets serve the whole image:
 *
 *   - bicubic (Catmull-Rom) is computed in two 1-D passes, a horizontal pass over the s-times fewer
 *     input rows, then a vertical pass that is a straight multiply-add over contiguous rows
 *     (vectorised by the compiler);
 *   - bilinear directly, four taps per output value.
 *
 * The arithmetic is the one libvips 8.14's interpolators do for each pixel format, reimplemented here
 * (libvips' bicubic.cpp, templates.h and interpolate.c describe it):
 *
 *   - positions: the bicubic stencil's fraction is rounded to the nearest 1/64 px (VIPS_TRANSFORM_SCALE)
 *     and its weights come from a table of the 65 fractions; bilinear uses the fraction as it is;
 *   - 8-bit bicubic: integer weights, the table's values times 4096 (VIPS_INTERPOLATE_SCALE) truncated;
 *     each of the four rows is summed and rounded to an integer ((v + 2048) >> 12, no clamp), then the
 *     four row sums the same way, and the result clamped to 0..255. A bicubic is thereby separable
 *     exactly: the rounded row sums are the horizontal pass, kept as 16-bit integers;
 *   - 16-bit bicubic: double weights and sums, clamped, then truncated to the integer;
 *   - float bicubic (what an image with alpha is interpolated in, premultiplied): double sums, each row
 *     sum and the result rounded to float;
 *   - 8- and 16-bit bilinear: the fraction in 1/4096 (truncated), the four weights made from it as
 *     vips_affine makes them, one rounding; float bilinear in double, rounded to float.
 *
 * Same positions, same edge rule (copy the edge), same alpha handling (premultiplied): where the
 * sample positions are what vips_affine computes, the result is vips_affine's bit for bit. They are
 * for every power-of-two factor (the positions are then multiples of 1/(2s) px, which vips_affine's
 * doubles hold exactly); at other factors vips_affine accumulates its position in steps of a rounded
 * 1/s, and a fraction that lands next to a 1/64 boundary may round the other way (up_resample_exact).
 * Formats other than 8-bit, 16-bit and float stay on vips_affine.
 */
#include <math.h>
#include <stdint.h>
#include <vips/vips.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "resample.h"

/* Floating-point sums must round as vips' do: no fused multiply-add (a compiler targeting FMA
 * instructions would otherwise fuse them). */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* vips_affine's fixed point: weights in 1/4096, the bicubic table in steps of 1/64 px. */
#define FIX_SHIFT VIPS_INTERPOLATE_SHIFT
#define FIX_ONE VIPS_INTERPOLATE_SCALE
#define FIX_HALF (FIX_ONE >> 1)
#define POS_STEPS VIPS_TRANSFORM_SCALE

typedef struct {
	int s;
	int in_w, in_h, bands;
	int cubic;
	VipsBandFormat fmt;
	int *base;   /* [s] input index of the second tap for output phase j, relative to k = X / s */
	double *wd;  /* [s][4] bicubic: tap weights of phase j; bilinear: [s] the fraction */
	int16_t *wi; /* [s][4] bicubic: the weights in 1/4096, truncated; bilinear: [s] the fraction in 1/4096 */
} Resample;

/* Per thread: the input region and scratch space reused between tiles.
 *
 * The bicubic's horizontally resampled rows are kept between tiles: the encoders ask for whole-width
 * strips top to bottom, and consecutive strips share three input rows, or most of theirs at small
 * factors (a strip of 16 output rows at 2x reads 11 input rows, 8 of them new). Row iy of the input is
 * kept in slot iy % nslots, tagged with iy; the slots are valid for the columns [left, left + ow) they
 * were made for. */
typedef struct {
	VipsRegion *ir;
	void *rows; /* bicubic: nslots horizontally resampled input rows, each out_width * bands values */
	size_t rows_cap;
	int *tags;  /* [nslots] the input row each slot holds, -1: none */
	int nslots;
	int left, ow; /* the columns the slots hold */
	int *taps; /* [out_width][4] input column offsets (in elements) of each output column's taps */
	size_t taps_cap;
} Seq;

/* Catmull-Rom at fraction t, the cubic of libvips' "bicubic" interpolator. For the table's fractions
 * (multiples of 1/64) every step is exact in double, so any correct evaluation gives vips' values. */
static void catmull_rom(double t, double *w) {
	w[0] = ((-0.5 * t + 1.0) * t - 0.5) * t;
	w[1] = (1.5 * t - 2.5) * t * t + 1.0;
	w[2] = ((-1.5 * t + 2.0) * t + 0.5) * t;
	w[3] = (0.5 * t - 0.5) * t * t;
}

static void resample_free(VipsImage *image, Resample *r) {
	g_free(r->base);
	g_free(r->wd);
	g_free(r->wi);
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
	g_free(seq->tags);
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

/* ---- Bicubic: two passes, one function per pixel type (the inner loops must be specialised to
 * vectorise).
 *
 * hpass_* resample one input row p horizontally into out[x * bands + b], for the tile's ow output
 * columns from left on. taps holds, for each of those columns, the element offsets in p of its four
 * input taps; the weights of each of the s output phases are four in a row. They stay out of gen:
 * inlined there, gcc 12 spills a register in the column loop.
 *
 * vpass_* make one output row q of n elements from four horizontally resampled rows r0-r3 and the four
 * weights w of the row's phase. Sums are evaluated left to right, as vips' are (in floating point the
 * order decides the rounding). */

/* The 8-bit pass is the one every JPEG, WebP and 8-bit PNG takes: specialised for 1-4 bands (a
 * constant band count unrolls the band loop), the phase counted instead of divided. */
static inline void hpass_uchar_n(const unsigned char *p, int16_t *out, const int *taps, const int16_t *weights,
	int s, int left, int ow, const int bands) {
	int j = left % s;
	for (int x = 0; x < ow; x++) {
		const int16_t *w = weights + 4 * j;
		const int *t = taps + 4 * x;
		const int w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
		const unsigned char *p0 = p + t[0], *p1 = p + t[1], *p2 = p + t[2], *p3 = p + t[3];
		for (int b = 0; b < bands; b++)
			out[b] = (int16_t) ((w0 * p0[b] + w1 * p1[b] + w2 * p2[b] + w3 * p3[b] + FIX_HALF) >> FIX_SHIFT);
		out += bands;
		if (++j == s)
			j = 0;
	}
}

static __attribute__((noinline)) void hpass_uchar(const unsigned char *p, int16_t *out, const int *taps,
	const int16_t *weights, int s, int left, int ow, int bands) {
	switch (bands) {
	case 1: hpass_uchar_n(p, out, taps, weights, s, left, ow, 1); break;
	case 2: hpass_uchar_n(p, out, taps, weights, s, left, ow, 2); break;
	case 3: hpass_uchar_n(p, out, taps, weights, s, left, ow, 3); break;
	case 4: hpass_uchar_n(p, out, taps, weights, s, left, ow, 4); break;
	default: hpass_uchar_n(p, out, taps, weights, s, left, ow, bands); break;
	}
}

static __attribute__((noinline)) void hpass_ushort(const unsigned short *p, double *out, const int *taps,
	const double *weights, int s, int left, int ow, int bands) {
	for (int x = 0; x < ow; x++) {
		const double *w = weights + 4 * ((left + x) % s);
		const int *t = taps + 4 * x;
		for (int b = 0; b < bands; b++)
			out[x * bands + b] = w[0] * p[t[0] + b] + w[1] * p[t[1] + b] + w[2] * p[t[2] + b] + w[3] * p[t[3] + b];
	}
}

static __attribute__((noinline)) void hpass_float(const float *p, float *out, const int *taps,
	const double *weights, int s, int left, int ow, int bands) {
	for (int x = 0; x < ow; x++) {
		const double *w = weights + 4 * ((left + x) % s);
		const int *t = taps + 4 * x;
		for (int b = 0; b < bands; b++)
			out[x * bands + b] = (float) (w[0] * p[t[0] + b] + w[1] * p[t[1] + b] + w[2] * p[t[2] + b] +
				w[3] * p[t[3] + b]);
	}
}

static inline void vpass_uchar(unsigned char *q, const int16_t *w, const int16_t *r0, const int16_t *r1,
	const int16_t *r2, const int16_t *r3, int n) {
	const int16_t w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
	int i = 0;
#ifdef __SSE2__
	/* Eight values at a time: rows interleaved in pairs, each pair times its two weights summed into
	 * 32 bits (pmaddwd), shifted, then packed with saturation, which is the clamp to 0..255. The
	 * compiler's own vectorisation of the loop below takes four times the instructions (SSE2 has no
	 * 32-bit multiply). */
	const __m128i w01 = _mm_set_epi16(w1, w0, w1, w0, w1, w0, w1, w0);
	const __m128i w23 = _mm_set_epi16(w3, w2, w3, w2, w3, w2, w3, w2);
	const __m128i half = _mm_set1_epi32(FIX_HALF);
	for (; i + 8 <= n; i += 8) {
		__m128i a = _mm_loadu_si128((const __m128i *) (r0 + i)), b = _mm_loadu_si128((const __m128i *) (r1 + i));
		__m128i c = _mm_loadu_si128((const __m128i *) (r2 + i)), d = _mm_loadu_si128((const __m128i *) (r3 + i));
		__m128i lo = _mm_add_epi32(_mm_madd_epi16(_mm_unpacklo_epi16(a, b), w01), _mm_madd_epi16(_mm_unpacklo_epi16(c, d), w23));
		__m128i hi = _mm_add_epi32(_mm_madd_epi16(_mm_unpackhi_epi16(a, b), w01), _mm_madd_epi16(_mm_unpackhi_epi16(c, d), w23));
		lo = _mm_srai_epi32(_mm_add_epi32(lo, half), FIX_SHIFT);
		hi = _mm_srai_epi32(_mm_add_epi32(hi, half), FIX_SHIFT);
		__m128i v = _mm_packs_epi32(lo, hi);
		_mm_storel_epi64((__m128i *) (q + i), _mm_packus_epi16(v, v));
	}
#endif
	for (; i < n; i++) {
		int v = (w0 * r0[i] + w1 * r1[i] + w2 * r2[i] + w3 * r3[i] + FIX_HALF) >> FIX_SHIFT;
		q[i] = v < 0 ? 0 : v > 255 ? 255 : v;
	}
}

static inline void vpass_ushort(unsigned short *q, const double *w, const double *r0, const double *r1,
	const double *r2, const double *r3, int n) {
	for (int i = 0; i < n; i++) {
		double v = w[0] * r0[i] + w[1] * r1[i] + w[2] * r2[i] + w[3] * r3[i];
		q[i] = (unsigned short) (v < 0 ? 0 : v > 65535 ? 65535 : v); /* truncated, as vips does */
	}
}

static inline void vpass_float(float *q, const double *w, const float *r0, const float *r1, const float *r2,
	const float *r3, int n) {
	for (int i = 0; i < n; i++)
		q[i] = (float) (w[0] * r0[i] + w[1] * r1[i] + w[2] * r2[i] + w[3] * r3[i]);
}

/* ---- Bilinear: one pass. Output row q (phase jy) from input rows a (upper) and b (lower): each value
 * from the two taps of its column in each row. */

static void linear_int_weights(const Resample *r, int jy, int *c) {
	/* vips' bilinear for integer pixels: the fractions X, Y in 1/4096 make the four weights. */
	const int Y = r->wi[jy], Yd = FIX_ONE - Y;
	for (int j = 0; j < r->s; j++) {
		const int X = r->wi[j];
		int *cj = c + 4 * j;
		cj[3] = (Y * X) >> FIX_SHIFT;
		cj[1] = (Yd * X) >> FIX_SHIFT;
		cj[2] = Y - cj[3];
		cj[0] = Yd - cj[1];
	}
}

static void linear_float_weights(const Resample *r, int jy, double *c) {
	const double Y = r->wd[jy], Yd = 1.0 - Y;
	for (int j = 0; j < r->s; j++) {
		const double X = r->wd[j];
		double *cj = c + 4 * j;
		cj[3] = Y * X;
		cj[1] = Yd * X;
		cj[2] = Y - cj[3];
		cj[0] = Yd - cj[1];
	}
}

#define LINEAR_PASS(NAME, T, C, ROUND) \
	static __attribute__((noinline)) void NAME(T *q, const T *a, const T *b, const int *taps, const C *c, \
		int s, int left, int ow, int bands) { \
		for (int x = 0; x < ow; x++) { \
			const C *w = c + 4 * ((left + x) % s); \
			const int t1 = taps[4 * x + 1], t2 = taps[4 * x + 2]; \
			for (int k = 0; k < bands; k++) \
				q[x * bands + k] = ROUND(w[0] * a[t1 + k] + w[1] * a[t2 + k] + w[2] * b[t1 + k] + \
					w[3] * b[t2 + k]); \
		} \
	}
#define ROUND_FIX(v) (((v) + FIX_HALF) >> FIX_SHIFT)
#define ROUND_FLOAT(v) ((float) (v))
LINEAR_PASS(linear_uchar, unsigned char, int, ROUND_FIX)
LINEAR_PASS(linear_ushort, unsigned short, int, ROUND_FIX)
LINEAR_PASS(linear_float, float, double, ROUND_FLOAT)

/* Reading another format's pixels would be garbage: refuse, never assume. */
static int unsupported(VipsBandFormat fmt) {
	vips_error("upsize", "the resampler does not handle band format %d", (int) fmt);
	return -1;
}

static size_t row_sizeof(VipsBandFormat fmt) {
	switch (fmt) {
	case VIPS_FORMAT_UCHAR: return sizeof(int16_t);
	case VIPS_FORMAT_USHORT: return sizeof(double);
	default: return sizeof(float);
	}
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

	if (grow((void **) &seq->taps, &seq->taps_cap, sizeof(int) * 4 * ow))
		return -1;
	for (int x = 0; x < ow; x++) {
		int base = tap_base(r, left + x);
		for (int t = 0; t < 4; t++)
			seq->taps[4 * x + t] = (clampi(base - 1 + t, 0, r->in_w - 1) - x0) * bands;
	}

	if (!r->cubic) {
		int ci[4 * 64];
		double cd[4 * 64];
		for (int Y = top; Y < top + o->height; Y++) {
			int base = tap_base(r, Y), jy = Y % r->s;
			const VipsPel *pa = VIPS_REGION_ADDR(seq->ir, x0, clampi(base, 0, r->in_h - 1));
			const VipsPel *pb = VIPS_REGION_ADDR(seq->ir, x0, clampi(base + 1, 0, r->in_h - 1));
			VipsPel *q = VIPS_REGION_ADDR(or, left, Y);
			switch (r->fmt) {
			case VIPS_FORMAT_UCHAR:
				linear_int_weights(r, jy, ci);
				linear_uchar(q, pa, pb, seq->taps, ci, r->s, left, ow, bands);
				break;
			case VIPS_FORMAT_USHORT:
				linear_int_weights(r, jy, ci);
				linear_ushort((unsigned short *) q, (const unsigned short *) pa, (const unsigned short *) pb,
					seq->taps, ci, r->s, left, ow, bands);
				break;
			case VIPS_FORMAT_FLOAT:
				linear_float_weights(r, jy, cd);
				linear_float((float *) q, (const float *) pa, (const float *) pb, seq->taps, cd, r->s, left, ow,
					bands);
				break;
			default: return unsupported(r->fmt);
			}
		}
		return 0;
	}

	/* Slots: every row this tile needs has its own (nslots >= need.height); rows made for other
	 * columns are no use. */
	const size_t row = row_sizeof(r->fmt) * n;
	if (seq->nslots < need.height || seq->left != left || seq->ow != ow) {
		int nslots = VIPS_MAX(seq->nslots, need.height);
		if (grow(&seq->rows, &seq->rows_cap, row * nslots))
			return -1;
		g_free(seq->tags);
		seq->tags = g_new(int, nslots);
		for (int i = 0; i < nslots; i++)
			seq->tags[i] = -1;
		seq->nslots = nslots;
		seq->left = left;
		seq->ow = ow;
	}
	const int nslots = seq->nslots;
	for (int iy = y0; iy <= y1; iy++) {
		if (seq->tags[iy % nslots] == iy)
			continue;
		seq->tags[iy % nslots] = iy;
		const VipsPel *in = VIPS_REGION_ADDR(seq->ir, x0, iy);
		void *out = (char *) seq->rows + row * (iy % nslots);
		switch (r->fmt) {
		case VIPS_FORMAT_UCHAR: hpass_uchar(in, out, seq->taps, r->wi, r->s, left, ow, bands); break;
		case VIPS_FORMAT_USHORT: hpass_ushort((const unsigned short *) in, out, seq->taps, r->wd, r->s, left, ow, bands); break;
		case VIPS_FORMAT_FLOAT: hpass_float((const float *) in, out, seq->taps, r->wd, r->s, left, ow, bands); break;
		default: return unsupported(r->fmt);
		}
	}

	for (int Y = top; Y < top + o->height; Y++) {
		int base = tap_base(r, Y), j = Y % r->s;
		const char *r0 = (const char *) seq->rows + row * (clampi(base - 1, 0, r->in_h - 1) % nslots);
		const char *r1 = (const char *) seq->rows + row * (clampi(base, 0, r->in_h - 1) % nslots);
		const char *r2 = (const char *) seq->rows + row * (clampi(base + 1, 0, r->in_h - 1) % nslots);
		const char *r3 = (const char *) seq->rows + row * (clampi(base + 2, 0, r->in_h - 1) % nslots);
		VipsPel *q = VIPS_REGION_ADDR(or, left, Y);
		switch (r->fmt) {
		case VIPS_FORMAT_UCHAR:
			vpass_uchar(q, r->wi + 4 * j, (const int16_t *) r0, (const int16_t *) r1, (const int16_t *) r2,
				(const int16_t *) r3, n);
			break;
		case VIPS_FORMAT_USHORT:
			vpass_ushort((unsigned short *) q, r->wd + 4 * j, (const double *) r0, (const double *) r1,
				(const double *) r2, (const double *) r3, n);
			break;
		case VIPS_FORMAT_FLOAT:
			vpass_float((float *) q, r->wd + 4 * j, (const float *) r0, (const float *) r1, (const float *) r2,
				(const float *) r3, n);
			break;
		default: return unsupported(r->fmt);
		}
	}
	return 0;
}

int up_resample_supported(VipsCoding coding, VipsBandFormat fmt) {
	return coding == VIPS_CODING_NONE &&
		(fmt == VIPS_FORMAT_UCHAR || fmt == VIPS_FORMAT_USHORT || fmt == VIPS_FORMAT_FLOAT);
}

int up_resample_exact(VipsCoding coding, VipsBandFormat fmt, int s) {
	return up_resample_supported(coding, fmt) && s >= 1 && s <= 64 && (s & (s - 1)) == 0;
}

int up_resample(VipsObject *owner, VipsImage *in, VipsImage **out, int s, int cubic) {
	if (!up_resample_supported(in->Coding, in->BandFmt))
		return unsupported(in->BandFmt);
	if (s < 1 || s > 64) {
		vips_error("upsize", "the resampler does not enlarge by %d", s);
		return -1;
	}
	if ((gint64) in->Xsize * s > VIPS_MAX_COORD || (gint64) in->Ysize * s > VIPS_MAX_COORD) {
		vips_error("upsize", "output of %dx%d at %dx is too large", in->Xsize, in->Ysize, s);
		return -1;
	}
	VipsImage **t = (VipsImage **) vips_object_local_array(owner, 4);
	VipsBandFormat fmt = in->BandFmt;
	int alpha = vips_image_hasalpha(in);

	/* Interpolate colour weighted by alpha, as vips_affine does, so transparent pixels do not bleed:
	 * premultiplied, in float. */
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
	r->cubic = cubic;
	r->base = g_new(int, s);
	r->wd = g_new(double, 4 * s);
	r->wi = g_new(int16_t, 4 * s);
	/* Output pixel X samples input position (X + 0.5) / s - 0.5, as upsample() in upsize.c. vips_affine
	 * reads it in an image padded by the stencil and a pixel more: 2 px on the top and left for the
	 * bicubic, 1 for the bilinear, so positions are positive there and their integer part is a
	 * truncation. */
	for (int j = 0; j < s; j++) {
		double pos = (j + 0.5) / s - 0.5;
		if (cubic) {
			double x = pos + 2;
			int ix = (int) x;
			/* The fraction to the nearest 1/64 (halves up): 0 .. 64, 64 being the next pixel. */
			int frac = (((int) (x * 2 * POS_STEPS) & (2 * POS_STEPS - 1)) + 1) >> 1;
			r->base[j] = ix - 2;
			catmull_rom((double) frac / POS_STEPS, r->wd + 4 * j);
			for (int k = 0; k < 4; k++)
				r->wi[4 * j + k] = (int16_t) (r->wd[4 * j + k] * FIX_ONE);
		} else {
			double x = pos + 1;
			int ix = (int) x;
			r->base[j] = ix - 1;
			r->wd[j] = x - ix;
			r->wi[j] = (int16_t) ((x - ix) * FIX_ONE);
		}
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
