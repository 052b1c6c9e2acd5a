package main

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"
)

// readAll reads every event of a stream, and the error that ended it.
func readAll(s *sseReader) ([]sseEvent, error) {
	var evs []sseEvent
	for {
		ev, err := s.next()
		if err != nil {
			return evs, err
		}
		evs = append(evs, ev)
	}
}

func TestSSEParser(t *testing.T) {
	state := func(data string) sseEvent { return sseEvent{Type: "state", Data: data} }
	for _, tc := range []struct {
		name, in string
		want     []sseEvent
		err      error
		comments int
	}{
		{"the service's stream", "event: state\ndata: {\"state\":\"queued\",\"position\":2}\n\n: heartbeat\n\nevent: state\ndata: {\"state\":\"completed\"}\n\n",
			[]sseEvent{state(`{"state":"queued","position":2}`), state(`{"state":"completed"}`)}, io.EOF, 1},
		{"CRLF", "event: state\r\ndata: a\r\n\r\n: hb\r\n\r\ndata: b\r\n\r\n",
			[]sseEvent{state("a"), {Type: "message", Data: "b"}}, io.EOF, 1},
		{"CR alone", "event: state\rdata: a\r\rdata:b\r\r", []sseEvent{state("a"), {Type: "message", Data: "b"}}, io.EOF, 0},
		{"multi-line data", "data: {\"a\":\ndata:  1}\ndata\n\n", []sseEvent{{Type: "message", Data: "{\"a\":\n 1}\n"}}, io.EOF, 0},
		{"comments only", ":\n: heartbeat\n\n:x\n", nil, io.EOF, 3},
		{"no data, no event", "event: state\n\nid: 7\n\ndata: x\n\n", []sseEvent{{Type: "message", Data: "x", ID: "7"}}, io.EOF, 0},
		{"id stays, a NUL id is ignored", "id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\nid\ndata: c\n\n",
			[]sseEvent{{Type: "message", Data: "a", ID: "1"}, {Type: "message", Data: "b", ID: "1"}, {Type: "message", Data: "c"}}, io.EOF, 0},
		{"other fields ignored", "retry: 10\nfoo: bar\nevent: state\nData: no\ndata: y\n\n", []sseEvent{state("y")}, io.EOF, 0},
		{"byte order mark", "\xEF\xBB\xBFdata: x\n\n", []sseEvent{{Type: "message", Data: "x"}}, io.EOF, 0},
		{"cut by the end", "data: x\n\ndata: lost\n", []sseEvent{{Type: "message", Data: "x"}}, io.EOF, 0},
		{"cut mid-line", "data: x\n\ndata: lo", []sseEvent{{Type: "message", Data: "x"}}, io.EOF, 0},
		{"over-long line", "data: x\n\ndata: " + strings.Repeat("y", 100) + "\n\n", []sseEvent{{Type: "message", Data: "x"}}, errSSELineTooLong, 0},
		{"over-long comment", ":" + strings.Repeat("y", 100) + "\n\n", nil, errSSELineTooLong, 0},
		{"data over its bound across lines", strings.Repeat("data: "+strings.Repeat("z", 50)+"\n", 4) + "\n", nil, errSSEDataTooLong, 0},
		{"stream over its bound", strings.Repeat(": heartbeat\n\n", 100), nil, errSSETooLong, 77},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, split := range []bool{false, true} { // whole, and one byte per read: a CR at a read's end
				var r io.Reader = strings.NewReader(tc.in)
				if split {
					r = iotest.OneByteReader(r)
				}
				s := newSSEReaderLimits(r, 80, 160, 1000)
				got, err := readAll(s)
				if !reflect.DeepEqual(got, tc.want) || !errors.Is(err, tc.err) || s.comments != tc.comments {
					t.Fatalf("split %v: %q, %v, %d comments; want %q, %v, %d", split, got, err, s.comments, tc.want, tc.err, tc.comments)
				}
			}
		})
	}
}

// A stream that pauses right after a CR still dispatches the event it ends: the reader does not wait for
// the next byte to learn whether a LF follows.
func TestSSEDispatchesWithoutWaitingAfterCR(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() { _, _ = pw.Write([]byte("data: a\r\r")) }()
	got := make(chan sseEvent, 1)
	go func() {
		ev, _ := newSSEReader(pr).next()
		got <- ev
	}()
	select {
	case ev := <-got:
		if ev.Data != "a" {
			t.Fatalf("event %+v", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the event ended by CR CR waits for more bytes")
	}
}

// FuzzSSE: whatever the bytes, reading ends in io.EOF or one of the bounds' errors, every event is within
// its bound, and reading the stream one byte at a time gives the same events.
func FuzzSSE(f *testing.F) {
	for _, s := range []string{
		"event: state\ndata: {\"state\":\"queued\",\"position\":2}\n\n: heartbeat\n\n",
		"data: a\r\n\r\ndata: b\r\rdata:c\n\n",
		"data: 1\ndata: 2\n\nid: 9\nevent: x\ndata\n\n",
		"\xEF\xBB\xBF:\n\nretry: 5\n\n",
		"data: " + strings.Repeat("y", 70) + "\n\n",
		"\r\n\r\r\n\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		const maxLine, maxData, maxBytes = 64, 128, 512
		whole, errWhole := readAll(newSSEReaderLimits(bytes.NewReader(in), maxLine, maxData, maxBytes))
		bytewise, errBytewise := readAll(newSSEReaderLimits(iotest.OneByteReader(bytes.NewReader(in)), maxLine, maxData, maxBytes))
		for _, err := range []error{errWhole, errBytewise} {
			if !errors.Is(err, io.EOF) && !errors.Is(err, errSSELineTooLong) && !errors.Is(err, errSSEDataTooLong) && !errors.Is(err, errSSETooLong) {
				t.Fatalf("error %v", err)
			}
		}
		if !reflect.DeepEqual(whole, bytewise) || !errors.Is(errBytewise, errWhole) {
			t.Fatalf("whole: %q %v; byte by byte: %q %v", whole, errWhole, bytewise, errBytewise)
		}
		total := 0
		for _, ev := range whole {
			if len(ev.Data) >= maxData || len(ev.Type) > maxLine || len(ev.ID) > maxLine || ev.Type == "" {
				t.Fatalf("event out of bounds: %q", ev)
			}
			total += len(ev.Data)
		}
		if total > maxBytes {
			t.Fatalf("%d bytes of data from a stream bounded at %d", total, maxBytes)
		}
	})
}

// followAgainst follows request "lt-1" with -follow sse against handler, with short intervals.
func followAgainst(t *testing.T, h http.Handler, timeout time.Duration) followResult {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	base, _ := url.Parse(srv.URL)
	cfg := &config{Base: base, Follow: followSSE, PollInterval: 10 * time.Millisecond, FollowTimeout: timeout}
	r := newRunner(t.Context(), cfg, &recorder{})
	return r.follow(&plan{RequestID: "lt-1", Account: &account{Key: "k"}}, time.Now())
}

// How following by SSE ends when the stream is not what the service promises.
func TestFollowSSEAnswers(t *testing.T) {
	final := `{"requestId":"lt-1","state":"failed","error":{"code":500,"data":"internal"}}`
	stream := func(w http.ResponseWriter, events string) {
		w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
		_, _ = io.WriteString(w, events)
	}
	for _, tc := range []struct {
		name    string
		events  func(w http.ResponseWriter, n int64) // n: streams asked for before this one
		want    followResult
		streams int64
	}{
		{"404 no_request", func(w http.ResponseWriter, _ int64) { fail(w, http.StatusNotFound, "no_request (lt-1)") },
			followResult{Outcome: acceptedUnresolved, Reason: "404 no_request (lt-1)", By: followSSE}, 1},
		{"final state at once, CRLF and two data lines", func(w http.ResponseWriter, _ int64) {
			stream(w, ": hi\r\n\r\nevent: state\r\ndata: "+final[:20]+"\r\ndata: "+final[20:]+"\r\n\r\n")
		}, followResult{Outcome: acceptedFailed, Reason: "500 internal", By: followSSE}, 1},
		{"events of another type are not states", func(w http.ResponseWriter, _ int64) {
			stream(w, "data: "+final+"\n\nevent: state\ndata: {\"state\":\"canceled\"}\n\n")
		}, followResult{Outcome: acceptedCanceled, By: followSSE}, 1},
		{"not an event stream: reconnects, then polls", func(w http.ResponseWriter, _ int64) {
			answer(w, http.StatusOK, map[string]string{"state": "queued"})
		}, followResult{Outcome: acceptedCompleted, By: followFallback, Reconnects: sseMaxReconnects}, 1 + sseMaxReconnects},
		{"an over-long line drops the stream", func(w http.ResponseWriter, n int64) {
			if n == 0 {
				stream(w, "event: state\ndata: {\"state\":\"queued\"}\n\ndata: "+strings.Repeat("x", maxSSELine)+"\n\n")
				return
			}
			stream(w, "event: state\ndata: {\"state\":\"completed\"}\n\n")
		}, followResult{Outcome: acceptedCompleted, By: followSSE, Reconnects: 1}, 2},
		{"a 5xx is tried again", func(w http.ResponseWriter, n int64) {
			if n < 2 {
				fail(w, http.StatusServiceUnavailable, "service_unavailable")
				return
			}
			stream(w, "event: state\ndata: {\"state\":\"completed\"}\n\n")
		}, followResult{Outcome: acceptedCompleted, By: followSSE, Reconnects: 2}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var streams atomic.Int64
			mux := http.NewServeMux()
			mux.HandleFunc("GET /api/requests/lt-1/events", func(w http.ResponseWriter, r *http.Request) {
				tc.events(w, streams.Add(1)-1)
			})
			mux.HandleFunc("GET /api/requests/lt-1", func(w http.ResponseWriter, r *http.Request) {
				answer(w, http.StatusOK, map[string]string{"requestId": "lt-1", "state": "completed"})
			})
			got := followAgainst(t, mux, 10*time.Second)
			if got.Outcome != tc.want.Outcome || got.Reason != tc.want.Reason || got.By != tc.want.By ||
				got.Reconnects != tc.want.Reconnects || streams.Load() != tc.streams {
				t.Fatalf("%+v after %d streams; want %+v after %d", got, streams.Load(), tc.want, tc.streams)
			}
			if (got.FinalEvent > 0) != (got.By == followSSE && got.Outcome != acceptedUnresolved) || got.FirstEvent > got.FinalEvent && got.FinalEvent > 0 {
				t.Fatalf("times %+v", got)
			}
		})
	}
}

// A request whose stream never ends and whose state never comes is unresolved after -follow-timeout,
// with what its stream said last.
func TestFollowSSETimeout(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "event: state\ndata: {\"state\":\"running\"}\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	got := followAgainst(t, h, 300*time.Millisecond)
	if got.Outcome != acceptedUnresolved || got.By != followSSE || got.FirstEvent == 0 || got.FinalEvent != 0 ||
		got.Reason != "after -follow-timeout: events: the stream was still open (last state: running)" {
		t.Fatalf("%+v", got)
	}
}
