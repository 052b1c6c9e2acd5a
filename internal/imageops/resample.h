#ifndef UPSIZE_RESAMPLE_H
#define UPSIZE_RESAMPLE_H

#include <vips/vips.h>

/* up_resample_supported reports whether up_resample handles a pixel format. */
int up_resample_supported(VipsCoding coding, VipsBandFormat fmt);

/* up_resample_exact reports whether up_resample's result for that pixel format at factor s is
 * vips_affine's, bit for bit (the call upsize.c makes: centre-aligned, copied edges): a format it handles
 * and a power-of-two factor, whose sample positions vips_affine holds exactly. */
int up_resample_exact(VipsCoding coding, VipsBandFormat fmt, int s);

/* up_resample enlarges in by the integer factor s (1-64) with centre-aligned sampling and copied edges,
 * with the arithmetic of libvips' bicubic (cubic != 0) or bilinear interpolator for in's format.
 * Intermediate images are owned by owner; *out holds a reference the caller must drop. Returns 0 or -1
 * with libvips' error buffer set. */
int up_resample(VipsObject *owner, VipsImage *in, VipsImage **out, int s, int cubic);

#endif
