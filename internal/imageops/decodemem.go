package imageops

import "encoding/binary"

// Peak decode memory, estimated from the structure of the file (Info.DecodeBytes). The figures are
// what libvips 8.14 with libjpeg-turbo, libpng and libwebp hold, measured as the growth of resident
// memory during a Validate (TestDecodeBytesMatchesRSS checks them at 7000x7000).
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
		// libvips decodes the frame into an RGBA image while libwebp holds its own buffer (a
		// lossless frame: ARGB of the whole frame), then composes it into an RGBA canvas:
		// 8 bytes a pixel at the peak, measured for lossy and lossless alike. An animation
		// keeps canvas, frame and decoder alive at once.
		if webpAnimated(b) {
			return decodeBase + pixels*12 + strip(4)
		}
		return decodeBase + pixels*8 + strip(4)
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

// webpAnimated reports whether an extended-format WebP (VP8X) has an ANIM chunk. Its flags byte says
// so too, but the chunks are what libwebp's demuxer acts on.
func webpAnimated(b []byte) bool {
	if len(b) < 16 || string(b[12:16]) != "VP8X" {
		return false
	}
	// Chunks: 4-byte tag, 4-byte little-endian size, payload padded to an even size.
	for p := 12; p+8 <= len(b); {
		tag := string(b[p : p+4])
		switch tag {
		case "ANIM", "ANMF":
			return true
		case "VP8 ", "VP8L":
			return false
		}
		n := int64(binary.LittleEndian.Uint32(b[p+4 : p+8]))
		next := int64(p) + 8 + n + n&1
		if next > int64(len(b)) {
			break
		}
		p = int(next)
	}
	return false
}
