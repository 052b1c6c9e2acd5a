package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// A reader of Server-Sent Events as the HTML standard parses them ("Interpreting an event stream"):
// lines end in CRLF, LF or CR; a line starting with ":" is a comment (the service's heartbeats); "field:
// value" (one space after the colon dropped) sets event, data (each data line appended, joined by "\n"),
// id or retry; a blank line dispatches the event, unless it has no data; an event cut by the end of the
// stream is dropped. The service is trusted no more than any other peer: a line, an event's data and the
// whole stream are bounded.

// The bounds of one event stream. The service's events are a request's state (well under 1 KiB, the
// final one with its image); a stream sends one per change of state and per move of the queue position
// while queued, plus a heartbeat every 15 s, so a stream followed for an hour stays well under maxSSEBytes.
const (
	maxSSELine  = 64 << 10 // one line
	maxSSEData  = 64 << 10 // one event's data
	maxSSEBytes = 4 << 20  // one stream, all of it; past it the stream is dropped (and reopened)
)

var (
	errSSELineTooLong = errors.New("event stream: line too long")
	errSSEDataTooLong = errors.New("event stream: event data too long")
	errSSETooLong     = errors.New("event stream: stream too long")
)

// sseEvent is one dispatched event.
type sseEvent struct {
	Type string // "message" when the event gave none
	Data string
	ID   string // the last event id, as it stands when the event is dispatched
}

// sseReader reads events from one stream.
type sseReader struct {
	r        *bufio.Reader
	maxLine  int
	maxData  int
	left     int64 // bytes the stream may still send
	started  bool  // past the first line (and its byte order mark, if any)
	afterCR  bool  // the last line ended in CR: a LF right after it belongs to that line end
	line     []byte
	typ      string
	data     bytes.Buffer // the event's data lines, each with a LF
	lastID   string
	comments int // comment lines read (heartbeats)
}

func newSSEReader(r io.Reader) *sseReader {
	return newSSEReaderLimits(r, maxSSELine, maxSSEData, maxSSEBytes)
}

func newSSEReaderLimits(r io.Reader, maxLine, maxData int, maxBytes int64) *sseReader {
	return &sseReader{r: bufio.NewReaderSize(r, 4096), maxLine: maxLine, maxData: maxData, left: maxBytes}
}

// next returns the next event; io.EOF once the stream ends (an event it cut short is dropped), or
// another error once a bound is passed or reading fails. After an error the reader is spent.
func (s *sseReader) next() (sseEvent, error) {
	for {
		line, err := s.readLine()
		if err != nil {
			return sseEvent{}, err
		}
		if !s.started {
			s.started = true
			line = bytes.TrimPrefix(line, []byte("\xEF\xBB\xBF"))
		}
		if len(line) == 0 {
			if ev, ok := s.dispatch(); ok {
				return ev, nil
			}
			continue
		}
		if line[0] == ':' {
			s.comments++
			continue
		}
		field, value, found := bytes.Cut(line, []byte(":"))
		if found {
			value = bytes.TrimPrefix(value, []byte(" "))
		}
		switch string(field) {
		case "event":
			s.typ = string(value)
		case "data":
			if s.data.Len()+len(value)+1 > s.maxData {
				return sseEvent{}, errSSEDataTooLong
			}
			s.data.Write(value)
			s.data.WriteByte('\n')
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				s.lastID = string(value)
			}
		}
		// "retry" sets the reconnection time in a browser; this client keeps its own backoff.
		// Any other field is ignored.
	}
}

// dispatch ends the event being read: it is returned unless it has no data; either way the next one
// starts afresh (the last event id stays).
func (s *sseReader) dispatch() (sseEvent, bool) {
	defer func() { s.typ = ""; s.data.Reset() }()
	if s.data.Len() == 0 {
		return sseEvent{}, false
	}
	ev := sseEvent{Type: s.typ, Data: string(bytes.TrimSuffix(s.data.Bytes(), []byte("\n"))), ID: s.lastID}
	if ev.Type == "" {
		ev.Type = "message"
	}
	return ev, true
}

// readLine reads up to the next CR, LF or CRLF, without it. A line cut by the end of the stream is not
// a line: io.EOF.
func (s *sseReader) readLine() ([]byte, error) {
	s.line = s.line[:0]
	for {
		b, err := s.r.ReadByte()
		if err != nil {
			return nil, err
		}
		if s.left--; s.left < 0 {
			return nil, errSSETooLong
		}
		afterCR := s.afterCR
		s.afterCR = false
		switch b {
		case '\n':
			if afterCR && len(s.line) == 0 {
				continue // the LF of a CRLF
			}
			return s.line, nil
		case '\r':
			s.afterCR = true
			return s.line, nil
		}
		if len(s.line) >= s.maxLine {
			return nil, errSSELineTooLong
		}
		s.line = append(s.line, b)
	}
}
