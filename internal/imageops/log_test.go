package imageops

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// syncBuffer is a bytes.Buffer safe for the concurrent writes of libvips' threads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func slogJSON(w io.Writer, requestID string) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, nil)).With("request_id", requestID)
}

// libvipsLines returns the request_id of every libvips line in a JSON log.
func libvipsLines(t *testing.T, log string) []string {
	t.Helper()
	var ids []string
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		if line == "" {
			continue
		}
		var rec struct {
			Msg       string `json:"msg"`
			RequestID string `json:"request_id"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if rec.Msg == "libvips" {
			ids = append(ids, rec.RequestID)
		}
	}
	return ids
}

// libvips' warnings about an input go to the logger of the call that read it, though libvips emits
// them from its own worker threads: two damaged JPEGs upsized at the same time, each with its own
// logger, each log gets its own call's warnings and nothing of the other's, and the global logger
// gets none.
func TestLibvipsMessagesCarryTheCallsLogger(t *testing.T) {
	var global syncBuffer
	SetLogger(slogJSON(&global, "global"))
	defer SetLogger(nil)
	j := encJPEG(t, noise(512, 512, 3), 90)
	damaged := j[:len(j)/2]
	for round := 0; round < 5; round++ {
		logs := map[string]*syncBuffer{"a": {}, "b": {}}
		var wg sync.WaitGroup
		for id, buf := range logs {
			wg.Add(2)
			go func() {
				defer wg.Done()
				_, err := Upsize(context.Background(), damaged, io.Discard, Params{Scale: 2, Kernel: "lanczos3", Encoding: DefaultEncoding, Log: slogJSON(buf, id)})
				if !errors.Is(err, ErrInvalidImage) {
					t.Errorf("Upsize: %v, want ErrInvalidImage", err)
				}
			}()
			go func() {
				defer wg.Done()
				if err := Validate(context.Background(), damaged, slogJSON(buf, id)); !errors.Is(err, ErrInvalidImage) {
					t.Errorf("Validate: %v, want ErrInvalidImage", err)
				}
			}()
		}
		wg.Wait()
		for id, buf := range logs {
			got := libvipsLines(t, buf.String())
			if len(got) == 0 {
				t.Fatalf("round %d: no libvips line in %s's log", round, id)
			}
			for _, g := range got {
				if g != id {
					t.Fatalf("round %d: %s's log has a line of %s:\n%s", round, id, g, buf.String())
				}
			}
		}
	}
	if got := libvipsLines(t, global.String()); len(got) != 0 {
		t.Fatalf("the global logger got lines of the calls: %s", global.String())
	}
}
