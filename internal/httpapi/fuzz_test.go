package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"

	"upsize/internal/errcode"
)

// Fuzz targets for every parser of client bytes in the HTTP layer. The committed corpora under
// testdata/fuzz/ run in every `go test`; `make test` also fuzzes each target for a few seconds.

func multipartSeed(fields map[string]string, file []byte) (string, []byte) {
	var b bytes.Buffer
	w := multipart.NewWriter(&b)
	_ = w.SetBoundary("fuzzboundary")
	for k, v := range fields {
		_ = w.WriteField(k, v)
	}
	if file != nil {
		p, _ := w.CreateFormFile("file", "x.png")
		_, _ = p.Write(file)
	}
	_ = w.Close()
	return w.FormDataContentType(), b.Bytes()
}

// FuzzParseUpload: whatever the body and its Content-Type, parsing ends without a panic, a parsed file
// fits the buffer it was given, and only known text fields come back, each within its bound.
func FuzzParseUpload(f *testing.F) {
	ct, body := multipartSeed(map[string]string{"super": "s", "variationId": "7"}, []byte("\x89PNG\r\n\x1a\n0000"))
	f.Add(ct, body)
	f.Add("multipart/form-data; boundary=b", []byte("--b\r\nContent-Disposition: form-data; name=\"super\"\r\n\r\na\r\n--b\r\nContent-Disposition: form-data; name=\"super\"\r\n\r\nb\r\n--b--\r\n"))
	f.Add("multipart/form-data; boundary=b", []byte("--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n"+strings.Repeat("x", 300)+"\r\n--b--\r\n"))
	f.Add("text/plain", []byte("hello"))
	f.Add("multipart/form-data", []byte("--\r\n"))
	const fileMax = 256
	f.Fuzz(func(t *testing.T, contentType string, body []byte) {
		up, err := parseUpload(bytes.NewReader(body), contentType, fileMax)
		defer up.free()
		if err != nil {
			if up.file != nil || up.fields != nil {
				t.Fatal("a failed parse returned parts")
			}
			return
		}
		if up.file != nil && len(up.file.Bytes()) > fileMax {
			t.Fatalf("file of %d bytes in a buffer of %d", len(up.file.Bytes()), fileMax)
		}
		for k, v := range up.fields {
			if !textFields[k] || len(v) > maxFieldBytes {
				t.Fatalf("field %q of %d bytes", k, len(v))
			}
		}
	})
}

// FuzzDecodeObject: a body is accepted only if it is one JSON object without a repeated key, and then it
// says what encoding/json reads from it.
func FuzzDecodeObject(f *testing.F) {
	for _, s := range []string{``, `{}`, `{"a":1}`, `{"a":1,"a":2}`, `{"a":{"a":1,"a":2}}`, `[1]`, `{"a":1} x`,
		`{"credits": 1000000000000}`, `{"a":"\u0000"}`, ` { "b" : [ null , true ] } `, `{"a":1}{}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := decodeObject(body)
		if err != nil {
			var dup duplicateKeyError
			if !errors.Is(err, errNotObject) && !errors.As(err, &dup) {
				t.Fatalf("undefined error %v", err)
			}
			return
		}
		if len(bytes.TrimSpace(body)) == 0 {
			return
		}
		var std map[string]json.RawMessage
		if err := json.Unmarshal(body, &std); err != nil {
			t.Fatalf("accepted what encoding/json refuses: %v", err)
		}
		if len(std) != len(m) {
			t.Fatalf("%d keys, encoding/json reads %d", len(m), len(std))
		}
		for k, v := range m {
			if !bytes.Equal(bytes.TrimSpace(std[k]), bytes.TrimSpace(v)) {
				t.Fatalf("key %q: %s, encoding/json reads %s", k, v, std[k])
			}
		}
	})
}

// FuzzParseScale: an upsize body is a scale of the three, or not a scale; never anything else.
func FuzzParseScale(f *testing.F) {
	for _, s := range []string{``, `{}`, `{"scaleSize":null}`, `{"scaleSize":"4x"}`, `{"scaleSize":"16x"}`,
		`{"scaleSize":"2x","scaleSize":"8x"}`, `"2x"`, `{"scaleSize":4}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		s, ok := parseScale(body)
		if ok != (s == "2x" || s == "4x" || s == "8x") || (!ok && s != "") {
			t.Fatalf("parseScale(%q) = %q, %v", body, s, ok)
		}
	})
}

// FuzzRequestHeaders: whatever X-Request-Id and X-Platform a client sends, the id echoed is a valid one
// (the client's own when valid, a made one when absent, none when malformed), no header is split, and
// every error echoes at most 128 bytes of client text.
func FuzzRequestHeaders(f *testing.F) {
	f.Add("req-1", "web", true)
	f.Add("", "", false)
	f.Add("a b", "WEB", true)
	f.Add("x\r\nSet-Cookie: a=b", "figma", true)
	f.Add(strings.Repeat("z", 129), "api", true)
	f.Add("é", "app\x00", true)
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.Use(requestID())
	r.POST("/x/:id", func(c *gin.Context) {
		if p := c.GetHeader("X-Platform"); p != "" && !platforms[p] {
			fail(c, errcode.InvalidPlatform.E())
			return
		}
		fail(c, errcode.NoInputImage.With(c.Param("id")))
	})
	f.Fuzz(func(t *testing.T, rid, platform string, sendID bool) {
		req := httptest.NewRequest("POST", "/x/1", nil)
		req.URL.Path = "/x/" + rid // any bytes as a path parameter
		if sendID {
			req.Header["X-Request-Id"] = []string{rid}
		}
		req.Header["X-Platform"] = []string{platform}
		w := httptest.NewRecorder()
		r.ServeHTTP(w, req)
		if w.Code/100 == 3 || (w.Code == http.StatusNotFound && !json.Valid(w.Body.Bytes())) {
			return // the router redirected or matched no route: no handler ran
		}
		echoed := w.Header().Values("X-Request-Id")
		switch {
		case len(echoed) > 1:
			t.Fatalf("%d X-Request-Id headers", len(echoed))
		case len(echoed) == 1 && !requestIDPattern.MatchString(echoed[0]):
			t.Fatalf("echoed an invalid id %q", echoed[0])
		case sendID && requestIDPattern.MatchString(rid) && (len(echoed) != 1 || echoed[0] != rid):
			t.Fatalf("valid id %q echoed as %q", rid, echoed)
		case !sendID && len(echoed) != 1:
			t.Fatal("no id made for a request without one")
		}
		var env struct{ Data string }
		if err := json.Unmarshal(w.Body.Bytes(), &env); err != nil {
			t.Fatalf("HTTP %d, body %q", w.Code, w.Body.Bytes())
		}
		if len(env.Data) > len("no_input_image ()")+128+len("…") { // ids are echoed up to 128 bytes
			t.Fatalf("echoed %d bytes", len(env.Data))
		}
	})
}
