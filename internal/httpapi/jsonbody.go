package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// errNotObject: the body is not one JSON object (or has something after it).
var errNotObject = errors.New("body is not one JSON object")

// duplicateKeyError names a key that appears twice in one object. encoding/json would silently keep the
// last one; parsers disagree on which wins, so a body that says two things is refused instead.
type duplicateKeyError struct{ key string }

func (e duplicateKeyError) Error() string { return fmt.Sprintf("key %q appears twice", e.key) }

// decodeObject reads a body that must be exactly one JSON object, keeping each value raw so that its
// type is checked by name. An empty body is an empty object. Duplicate keys are refused (decided: a
// client cannot send {"credits": 1, "credits": 10^15} and be unsure which one counted).
func decodeObject(body []byte) (map[string]json.RawMessage, error) {
	m := map[string]json.RawMessage{}
	if len(bytes.TrimSpace(body)) == 0 {
		return m, nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, errNotObject
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, errNotObject
		}
		key, ok := tok.(string)
		if !ok {
			return nil, errNotObject
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, errNotObject
		}
		if _, dup := m[key]; dup {
			return nil, duplicateKeyError{key}
		}
		m[key] = v
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, errNotObject
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errNotObject // something after the object
	}
	return m, nil
}
