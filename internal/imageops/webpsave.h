#ifndef UPSIZE_WEBPSAVE_H
#define UPSIZE_WEBPSAVE_H

#include <vips/vips.h>

/* up_webp_start_encoder starts the process that forks WebP encoders (see webpsave.c). Call it once,
 * while no other thread is inside libwebp (up_init does). Returns 0, or -1 and errno when the process
 * could not be started: WebP results are then encoded in the calling process. */
int up_webp_start_encoder(void);

/* up_webpsave writes in to target as libvips 8.14's webpsave_target does with Q q, effort effort and
 * strip strip, byte for byte, and stops within milliseconds once *kill is set, encode included.
 * in_process encodes in the calling process even when the encoder process runs (tests compare the
 * two). Returns 0, or -1 with libvips' error buffer set. */
int up_webpsave(VipsImage *in, VipsTarget *target, int q, int effort, int strip, volatile int *kill, int in_process);

#endif
