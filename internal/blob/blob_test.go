package blob

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestPutOpenDelete(t *testing.T) {
	s, err := NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	data := bytes.Repeat([]byte("pixels"), 100000)
	info, err := s.Put(ctx, "img-1", func(w io.Writer) error { _, err := w.Write(data); return err })
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if info.Size != int64(len(data)) || info.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("info %+v", info)
	}
	got, err := ReadAll(ctx, s, "img-1")
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
	if err := s.Delete(ctx, "img-1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "img-1"); err != nil {
		t.Fatalf("deleting twice: %v", err)
	}
	if _, err := s.Open(ctx, "img-1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("open after delete: %v", err)
	}
}

// A write that fails midway leaves nothing visible and no temporary file.
func TestFailedPutLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	s, _ := NewFS(dir)
	ctx := context.Background()
	_, err := s.Put(ctx, "img-2", func(w io.Writer) error {
		w.Write(make([]byte, 1<<20))
		return errors.New("encoder failed")
	})
	if err == nil {
		t.Fatal("Put reported success")
	}
	if _, err := s.Open(ctx, "img-2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("half-written object visible: %v", err)
	}
	if tmp, _ := os.ReadDir(filepath.Join(dir, ".tmp")); len(tmp) != 0 {
		t.Fatalf("temporary files left: %v", tmp)
	}
	// A canceled context is a failure too.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Put(cctx, "img-3", func(w io.Writer) error { _, err := w.Write([]byte("x")); return err }); err == nil {
		t.Fatal("Put under a canceled context succeeded")
	}
	if _, err := s.Open(ctx, "img-3"); !errors.Is(err, ErrNotFound) {
		t.Fatal("object written under a canceled context is visible")
	}
}

// Readers see either the old object or the new one, never a mix, while it is rewritten.
func TestReadersNeverSeeAPartialObject(t *testing.T) {
	s, _ := NewFS(t.TempDir())
	ctx := context.Background()
	a, b := bytes.Repeat([]byte{'a'}, 1<<20), bytes.Repeat([]byte{'b'}, 1<<20)
	put := func(d []byte) {
		if _, err := s.Put(ctx, "img-4", func(w io.Writer) error {
			for i := 0; i < len(d); i += 4096 {
				if _, err := w.Write(d[i : i+4096]); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
	}
	put(a)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 20; i++ {
			put(b)
			put(a)
		}
	}()
	for i := 0; i < 200; i++ {
		got, err := ReadAll(ctx, s, "img-4")
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, a) && !bytes.Equal(got, b) {
			t.Fatalf("read %d bytes that are neither version", len(got))
		}
	}
	wg.Wait()
}

func TestKeysCannotEscapeTheDirectory(t *testing.T) {
	s, _ := NewFS(t.TempDir())
	for _, k := range []string{"../etc/passwd", "a/b", "", ".hidden", "UPPER"} {
		if _, err := s.Put(context.Background(), k, func(io.Writer) error { return nil }); err == nil {
			t.Errorf("key %q accepted", k)
		}
	}
}
