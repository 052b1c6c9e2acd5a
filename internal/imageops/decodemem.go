package imageops

import "encoding/binary"

// Peak decode memory, estimated from the structure of the file (Info.DecodeBytes). The figures are
// what libvips 8.14 with libjpeg-turbo and libpng, and our WebP loader with libwebp, hold, measured as
// the growth of resident memory during a Validate (TestDecodeBytesMatchesRSS checks them at 7000x7000).
const (
	// decodeBase covers what any decode holds whatever the size: libvips' pipeline, the decoders'
	// state.
	decodeBase = 2 << 20
	// stripRows is how many rows of the whole decoded width (times bands and bytes per sample) a
	// streaming decode holds: libvips' sequential tile cache, region buffers between stages, the
	// decoder's own row buffers. Measured: 550 rows with one libvips thread (JPEG and PNG alike,
	// 1,000 to 16,000 px wide), 600 with four.
	stripRows = 640
)

// decodeBytes estimates the peak decode memory of b, whose header libvips read as w x h (stored,
// not displayed) with bands bands.
func decodeBytes(f Format, b []byte, l *jpegLayout, w, h, bands int) int64 {
	pixels := int64(w) * int64(h)
	strip := func(bytesPerPixel int64) int64 { return int64(w) * stripRows * bytesPerPixel }
	switch f {
	case JPEG:
		if l.frame == 0 || len(l.sos) == 0 {
			// libjpeg read a header the walk did not find (it should not happen): assume
			// the coefficient buffer of an unsubsampled image with bands components.
			return decodeBase + pixels*int64(bands)*2 + strip(int64(bands))
		}
		n := int64(len(l.components))
		if l.multiScan() {
			// libjpeg keeps every coefficient (jdcoefct.c, whole_image).
			return decodeBase + l.coefficientBytes() + strip(n)
		}
		return decodeBase + strip(n)
	case PNG:
		depth, interlaced, ok := readIHDR(b)
		if !ok {
			depth, interlaced = 16, true // libpng read a header we did not: assume the worst
		}
		bpp := int64(bands)
		if depth == 16 {
			bpp *= 2
		}
		if interlaced {
			// vipspng.c decodes an Adam7 image whole into memory, then serves it.
			return decodeBase + pixels*bpp + strip(bpp)
		}
		return decodeBase + strip(bpp)
	case WebP:
		// Our loader (upsize.c, load_webp) decodes the frame straight into the image, w x h x bands
		// (an animation's canvas: frame 1 is no larger), plus what libwebp holds beside it for the
		// frame's codec: see webpDecoderBytesPerPixel.
		return decodeBase + pixels*int64(bands+webpDecoderBytesPerPixel(b)) + strip(int64(bands))
	}
	return decodeBase + pixels*4
}

// readIHDR reads bit depth and interlace method from the IHDR chunk, which the PNG specification puts
// first, at a fixed place: 8 bytes of signature, then length (13), "IHDR", width, height, bit depth,
// colour type, compression, filter, interlace.
func readIHDR(b []byte) (depth int, interlaced, ok bool) {
	if len(b) < 29 || binary.BigEndian.Uint32(b[8:12]) != 13 || string(b[12:16]) != "IHDR" {
		return 0, false, false
	}
	return int(b[24]), b[28] == 1, true
}

// webpDecoderBytesPerPixel is what libwebp holds, a pixel of the frame, while it decodes the first
// frame of b (the one an animation loads as): a lossless (VP8L) frame is decoded whole into a 32-bit
// ARGB buffer first (less when it packs a palette); a lossy (VP8) frame needs a few rows, but its alpha
// (an ALPH chunk) is decoded whole: a plane of a byte a pixel plus the lossless decoder's buffer, a
// byte a pixel in the common case, four otherwise. Measured at 7000x7000 and 4096x3072: lossy RGB 3.0
// bytes a pixel in all, lossless noise RGB 7.0, lossy RGBA 5.1, lossless noise RGBA 8.0. A file this
// walk cannot read gets the most.
func webpDecoderBytesPerPixel(b []byte) int {
	const lossless, alpha = 4, 1 + 4
	hasAlpha := false
	// Chunks: 4-byte tag, 4-byte little-endian size, payload padded to an even size. An ANMF
	// chunk's payload is 16 bytes of frame header, then the frame's own chunks.
	for p, end := 12, len(b); p+8 <= end; {
		tag := string(b[p : p+4])
		n := int64(binary.LittleEndian.Uint32(b[p+4 : p+8]))
		switch tag {
		case "VP8L":
			return lossless
		case "VP8 ":
			if hasAlpha {
				return alpha
			}
			return 0
		case "ALPH":
			hasAlpha = true
		case "ANMF":
			if n < 16 || int64(p)+8+n > int64(end) {
				return alpha
			}
			p, end = p+8+16, p+8+int(n) // the first frame's chunks, and only those
			continue
		}
		next := int64(p) + 8 + n + n&1
		if next > int64(end) {
			break
		}
		p = int(next)
	}
	return alpha
}
