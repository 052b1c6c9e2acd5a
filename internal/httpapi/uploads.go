package httpapi

import (
	"context"
	"errors"
	"io"
	"syscall"
	"time"

	"golang.org/x/sync/semaphore"
)

// gate bounds the memory that uploads can make the API hold, whatever clients send: the upload bodies
// held at once (UPLOAD_MEMORY, each counted at its declared length) and the estimated decode memory of
// the validations running at once (VALIDATE_MEMORY, from the image's structure). A request that cannot
// get its share within wait answers 503 with Retry-After instead of queueing without bound.
type gate struct {
	bodies    *semaphore.Weighted
	bodyMax   int64
	decodes   *semaphore.Weighted
	decodeMax int64
	wait      time.Duration
}

// defaultGateWait is how long an upload waits for memory before it is told to come back.
const defaultGateWait = 5 * time.Second

func newGate(l Limits) *gate {
	g := &gate{
		bodies: semaphore.NewWeighted(l.UploadMemory), bodyMax: l.UploadMemory,
		decodes: semaphore.NewWeighted(l.ValidateMemory), decodeMax: l.ValidateMemory,
		wait: l.GateWait,
	}
	if g.wait <= 0 {
		g.wait = defaultGateWait
	}
	return g
}

// acquire takes n of s (at most limit: a bigger share runs alone) within the gate's wait, and returns
// the release function.
func (g *gate) acquire(ctx context.Context, s *semaphore.Weighted, n, limit int64) (func(), error) {
	n = min(max(n, 1), limit)
	ctx, cancel := context.WithTimeout(ctx, g.wait)
	defer cancel()
	if err := s.Acquire(ctx, n); err != nil {
		return nil, err
	}
	return func() { s.Release(n) }, nil
}

// pageBuffer holds an upload's file outside the Go heap, in anonymous memory mapped for it: pages cost
// memory only once bytes arrive in them, a chunked upload can be given the largest size allowed without
// paying for it, and the memory goes back to the system when the request ends instead of when the
// garbage collector next runs (which would let the heap grow to twice the bodies in flight).
type pageBuffer struct {
	mem []byte
	n   int
}

var errBufferFull = errors.New("upload larger than its buffer")

func newPageBuffer(size int64) (*pageBuffer, error) {
	m, err := syscall.Mmap(-1, 0, int(max(size, 1)), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return nil, err
	}
	return &pageBuffer{mem: m}, nil
}

// ReadFrom fills the buffer from r until EOF; more bytes than it holds is errBufferFull.
func (p *pageBuffer) ReadFrom(r io.Reader) (int64, error) {
	start := p.n
	for {
		if p.n == len(p.mem) {
			var one [1]byte
			if n, _ := io.ReadFull(r, one[:]); n > 0 {
				return int64(p.n - start), errBufferFull
			}
			return int64(p.n - start), nil
		}
		n, err := r.Read(p.mem[p.n:])
		p.n += n
		if errors.Is(err, io.EOF) {
			return int64(p.n - start), nil
		}
		if err != nil {
			return int64(p.n - start), err
		}
	}
}

// Bytes is the content; it must not be used after Free.
func (p *pageBuffer) Bytes() []byte { return p.mem[:p.n] }

// Free returns the memory. Nothing may hold on to Bytes after it.
func (p *pageBuffer) Free() {
	if p.mem != nil {
		_ = syscall.Munmap(p.mem)
		p.mem, p.n = nil, 0
	}
}
