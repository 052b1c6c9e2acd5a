package blob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Entry describes a stored object or an unfinished write (a temporary).
type Entry struct {
	Key     string    // the object's key; a temporary's: the key it was being written under
	Temp    string    // temporaries only: the store's name for the write (FS: file name; S3: upload id)
	Size    int64     // bytes (a temporary: written so far, where the store knows it)
	ModTime time.Time // last written (an S3 temporary: when its upload began)
}

// Walker is what a garbage collector needs of a store: listing every object and every write that never
// finished, and removing only what has not been written since a cutoff, so that a write racing the
// collector survives it. FS implements it (temporaries: files in .tmp), and so does Bucket (objects of
// the bucket, temporaries: its unfinished multipart uploads).
type Walker interface {
	// Walk calls fn for each object, in no set order, until fn returns an error, which Walk returns.
	// Objects written or deleted during the walk may or may not be seen; the others are seen once. Memory
	// does not grow with the number of objects; fn may delete objects.
	Walk(ctx context.Context, fn func(Entry) error) error
	// WalkTemps is Walk for unfinished writes: what a crash in the middle of Put leaves behind.
	WalkTemps(ctx context.Context, fn func(Entry) error) error
	// DeleteIfOlder deletes the object unless it was written after cutoff (or is gone), and reports
	// whether it deleted it.
	DeleteIfOlder(ctx context.Context, key string, cutoff time.Time) (bool, error)
	// RemoveTemp removes an unfinished write found by WalkTemps unless it was written after cutoff.
	RemoveTemp(ctx context.Context, t Entry, cutoff time.Time) (bool, error)
}

var _ Walker = (*FS)(nil)

// readDirChunk is how many directory entries are held at once.
const readDirChunk = 256

// Walk lists the 256 object directories, a chunk of names at a time.
func (s *FS) Walk(ctx context.Context, fn func(Entry) error) error {
	for i := range 256 {
		dir := filepath.Join(s.Dir, fmt.Sprintf("%02x", i))
		err := walkDir(ctx, dir, func(fi fs.FileInfo) error {
			// Only what Open would find is an object: a stray file, or one in the wrong directory, is not.
			if p, err := s.path(fi.Name()); err != nil || p != filepath.Join(dir, fi.Name()) {
				return nil
			}
			return fn(Entry{Key: fi.Name(), Size: fi.Size(), ModTime: fi.ModTime()})
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// WalkTemps lists the temporary files. Their names are the key, a dot and a random suffix (Put).
func (s *FS) WalkTemps(ctx context.Context, fn func(Entry) error) error {
	return walkDir(ctx, filepath.Join(s.Dir, tmpDir), func(fi fs.FileInfo) error {
		key := fi.Name()
		if i := strings.LastIndexByte(key, '.'); i > 0 {
			key = key[:i]
		}
		return fn(Entry{Key: key, Temp: fi.Name(), Size: fi.Size(), ModTime: fi.ModTime()})
	})
}

func (s *FS) DeleteIfOlder(_ context.Context, key string, cutoff time.Time) (bool, error) {
	p, err := s.path(key)
	if err != nil {
		return false, err
	}
	return removeIfOlder(p, cutoff)
}

func (s *FS) RemoveTemp(_ context.Context, t Entry, cutoff time.Time) (bool, error) {
	if t.Temp == "" || t.Temp != filepath.Base(t.Temp) || strings.HasPrefix(t.Temp, ".") {
		return false, fmt.Errorf("blob: invalid temporary %q", t.Temp)
	}
	return removeIfOlder(filepath.Join(s.Dir, tmpDir, t.Temp), cutoff)
}

// removeIfOlder removes the regular file at p unless it was modified after cutoff. The check and the
// removal are two system calls with nothing in between: a file renamed onto p in that instant would be
// lost, which is why callers pass a cutoff far older than any write in progress (package janitor).
func removeIfOlder(p string, cutoff time.Time) (bool, error) {
	fi, err := os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("blob: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.ModTime().After(cutoff) {
		return false, nil
	}
	if err := os.Remove(p); errors.Is(err, os.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("blob: %w", err)
	}
	return true, nil
}

// walkDir calls fn for each regular file of dir, reading readDirChunk names at a time; a missing dir is
// empty. Files removed while it runs are skipped.
func walkDir(ctx context.Context, dir string, fn func(fs.FileInfo) error) error {
	d, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("blob: %w", err)
	}
	defer d.Close()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		entries, rerr := d.ReadDir(readDirChunk)
		for _, e := range entries {
			if !e.Type().IsRegular() {
				continue
			}
			fi, err := e.Info()
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("blob: %w", err)
			}
			if err := fn(fi); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return fmt.Errorf("blob: %w", rerr)
		}
	}
}
