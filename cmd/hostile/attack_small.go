package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"upsize/internal/testimg"
)

// 10. The smaller items of the review, each a request or two.
var smallAttack = attack{
	name: "small",
	review: "duplicate JSON keys read as their last value; a 1 MB path echoed whole in no_request/no_input_image; " +
		"HEAD of a file answered 405; no nosniff; the worker's 404 was plain text",
	what: func(*config) string {
		return "duplicate JSON keys, 100 KB paths, HEAD of a file, nosniff, the worker's 404"
	},
	setup: setupSmall,
	judge: func(e *env, r *result, m *memory) { peakWithin(r, m, 16<<20, "a handful of requests") },
}

func setupSmall(ctx context.Context, e *env, r *result) (func(), error) {
	u, err := e.svc.newUser(ctx, 10)
	if err != nil {
		return nil, err
	}
	file := testimg.JPEG(40, 30, testimg.JPEGOptions{})
	id, err := e.svc.uploadOK(ctx, u.Key, file)
	if err != nil {
		return nil, err
	}
	return func() {
		duplicateKeys(ctx, e, r, u, id)
		longPaths(ctx, e, r, u)
		headOfFile(ctx, e, r, u, id, len(file))
		noSniff(ctx, e, r, u, id)
		workerNotFound(ctx, e, r)
	}, nil
}

func duplicateKeys(ctx context.Context, e *env, r *result, u user, id int64) {
	a := e.svc.do(ctx, call{method: http.MethodPatch, path: fmt.Sprintf("/admin/users/%d", u.ID), admin: true,
		body: []byte(`{"credits": 1, "credits": 500}`), contentType: "application/json"})
	r.expect(`PATCH {"credits": 1, "credits": 500}`, a.is(400, "invalid_field (credits)"), "400 invalid_field (credits)", a.label())
	if left, err := e.svc.credits(ctx, u.ID); err != nil || left != 10 {
		r.expect("credits after it", false, "10 (unchanged)", fmt.Sprintf("%d %v", left, err))
	}
	a = e.svc.do(ctx, call{method: http.MethodPost, path: fmt.Sprintf("/api/images/%d/upsize", id), key: u.Key,
		rid: e.run + "-dup", body: []byte(`{"scaleSize": "2x", "scaleSize": "8x"}`), contentType: "application/json"})
	r.expect(`upsize {"scaleSize": "2x", "scaleSize": "8x"}`, a.is(400, "invalid_scale_size"), "400 invalid_scale_size", a.label())
}

// longPaths: an id of 100 KB is echoed in the reason, cut: an error must not amplify what was sent.
func longPaths(ctx context.Context, e *env, r *result, u user) {
	long := strings.Repeat("a", 100_000)
	for _, c := range []struct{ path, reason string }{
		{"/api/images/" + long, "no_input_image"},
		{"/api/requests/" + long, "no_request"},
	} {
		a := e.svc.do(ctx, call{method: http.MethodGet, path: c.path, key: u.Key})
		ok := a.is(404, "") && strings.HasPrefix(a.Reason, c.reason) && len(a.Reason) <= 150
		r.expect("GET "+c.path[:len(c.path)-len(long)]+"<100 KB>", ok,
			fmt.Sprintf("404 %s, reason ≤ 150 bytes", c.reason),
			fmt.Sprintf("%d, reason of %d bytes (%.30q…), body %d bytes", a.Status, len(a.Reason), a.Reason, len(a.Body)))
	}
}

// headOfFile sends HEAD by hand: an HTTP client would hide a body sent after the headers.
func headOfFile(ctx context.Context, e *env, r *result, u user, id int64, size int) {
	conn, err := dialRaw(ctx, hostPort(e.cfg.Base))
	if err != nil {
		r.fail(err)
		return
	}
	defer conn.Close()
	fmt.Fprintf(conn, "HEAD /api/images/%d/file HTTP/1.1\r\nHost: hostile\r\nX-Api-Key: %s\r\nConnection: close\r\n\r\n", id, u.Key)
	res, _, _, err := conn.readAnswer(http.MethodHead, 5*time.Second, 0)
	if err != nil {
		r.fail(fmt.Errorf("HEAD: %w", err))
		return
	}
	// Whatever follows the headers before the server closes is a body HEAD must not have.
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	var rest bytes.Buffer
	_, _ = rest.ReadFrom(conn.br)
	got := fmt.Sprintf("%d, Content-Length %s, %d body bytes", res.StatusCode, res.Header.Get("Content-Length"), rest.Len())
	r.expect("HEAD /api/images/{id}/file", res.StatusCode == 200 && res.Header.Get("Content-Length") == strconv.Itoa(size) && rest.Len() == 0,
		fmt.Sprintf("200, Content-Length %d, no body", size), got)
}

// noSniff: every answer, bytes and errors alike, tells browsers not to guess its type.
func noSniff(ctx context.Context, e *env, r *result, u user, id int64) {
	for _, c := range []struct {
		what string
		call call
	}{
		{"GET file", call{method: http.MethodGet, path: fmt.Sprintf("/api/images/%d/file", id), key: u.Key}},
		{"404 no_input_image", call{method: http.MethodGet, path: "/api/images/999999999", key: u.Key}},
		{"403 not_logged_in", call{method: http.MethodGet, path: fmt.Sprintf("/api/images/%d", id)}},
		{"404 not_found", call{method: http.MethodGet, path: "/nothing"}},
	} {
		a := e.svc.do(ctx, c.call)
		got := a.Header.Get("X-Content-Type-Options")
		r.expect("nosniff on "+c.what, a.Err == nil && got == "nosniff", "X-Content-Type-Options: nosniff",
			fmt.Sprintf("%s, %q", a.label(), got))
	}
}

func workerNotFound(ctx context.Context, e *env, r *result) {
	if e.cfg.Worker == nil {
		r.note("the worker's 404: not checked (no -worker)")
		return
	}
	a := doWith(ctx, e.svc.hc, e.cfg.Worker.String(), "", call{method: http.MethodGet, path: "/nothing"})
	var env struct {
		Success *bool  `json:"success"`
		Code    int    `json:"code"`
		Data    string `json:"data"`
	}
	isJSON := json.Unmarshal(a.Body, &env) == nil && env.Success != nil && !*env.Success && env.Code == 404
	r.expect("worker GET /nothing", a.Err == nil && a.Status == 404 && isJSON &&
		strings.HasPrefix(a.Header.Get("Content-Type"), "application/json"),
		`404 {"success": false, "code": 404, ...} as application/json`,
		fmt.Sprintf("%d %s %.80q", a.Status, a.Header.Get("Content-Type"), bytes.TrimSpace(a.Body)))
}
