package blob

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

func put(t *testing.T, s *FS, key, data string) {
	t.Helper()
	if _, err := s.Put(context.Background(), key, func(w io.Writer) error { _, err := io.WriteString(w, data); return err }); err != nil {
		t.Fatal(err)
	}
}

func walk(t *testing.T, f func(context.Context, func(Entry) error) error) map[string]Entry {
	t.Helper()
	got := map[string]Entry{}
	if err := f(context.Background(), func(e Entry) error {
		name := e.Key
		if e.Temp != "" {
			name = e.Temp
		}
		if _, dup := got[name]; dup {
			t.Errorf("%s seen twice", name)
		}
		got[name] = e
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

// Walk sees every object with its size and time, and nothing that Open would not find.
func TestWalkListsObjectsOnly(t *testing.T) {
	dir := t.TempDir()
	s, _ := NewFS(dir)
	want := map[string]int64{}
	for i := range 40 {
		key := fmt.Sprintf("img-%d", i)
		put(t, s, key, strings.Repeat("x", i))
		want[key] = int64(i)
	}
	// Not objects: a temporary, a stray file at the top, one in the wrong directory, a subdirectory.
	os.WriteFile(filepath.Join(dir, tmpDir, "img-99.123"), []byte("partial"), 0o640)
	os.WriteFile(filepath.Join(dir, "stray"), nil, 0o640)
	p, _ := s.path("img-1")
	wrong := "00"
	if filepath.Base(filepath.Dir(p)) == wrong {
		wrong = "01"
	}
	os.MkdirAll(filepath.Join(dir, wrong, "sub"), 0o750)
	os.WriteFile(filepath.Join(dir, wrong, "img-1"), nil, 0o640)

	got := walk(t, s.Walk)
	if len(got) != len(want) {
		t.Fatalf("walked %d objects, want %d: %v", len(got), len(want), got)
	}
	for k, size := range want {
		e, ok := got[k]
		if !ok || e.Size != size || e.Temp != "" || time.Since(e.ModTime) > time.Minute {
			t.Errorf("%s: %+v (present %v)", k, e, ok)
		}
	}
}

// WalkTemps sees each temporary file once (more than a directory chunk of them), with the key it was for.
func TestWalkTempsListsUnfinishedWrites(t *testing.T) {
	dir := t.TempDir()
	s, _ := NewFS(dir)
	put(t, s, "img-1", "done") // committed: not a temporary
	n := readDirChunk + 44
	for i := range n {
		f, err := os.CreateTemp(filepath.Join(dir, tmpDir), fmt.Sprintf("img-%d.*", i))
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("part")
		f.Close()
	}
	got := walk(t, s.WalkTemps)
	if len(got) != n {
		t.Fatalf("walked %d temporaries, want %d", len(got), n)
	}
	var keys []string
	for name, e := range got {
		if !strings.HasPrefix(name, e.Key+".") || e.Size != 4 {
			t.Errorf("%s: %+v", name, e)
		}
		keys = append(keys, e.Key)
	}
	sort.Strings(keys)
	if keys[0] != "img-0" {
		t.Errorf("keys start at %s", keys[0])
	}
}

// Only what was last written before the cutoff is removed: a rewrite after it survives.
func TestDeleteIfOlderKeepsRecentWrites(t *testing.T) {
	dir := t.TempDir()
	s, _ := NewFS(dir)
	ctx := context.Background()
	put(t, s, "img-1", "old")
	put(t, s, "img-2", "new")
	p1, _ := s.path("img-1")
	old := time.Now().Add(-2 * time.Hour)
	os.Chtimes(p1, old, old)
	cutoff := time.Now().Add(-time.Hour)

	if ok, err := s.DeleteIfOlder(ctx, "img-2", cutoff); ok || err != nil {
		t.Fatalf("recent object deleted: %v %v", ok, err)
	}
	if ok, err := s.DeleteIfOlder(ctx, "img-1", cutoff); !ok || err != nil {
		t.Fatalf("old object not deleted: %v %v", ok, err)
	}
	if _, err := os.Stat(p1); !os.IsNotExist(err) {
		t.Fatal("old object still there")
	}
	if ok, err := s.DeleteIfOlder(ctx, "img-1", cutoff); ok || err != nil {
		t.Fatalf("deleting a missing object: %v %v", ok, err)
	}
	if _, err := s.DeleteIfOlder(ctx, "../x", cutoff); err == nil {
		t.Fatal("invalid key accepted")
	}

	tmp := filepath.Join(dir, tmpDir)
	os.WriteFile(filepath.Join(tmp, "img-3.1"), []byte("x"), 0o640)
	os.WriteFile(filepath.Join(tmp, "img-4.1"), []byte("x"), 0o640)
	os.Chtimes(filepath.Join(tmp, "img-3.1"), old, old)
	if ok, err := s.RemoveTemp(ctx, Entry{Temp: "img-4.1"}, cutoff); ok || err != nil {
		t.Fatalf("recent temporary removed: %v %v", ok, err)
	}
	if ok, err := s.RemoveTemp(ctx, Entry{Temp: "img-3.1"}, cutoff); !ok || err != nil {
		t.Fatalf("old temporary not removed: %v %v", ok, err)
	}
	for _, bad := range []string{"", "../img-1", "a/b", ".."} {
		if _, err := s.RemoveTemp(ctx, Entry{Temp: bad}, cutoff); err == nil {
			t.Errorf("temporary %q accepted", bad)
		}
	}
	if left := walk(t, s.WalkTemps); len(left) != 1 {
		t.Fatalf("temporaries left: %v", left)
	}
}
