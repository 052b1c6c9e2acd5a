package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"
)

// service talks to the API the way a client would.
type service struct {
	base  string
	admin string
	hc    *http.Client
}

// newClient is an HTTP client for n concurrent requests: every one keeps its connection.
func newClient(n int, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout:   timeout,
		Transport: &http.Transport{MaxIdleConns: n, MaxIdleConnsPerHost: n, ResponseHeaderTimeout: timeout},
	}
}

// call is one request to the API.
type call struct {
	method, path string
	key          string // X-Api-Key
	admin        bool   // Authorization: Bearer <admin token>
	rid          string // X-Request-Id
	body         []byte
	contentType  string
	header       map[string]string
}

// answer is what the API said: status, the reason of an error envelope, headers, body, time taken.
type answer struct {
	Status int
	Reason string
	Header http.Header
	Body   []byte
	Took   time.Duration
	Err    error
}

// label is how answers are counted: "201", "422 invalid_image", "error: reset".
func (a answer) label() string {
	switch {
	case a.Err != nil:
		return "error: " + errKind(a.Err)
	case a.Reason != "":
		return strconv.Itoa(a.Status) + " " + a.Reason
	default:
		return strconv.Itoa(a.Status)
	}
}

func (a answer) is(status int, reason string) bool {
	return a.Err == nil && a.Status == status && (reason == "" || a.Reason == reason)
}

// errKind names a transport error briefly, so that thousands of them tally into a few labels.
func errKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, syscall.EPIPE):
		return "broken pipe"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "closed"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	default:
		return "other"
	}
}

func (s *service) do(ctx context.Context, c call) answer {
	return doWith(ctx, s.hc, s.base, s.admin, c)
}

// doWith sends c with hc (attacks bring clients sized for their concurrency).
func doWith(ctx context.Context, hc *http.Client, base, adminToken string, c call) answer {
	var body io.Reader
	if c.body != nil {
		body = bytes.NewReader(c.body)
	}
	req, err := http.NewRequestWithContext(ctx, c.method, base+c.path, body)
	if err != nil {
		return answer{Err: err}
	}
	if c.key != "" {
		req.Header.Set("X-Api-Key", c.key)
	}
	if c.admin {
		req.Header.Set("Authorization", "Bearer "+adminToken)
	}
	if c.rid != "" {
		req.Header.Set("X-Request-Id", c.rid)
	}
	if c.contentType != "" {
		req.Header.Set("Content-Type", c.contentType)
	}
	for k, v := range c.header {
		req.Header.Set(k, v)
	}
	start := time.Now()
	res, err := hc.Do(req)
	if err != nil {
		return answer{Err: err, Took: time.Since(start)}
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	a := answer{Status: res.StatusCode, Header: res.Header, Body: b, Took: time.Since(start), Err: err}
	if res.StatusCode >= 400 {
		a.Reason = envelopeReason(b)
	}
	return a
}

// envelopeReason is the "data" of SPEC's error envelope, "" if the body is not one.
func envelopeReason(body []byte) string {
	var env struct {
		Success *bool `json:"success"`
		Data    any   `json:"data"`
	}
	if json.Unmarshal(body, &env) != nil || env.Success == nil {
		return ""
	}
	s, _ := env.Data.(string)
	return s
}

// adminJSON sends a JSON body to the admin API and decodes a 2xx answer into out (if not nil).
func (s *service) adminJSON(ctx context.Context, method, path string, body, out any) error {
	c := call{method: method, path: path, admin: true}
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		c.body, c.contentType = b, "application/json"
	}
	a := s.do(ctx, c)
	return decodeOK(method+" "+path, a, out)
}

func decodeOK(what string, a answer, out any) error {
	switch {
	case a.Err != nil:
		return fmt.Errorf("%s: %w", what, a.Err)
	case a.Status < 200 || a.Status > 299:
		return fmt.Errorf("%s: HTTP %s", what, a.label())
	case out == nil:
		return nil
	}
	if err := json.Unmarshal(a.Body, out); err != nil {
		return fmt.Errorf("%s: answer %.200q: %w", what, a.Body, err)
	}
	return nil
}

// user is a test user made by the run, with its API key.
type user struct {
	ID  int64
	Key string
}

// newUser makes a paid user (no 4K gate, no premium) with credits, and a key for it.
func (s *service) newUser(ctx context.Context, credits int64) (user, error) {
	var u struct {
		User struct {
			ID int64 `json:"id"`
		} `json:"user"`
	}
	body := map[string]any{"plan": "paid", "billing": "ok", "premium": false, "credits": credits}
	if err := s.adminJSON(ctx, http.MethodPost, "/admin/users", body, &u); err != nil {
		return user{}, err
	}
	var k struct {
		APIKey string `json:"apiKey"`
	}
	if err := s.adminJSON(ctx, http.MethodPost, fmt.Sprintf("/admin/users/%d/api-keys", u.User.ID), map[string]any{}, &k); err != nil {
		return user{}, err
	}
	return user{ID: u.User.ID, Key: k.APIKey}, nil
}

// credits is the user's balance, as the admin API reports it.
func (s *service) credits(ctx context.Context, id int64) (int64, error) {
	var u struct {
		User struct {
			Credits int64 `json:"credits"`
		} `json:"user"`
	}
	err := s.adminJSON(ctx, http.MethodGet, fmt.Sprintf("/admin/users/%d", id), nil, &u)
	return u.User.Credits, err
}

// configure sets the upsize model and credit costs, but only those not set: the run needs both, and
// must not change what an operator chose.
func (s *service) configure(ctx context.Context) error {
	var m struct {
		Model *string `json:"model"`
	}
	if err := s.adminJSON(ctx, http.MethodGet, "/admin/models/upsize", nil, &m); err != nil {
		return err
	}
	if m.Model == nil {
		if err := s.adminJSON(ctx, http.MethodPut, "/admin/models/upsize", map[string]string{"model": "lanczos3"}, nil); err != nil {
			return err
		}
	}
	var costs map[string]int64
	if err := s.adminJSON(ctx, http.MethodGet, "/admin/credit-costs/upsize", nil, &costs); err != nil {
		return err
	}
	if len(costs) < 3 {
		return s.adminJSON(ctx, http.MethodPut, "/admin/credit-costs/upsize", map[string]int{"2x": 1, "4x": 2, "8x": 4}, nil)
	}
	return nil
}

// multipartFile is an upload body with one part "file" holding b.
func multipartFile(b []byte) (contentType string, body []byte) {
	var buf bytes.Buffer
	buf.Grow(len(b) + 512)
	mw := multipart.NewWriter(&buf)
	fw, _ := mw.CreateFormFile("file", "image")
	_, _ = fw.Write(b) // a bytes.Buffer does not fail
	_ = mw.Close()
	return mw.FormDataContentType(), buf.Bytes()
}

// upload is POST /api/images of a file, as a user.
func (s *service) upload(ctx context.Context, key string, file []byte) answer {
	ct, body := multipartFile(file)
	return s.do(ctx, call{method: http.MethodPost, path: "/api/images", key: key, body: body, contentType: ct})
}

// uploadOK uploads a file that must be accepted, and returns its image id.
func (s *service) uploadOK(ctx context.Context, key string, file []byte) (int64, error) {
	var out struct {
		Image struct {
			ImageID int64 `json:"imageId"`
		} `json:"image"`
	}
	err := decodeOK("upload", s.upload(ctx, key, file), &out)
	return out.Image.ImageID, err
}

// upsize is POST /api/images/{id}/upsize with {"scaleSize": scale}.
func (s *service) upsize(ctx context.Context, key string, id int64, scale, rid string) answer {
	return s.do(ctx, call{method: http.MethodPost, path: fmt.Sprintf("/api/images/%d/upsize", id), key: key, rid: rid,
		body: []byte(`{"scaleSize": "` + scale + `"}`), contentType: "application/json"})
}

func (s *service) cancel(ctx context.Context, key, rid string) answer {
	return s.do(ctx, call{method: http.MethodPost, path: "/api/images/cancel", key: key, rid: rid})
}

// requestState is the state GET /api/requests/{rid} reports ("" if it does not answer 200).
func (s *service) requestState(ctx context.Context, key, rid string) string {
	a := s.do(ctx, call{method: http.MethodGet, path: "/api/requests/" + rid, key: key})
	var st struct {
		State string `json:"state"`
	}
	if a.Err != nil || a.Status != http.StatusOK || json.Unmarshal(a.Body, &st) != nil {
		return ""
	}
	return st.State
}

// waitState polls a request until its state is one of want, or within passes.
func (s *service) waitState(ctx context.Context, key, rid string, within time.Duration, want ...string) (string, error) {
	deadline := time.Now().Add(within)
	last := ""
	for time.Now().Before(deadline) && ctx.Err() == nil {
		last = s.requestState(ctx, key, rid)
		for _, w := range want {
			if last == w {
				return last, nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return last, fmt.Errorf("request %s: state %q after %s, want one of %v", rid, last, within, want)
}

// rawConn is a TCP connection to the API written by hand: the attacks send what no HTTP client would
// (a body that never arrives, a request line of 100 KB).
type rawConn struct {
	net.Conn
	br *bufio.Reader
}

func dialRaw(ctx context.Context, hostport string) (*rawConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", hostport)
	if err != nil {
		return nil, err
	}
	return &rawConn{Conn: c, br: bufio.NewReader(c)}, nil
}

// readAnswer reads one response to method within d, and then whether the server closed the connection
// (EOF) within closeWithin of the answer. It returns the status, the body, and the time to each.
func (c *rawConn) readAnswer(method string, d, closeWithin time.Duration) (res *http.Response, body []byte, closed bool, err error) {
	_ = c.SetReadDeadline(time.Now().Add(d))
	res, err = http.ReadResponse(c.br, &http.Request{Method: method})
	if err != nil {
		return nil, nil, false, err
	}
	body, err = io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		return res, body, false, err
	}
	if closeWithin <= 0 {
		return res, body, false, nil
	}
	_ = c.SetReadDeadline(time.Now().Add(closeWithin))
	_, rerr := c.br.ReadByte()
	return res, body, errors.Is(rerr, io.EOF) || errors.Is(rerr, syscall.ECONNRESET), nil
}

// trickle writes one byte of body every interval until stop is closed or a write fails.
func (c *rawConn) trickle(interval time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if _, err := c.Write([]byte("x")); err != nil {
				return
			}
		}
	}
}

// hostPort is where to dial a base URL (http only: see parseBase).
func hostPort(u *url.URL) string {
	if u.Port() == "" {
		return net.JoinHostPort(u.Hostname(), "80")
	}
	return u.Host
}
