#ifndef UPSIZE_RESAMPLE_H
#define UPSIZE_RESAMPLE_H

#include <vips/vips.h>

/* up_resample_supported reports whether up_resample handles in's pixel format. */
int up_resample_supported(const VipsImage *in);

/* up_resample enlarges in by the integer factor s with centre-aligned sampling and copied edges, using
 * Catmull-Rom weights (cubic != 0) or linear ones. Intermediate images are owned by owner; *out holds a
 * reference the caller must drop. Returns 0 or -1 with libvips' error buffer set. */
int up_resample(VipsObject *owner, VipsImage *in, VipsImage **out, int s, int cubic);

#endif
