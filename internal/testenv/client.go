package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"sort"
	"strconv"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"upsize/internal/httpapi"
)

func init() {
	for _, ct := range []string{"image/png", "image/jpeg", "image/webp"} {
		openapi3filter.RegisterBodyDecoder(ct, openapi3filter.FileBodyDecoder)
	}
	openapi3filter.RegisterBodyDecoder("text/event-stream", openapi3filter.PlainBodyDecoder)
}

// validatingTransport checks every response against the service's own OpenAPI document: its status
// must be documented for the route, and its headers and body must match the schema.
type validatingTransport struct {
	t      testing.TB
	router routers.Router
	next   http.RoundTripper
}

func newValidatingTransport(t testing.TB, serverURL string, next http.RoundTripper) http.RoundTripper {
	doc, err := httpapi.OpenAPI()
	if err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	local := *doc
	local.Servers = openapi3.Servers{{URL: serverURL}}
	router, err := gorillamux.NewRouter(&local)
	if err != nil {
		t.Fatalf("openapi router: %v", err)
	}
	return &validatingTransport{t: t, router: router, next: next}
}

func (v *validatingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	res, err := v.next.RoundTrip(req)
	if err != nil {
		return res, err
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		return nil, err
	}
	res.Body = io.NopCloser(bytes.NewReader(body))
	route, params, err := v.router.FindRoute(req)
	if err != nil {
		v.t.Errorf("%s %s: not in openapi.yaml: %v", req.Method, req.URL.Path, err)
		return res, nil
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 res.StatusCode,
		Header:                 res.Header,
		Body:                   io.NopCloser(bytes.NewReader(body)),
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		v.t.Errorf("%s %s answered %d, which openapi.yaml does not allow: %v\nbody: %.300s", req.Method, req.URL.Path, res.StatusCode, err, body)
	}
	return res, nil
}

// Resp is an answer, read whole.
type Resp struct {
	Status int
	Header http.Header
	Body   []byte
}

// JSON decodes the body as an object (numbers as json.Number).
func (r *Resp) JSON() map[string]any {
	var m map[string]any
	d := json.NewDecoder(bytes.NewReader(r.Body))
	d.UseNumber()
	_ = d.Decode(&m)
	return m
}

// Reason is the data of an error envelope.
func (r *Resp) Reason() string { s, _ := r.JSON()["data"].(string); return s }

// Image is the "image" object of the body.
func (r *Resp) Image() map[string]any { m, _ := r.JSON()["image"].(map[string]any); return m }

// ImageID is image.imageId.
func (r *Resp) ImageID() int64 {
	n, _ := r.Image()["imageId"].(json.Number).Int64()
	return n
}

func (r *Resp) String() string { return fmt.Sprintf("HTTP %d %.300s", r.Status, r.Body) }

// Req is one call.
type Req struct {
	Method, Path string
	Key          string
	Admin        bool
	Header       map[string]string
	Body         []byte
	ContentType  string
	JSON         any
}

// Do sends a request with the validating client.
func (e *Env) Do(q Req) *Resp {
	e.T.Helper()
	return e.DoContext(context.Background(), q)
}

// DoContext is Do with a context (to abandon a request midway).
func (e *Env) DoContext(ctx context.Context, q Req) *Resp {
	e.T.Helper()
	body, ct := q.Body, q.ContentType
	if q.JSON != nil {
		body, _ = json.Marshal(q.JSON)
		ct = "application/json"
	}
	req, err := http.NewRequestWithContext(ctx, q.Method, e.Server.URL+q.Path, bytes.NewReader(body))
	if err != nil {
		e.T.Fatal(err)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	if q.Key != "" {
		req.Header.Set("X-Api-Key", q.Key)
	}
	if q.Admin {
		req.Header.Set("Authorization", "Bearer "+e.AdminToken)
	}
	for k, v := range q.Header {
		req.Header.Set(k, v)
	}
	res, err := e.Client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return &Resp{}
		}
		e.T.Fatalf("%s %s: %v", q.Method, q.Path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return &Resp{Status: res.StatusCode, Header: res.Header, Body: b}
}

// Want fails the test unless r has the status (and, for errors, the exact envelope reason).
func (e *Env) Want(r *Resp, status int, reason string) {
	e.T.Helper()
	if r.Status != status || (reason != "" && r.Reason() != reason) {
		e.T.Fatalf("want HTTP %d %q, got %s", status, reason, r)
	}
}

// Configure sets the admin defaults: model lanczos3, costs 2x 1, 4x 2, 8x 4.
func (e *Env) Configure() {
	e.T.Helper()
	e.Want(e.Do(Req{Method: "PUT", Path: "/admin/models/upsize", Admin: true, JSON: map[string]string{"model": "lanczos3"}}), 200, "")
	e.Want(e.Do(Req{Method: "PUT", Path: "/admin/credit-costs/upsize", Admin: true, JSON: map[string]int{"2x": 1, "4x": 2, "8x": 4}}), 200, "")
}

// User is a user with an API key.
type User struct {
	ID  int64
	Key string
}

// NewUser makes a user (plan "paid" or "free") and a key.
func (e *Env) NewUser(plan string, credits int64) User {
	e.T.Helper()
	r := e.Do(Req{Method: "POST", Path: "/admin/users", Admin: true, JSON: map[string]any{"plan": plan, "credits": credits}})
	e.Want(r, 201, "")
	id, _ := r.JSON()["user"].(map[string]any)["id"].(json.Number).Int64()
	k := e.Do(Req{Method: "POST", Path: "/admin/users/" + strconv.FormatInt(id, 10) + "/api-keys", Admin: true, JSON: map[string]any{}})
	e.Want(k, 201, "")
	return User{ID: id, Key: k.JSON()["apiKey"].(string)}
}

// Credits reads a user's balance through the admin API.
func (e *Env) Credits(id int64) int64 {
	e.T.Helper()
	r := e.Do(Req{Method: "GET", Path: "/admin/users/" + strconv.FormatInt(id, 10), Admin: true})
	e.Want(r, 200, "")
	n, _ := r.JSON()["user"].(map[string]any)["credits"].(json.Number).Int64()
	return n
}

// Multipart builds an upload body.
func Multipart(file []byte, fields map[string]string) (string, []byte) {
	var b bytes.Buffer
	w := multipart.NewWriter(&b)
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		_ = w.WriteField(k, fields[k])
	}
	if file != nil {
		p, _ := w.CreateFormFile("file", "upload.bin")
		_, _ = p.Write(file)
	}
	_ = w.Close()
	return w.FormDataContentType(), b.Bytes()
}

// Upload posts an image as the user and returns the answer.
func (e *Env) Upload(key string, file []byte, fields map[string]string) *Resp {
	e.T.Helper()
	ct, body := Multipart(file, fields)
	return e.Do(Req{Method: "POST", Path: "/api/images", Key: key, Body: body, ContentType: ct})
}

// UploadOK uploads and returns the new image id.
func (e *Env) UploadOK(key string, file []byte) int64 {
	e.T.Helper()
	r := e.Upload(key, file, nil)
	e.Want(r, 201, "")
	return r.ImageID()
}

// Upsize posts an upsize; scale "" sends no body, rid "" sends no X-Request-Id.
func (e *Env) Upsize(ctx context.Context, key string, imageID int64, scale, rid string) *Resp {
	e.T.Helper()
	q := Req{Method: "POST", Path: fmt.Sprintf("/api/images/%d/upsize", imageID), Key: key, Header: map[string]string{}}
	if scale != "" {
		q.JSON = map[string]string{"scaleSize": scale}
	}
	if rid != "" {
		q.Header["X-Request-Id"] = rid
	}
	return e.DoContext(ctx, q)
}

// Cancel posts a cancel of rid.
func (e *Env) Cancel(key, rid string) *Resp {
	e.T.Helper()
	return e.Do(Req{Method: "POST", Path: "/api/images/cancel", Key: key, Header: map[string]string{"X-Request-Id": rid}})
}

// RequestState reads GET /api/requests/{rid}.
func (e *Env) RequestState(key, rid string) *Resp {
	e.T.Helper()
	return e.Do(Req{Method: "GET", Path: "/api/requests/" + rid, Key: key})
}
