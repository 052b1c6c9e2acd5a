package blob

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

// ErrNotFound: no object has that key.
var ErrNotFound = errors.New("blob: not found")

// Info describes a stored object.
type Info struct {
	Size   int64
	SHA256 string // hex
}

// Object is an open stored object.
type Object interface {
	io.ReadSeekCloser
	Size() int64
	ModTime() time.Time
}

// Store keeps objects by key.
type Store interface {
	// Put stores what write writes, atomically: readers see the whole object or nothing, also after a
	// crash in the middle. It returns the size and SHA-256 of what was written.
	Put(ctx context.Context, key string, write func(io.Writer) error) (Info, error)
	Open(ctx context.Context, key string) (Object, error)
	// Delete removes the object; deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
}

var keyPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,127}$`)

// FS stores each object as a file under Dir, in one of 256 subdirectories.
type FS struct {
	Dir string
}

// tmpDir holds writes in progress (and what a crash left of them), beside the object directories so that
// the rename that commits a write stays within one filesystem.
const tmpDir = ".tmp"

// NewFS creates dir if needed. Temporary files left by a crash are the janitor's (package janitor).
func NewFS(dir string) (*FS, error) {
	if err := os.MkdirAll(filepath.Join(dir, tmpDir), 0o750); err != nil {
		return nil, fmt.Errorf("blob: %w", err)
	}
	return &FS{Dir: dir}, nil
}

func (s *FS) path(key string) (string, error) {
	if !keyPattern.MatchString(key) {
		return "", fmt.Errorf("blob: invalid key %q", key)
	}
	h := fnv.New32a()
	h.Write([]byte(key))
	return filepath.Join(s.Dir, fmt.Sprintf("%02x", h.Sum32()&0xff), key), nil
}

func (s *FS) Put(ctx context.Context, key string, write func(io.Writer) error) (Info, error) {
	final, err := s.path(key)
	if err != nil {
		return Info{}, err
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o750); err != nil {
		return Info{}, fmt.Errorf("blob: %w", err)
	}
	f, err := os.CreateTemp(filepath.Join(s.Dir, tmpDir), key+".*")
	if err != nil {
		return Info{}, fmt.Errorf("blob: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	sum := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(f, sum), 256<<10)
	cw := &countWriter{w: bw}
	if err := write(cw); err != nil {
		return Info{}, err
	}
	if err := bw.Flush(); err != nil {
		return Info{}, fmt.Errorf("blob: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	// fsync before rename: after a crash the name points at complete bytes or at nothing.
	if err := f.Sync(); err != nil {
		return Info{}, fmt.Errorf("blob: %w", err)
	}
	if err := f.Close(); err != nil {
		return Info{}, fmt.Errorf("blob: %w", err)
	}
	if err := os.Rename(f.Name(), final); err != nil {
		return Info{}, fmt.Errorf("blob: %w", err)
	}
	committed = true
	syncDir(filepath.Dir(final))
	return Info{Size: cw.n, SHA256: hex.EncodeToString(sum.Sum(nil))}, nil
}

func (s *FS) Open(_ context.Context, key string) (Object, error) {
	p, err := s.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("blob: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("blob: %w", err)
	}
	return &fileObject{File: f, size: fi.Size(), mod: fi.ModTime()}, nil
}

func (s *FS) Delete(_ context.Context, key string) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("blob: %w", err)
	}
	return nil
}

// ReadAll reads a whole object.
func ReadAll(ctx context.Context, s Store, key string) ([]byte, error) {
	o, err := s.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	defer o.Close()
	b := make([]byte, o.Size())
	_, err = io.ReadFull(o, b)
	return b, err
}

type fileObject struct {
	*os.File
	size int64
	mod  time.Time
}

func (o *fileObject) Size() int64        { return o.size }
func (o *fileObject) ModTime() time.Time { return o.mod }

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
