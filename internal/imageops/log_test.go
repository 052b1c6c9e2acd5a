package imageops

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"upsize/internal/testimg"
	"upsize/internal/testlog"
)

func slogJSON(w io.Writer, requestID string) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, nil)).With("request_id", requestID)
}

// libvipsLines returns the request_id of every libvips line in a JSON log.
func libvipsLines(t *testing.T, log string) []string {
	t.Helper()
	var ids []string
	for _, r := range libvipsRecords(t, log) {
		ids = append(ids, r.RequestID)
	}
	return ids
}

type logRecord struct {
	Level     string `json:"level"`
	Msg       string `json:"msg"`
	RequestID string `json:"request_id"`
	Message   string `json:"message"`
}

// libvipsRecords returns every libvips line of a JSON log.
func libvipsRecords(t *testing.T, log string) []logRecord {
	t.Helper()
	var recs []logRecord
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		if line == "" {
			continue
		}
		var rec logRecord
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if rec.Msg == "libvips" {
			recs = append(recs, rec)
		}
	}
	return recs
}

// libvips' warnings about an input go to the logger of the call that read it, though libvips emits
// them from its own worker threads: two damaged JPEGs upsized at the same time, each with its own
// logger, each log gets its own call's warnings and nothing of the other's, and the global logger
// gets none. Rotated too (EXIF orientation 6): such an image is decoded whole before it is rotated,
// which libvips' random-access load did in a thread pool of its own, out of the tag's reach.
func TestLibvipsMessagesCarryTheCallsLogger(t *testing.T) {
	j := encJPEG(t, noise(512, 512, 3), 90)
	for name, damaged := range map[string][]byte{
		"upright": j[:len(j)/2],
		"rotated": withOrientation(j, 6)[:len(j)/2],
	} {
		t.Run(name, func(t *testing.T) { testMessagesCarryTheCallsLogger(t, damaged) })
	}
}

func testMessagesCarryTheCallsLogger(t *testing.T, damaged []byte) {
	var global testlog.Buffer
	SetLogger(slogJSON(&global, "global"))
	defer SetLogger(nil)
	for round := 0; round < 5; round++ {
		logs := map[string]*testlog.Buffer{"a": {}, "b": {}}
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

// What libvips says about a call after it was canceled goes to Debug, not Warn: a canceled task is no
// error. An interlaced PNG canceled during its decode (libpng decodes it whole first) makes libpng
// complain that its reads are refused ("not enough data"), on the call's logger, at Debug; the same
// complaint about a truncated file is still a warning.
func TestLibvipsMessagesOfACanceledCallAreDebug(t *testing.T) {
	var global testlog.Buffer
	SetLogger(slogJSON(&global, "global"))
	defer SetLogger(nil)
	src := testimg.InterlacedPNG(4000, 4000) // about a third of a second to decode
	debugJSON := func(w io.Writer, id string) *slog.Logger {
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})).With("request_id", id)
	}
	for name, run := range map[string]func(ctx context.Context, log *slog.Logger) error{
		"Upsize": func(ctx context.Context, log *slog.Logger) error {
			_, err := Upsize(ctx, src, io.Discard, Params{Scale: 2, Kernel: "lanczos3", Encoding: DefaultEncoding, Log: log})
			return err
		},
		"Validate": func(ctx context.Context, log *slog.Logger) error { return Validate(ctx, src, log) },
	} {
		t.Run(name, func(t *testing.T) {
			// A cancel that lands before libpng reads anything leaves nothing to say: later
			// cancels until one lands in the decode.
			lines := 0
			for _, after := range []time.Duration{20, 40, 80, 160} {
				var buf testlog.Buffer
				ctx, cancel := context.WithCancel(context.Background())
				time.AfterFunc(after*time.Millisecond, cancel)
				if err := run(ctx, debugJSON(&buf, "call")); !errors.Is(err, context.Canceled) {
					t.Fatalf("canceled after %d ms: err = %v, want context.Canceled", after, err)
				}
				recs := libvipsRecords(t, buf.String())
				for _, r := range recs {
					if r.Level != "DEBUG" || r.RequestID != "call" {
						t.Errorf("libvips line %+v of a canceled call: want level DEBUG on the call's logger", r)
					}
				}
				if lines += len(recs); lines > 0 {
					break
				}
			}
			if lines == 0 {
				t.Fatal("no libvips line: no cancel landed in the decode")
			}
		})
	}
	// Not canceled: a truncated interlaced PNG is an error, and libpng's complaint a warning.
	var buf testlog.Buffer
	truncated := testimg.PNG(500, 500, false, true)
	truncated = truncated[:len(truncated)/2]
	if err := Validate(context.Background(), truncated, debugJSON(&buf, "call")); !errors.Is(err, ErrInvalidImage) {
		t.Fatalf("truncated: err = %v, want ErrInvalidImage", err)
	}
	recs := libvipsRecords(t, buf.String())
	if len(recs) == 0 {
		t.Fatal("truncated: no libvips line")
	}
	for _, r := range recs {
		if r.Level != "WARN" {
			t.Errorf("truncated: libvips line %+v, want level WARN", r)
		}
	}
	if got := libvipsLines(t, global.String()); len(got) != 0 {
		t.Fatalf("the global logger got lines of the calls: %s", global.String())
	}
}
