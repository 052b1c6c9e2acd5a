package imageops

import "bytes"

// A walk over a JPEG's markers, without decoding anything: how many scans the decoder would run, where
// each starts, and the frame's layout. Probe refuses files with absurd scan counts from it, Info's
// decode memory estimate comes from it, and the killable source (upsize.c) stops every read at the next
// scan so that a cancel is noticed between scans.
//
// The walk follows libjpeg's own marker reader (jdmarker.c) so that it sees at least the scans libjpeg
// would decode, never fewer: garbage between segments is skipped as libjpeg skips it (it only warns),
// segment lengths are honoured as libjpeg honours them, entropy-coded data runs to the first 0xFF that
// is followed by neither 0x00 (stuffing), 0xFF (fill) nor a restart marker. Where libjpeg would stop
// with an error, so does the walk (halted): libjpeg decodes no scan past that point either. Trailing
// bytes after EOI and a missing EOI are tolerated, as libjpeg tolerates them.

// JPEG marker codes (the byte after 0xFF).
const (
	mTEM  = 0x01
	mSOF0 = 0xC0
	mSOF1 = 0xC1
	mSOF2 = 0xC2
	mDHT  = 0xC4
	mJPG  = 0xC8
	mSOF9 = 0xC9
	mSOFA = 0xCA
	mDAC  = 0xCC
	mRST0 = 0xD0
	mRST7 = 0xD7
	mSOI  = 0xD8
	mEOI  = 0xD9
	mSOS  = 0xDA
	mDQT  = 0xDB
	mDNL  = 0xDC
	mDRI  = 0xDD
	mAPP0 = 0xE0
	mAPPF = 0xEF
	mCOM  = 0xFE
)

type jpegComponent struct {
	id   byte
	h, v int // sampling factors, 1-4
}

// jpegLayout is what walkJPEG found.
type jpegLayout struct {
	frame         byte // SOFn code; 0 when no SOF was read
	progressive   bool
	width, height int
	components    []jpegComponent
	// firstScanComponents is how many components the first scan holds: fewer than the frame's (or a
	// progressive frame) means libjpeg buffers every coefficient of the image before any output.
	firstScanComponents int
	// sos holds the offset of every SOS marker (its 0xFF) in the order found: strictly increasing,
	// b[sos[i]] == 0xFF and b[sos[i]+1] == 0xDA.
	sos []int
	// overLimit: more than the walk's scan limit were found; sos holds limit+1 of them.
	overLimit bool
	eoi       bool // the walk ended at an EOI marker
	halted    bool // the walk ended where libjpeg stops with an error
	end       int  // offset where the walk ended
}

// multiScan reports whether libjpeg keeps the whole coefficient buffer in memory.
func (l *jpegLayout) multiScan() bool {
	return l.progressive || l.firstScanComponents < len(l.components)
}

// walkJPEG walks b's markers. It stops after maxScans+1 SOS markers when maxScans > 0 (enough to know
// there are too many). It reads every byte at most a few times, allocates O(scans), and never panics.
func walkJPEG(b []byte, maxScans int) jpegLayout {
	var l jpegLayout
	if len(b) < 2 || b[0] != 0xFF || b[1] != mSOI {
		l.halted = true
		return l
	}
	p := 2
	for {
		m, at, next := nextMarker(b, p)
		if m < 0 { // no EOI: libjpeg stops at the end of the data too
			l.end = len(b)
			return l
		}
		p = next
		switch {
		case m == mEOI:
			l.eoi, l.end = true, next
			return l
		case m == mTEM || (m >= mRST0 && m <= mRST7):
			// Markers without a length: libjpeg reads past them.
		case m == mSOF0 || m == mSOF1 || m == mSOF2 || m == mSOF9 || m == mSOFA:
			seg, ok := segment(b, p)
			if !ok || l.frame != 0 || !l.readSOF(byte(m), seg) {
				return l.halt(at)
			}
			p += 2 + len(seg)
		case m == mSOS:
			if l.frame == 0 {
				return l.halt(at)
			}
			seg, ok := segment(b, p)
			truncated := !ok && p+2 <= len(b) && int(b[p])<<8|int(b[p+1]) > len(b)-p
			if !truncated && (!ok || !l.readSOS(seg)) {
				return l.halt(at)
			}
			// A scan header cut by the end of the data still counts: libjpeg reads on
			// into the fake EOI markers its source supplies at the end, and may take it
			// for a whole header.
			l.sos = append(l.sos, at)
			if maxScans > 0 && len(l.sos) > maxScans {
				l.overLimit, l.end = true, at
				return l
			}
			if truncated {
				l.end = len(b)
				return l
			}
			p = skipEntropy(b, p+2+len(seg))
		case m == mDHT || m == mDQT || m == mDAC || m == mDRI:
			// libjpeg consumes exactly the segment's length or fails.
			seg, ok := segment(b, p)
			if !ok {
				return l.halt(at)
			}
			p += 2 + len(seg)
		case (m >= mAPP0 && m <= mAPPF) || m == mCOM || m == mDNL:
			// libjpeg skips these by their length; a bogus length below 2 skips nothing more.
			if p+2 > len(b) {
				l.end = len(b)
				return l
			}
			n := int(b[p])<<8 | int(b[p+1])
			p += max(n, 2)
			if p > len(b) {
				l.end = len(b)
				return l
			}
		default:
			// A second SOI, an unsupported SOFn (lossless, hierarchical, JPG), or an unknown
			// marker: libjpeg fails there.
			return l.halt(at)
		}
	}
}

func (l *jpegLayout) halt(at int) jpegLayout {
	l.halted, l.end = true, at
	return *l
}

// nextMarker finds the next marker at or after p as libjpeg's next_marker does: it skips bytes up to an
// 0xFF, then fill bytes (0xFF), and discards 0xFF 0x00. It returns the code (-1 at the end of the
// data), the offset of the 0xFF just before it, and the offset after the code.
func nextMarker(b []byte, p int) (code, at, next int) {
	for p < len(b) {
		i := bytes.IndexByte(b[p:], 0xFF)
		if i < 0 {
			return -1, len(b), len(b)
		}
		p += i + 1
		for p < len(b) && b[p] == 0xFF {
			p++
		}
		if p >= len(b) {
			return -1, len(b), len(b)
		}
		if c := b[p]; c != 0 {
			return int(c), p - 1, p + 1
		}
		p++ // 0xFF 0x00 outside a scan: libjpeg discards it
	}
	return -1, len(b), len(b)
}

// skipEntropy returns the offset of the 0xFF that starts the first marker after entropy-coded data
// beginning at p: 0xFF 0x00 is a stuffed data byte, restart markers belong to the scan, and so do
// codes below 0xC0 (inside a scan libjpeg's restart resync scans past them; outside one it fails on
// them, so treating them as data never hides a scan libjpeg would decode).
func skipEntropy(b []byte, p int) int {
	for p < len(b) {
		i := bytes.IndexByte(b[p:], 0xFF)
		if i < 0 {
			return len(b)
		}
		p += i
		q := p + 1
		for q < len(b) && b[q] == 0xFF {
			q++
		}
		if q >= len(b) {
			return len(b)
		}
		c := b[q]
		if c == 0 || c < mSOF0 || (c >= mRST0 && c <= mRST7) {
			p = q + 1
			continue
		}
		return q - 1
	}
	return len(b)
}

// segment returns the payload of the marker segment whose length field starts at p, or false if the
// length is below 2 or runs past the data.
func segment(b []byte, p int) ([]byte, bool) {
	if p+2 > len(b) {
		return nil, false
	}
	n := int(b[p])<<8 | int(b[p+1])
	if n < 2 || p+n > len(b) {
		return nil, false
	}
	return b[p+2 : p+n], true
}

// readSOF records the frame header, with libjpeg's checks (get_sof, initial_setup).
func (l *jpegLayout) readSOF(code byte, s []byte) bool {
	if len(s) < 6 {
		return false
	}
	h, w, n := int(s[1])<<8|int(s[2]), int(s[3])<<8|int(s[4]), int(s[5])
	if h == 0 || w == 0 || n == 0 || n > 10 || len(s) != 6+3*n {
		return false
	}
	comps := make([]jpegComponent, n)
	for i := range comps {
		c := s[6+3*i:]
		comps[i] = jpegComponent{id: c[0], h: int(c[1] >> 4), v: int(c[1] & 15)}
		if comps[i].h < 1 || comps[i].h > 4 || comps[i].v < 1 || comps[i].v > 4 {
			return false
		}
	}
	l.frame, l.progressive = code, code == mSOF2 || code == mSOFA
	l.width, l.height, l.components = w, h, comps
	return true
}

// readSOS checks a scan header as libjpeg's get_sos does and records the first scan's size.
func (l *jpegLayout) readSOS(s []byte) bool {
	if len(s) < 1 {
		return false
	}
	n := int(s[0])
	if n < 1 || n > 4 || len(s) != 4+2*n {
		return false
	}
	for i := 0; i < n; i++ {
		found := false
		for _, c := range l.components {
			found = found || c.id == s[1+2*i]
		}
		if !found {
			return false
		}
	}
	if len(l.sos) == 0 {
		l.firstScanComponents = n
	}
	return true
}

// coefficientBytes is the size of libjpeg's whole-image coefficient buffer (jdcoefct.c): for each
// component, its blocks padded up to whole MCUs, 64 coefficients of 2 bytes each.
func (l *jpegLayout) coefficientBytes() int64 {
	hmax, vmax := 1, 1
	for _, c := range l.components {
		hmax, vmax = max(hmax, c.h), max(vmax, c.v)
	}
	var blocks int64
	for _, c := range l.components {
		bw := ceilDiv(int64(l.width)*int64(c.h), int64(hmax)*8)
		bh := ceilDiv(int64(l.height)*int64(c.v), int64(vmax)*8)
		blocks += roundUp(bw, int64(c.h)) * roundUp(bh, int64(c.v))
	}
	return blocks * 64 * 2
}

func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }
func roundUp(a, b int64) int64 { return ceilDiv(a, b) * b }
