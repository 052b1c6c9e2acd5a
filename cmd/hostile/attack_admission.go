package main

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"upsize/internal/testimg"
)

// admissionBudget: refusals decided from stored metadata, before anything is queued.
const admissionBudget = 200 * time.Millisecond

// 7. A result side over its format's limit (WebP 16,383 px, JPEG 65,500 px) used to pass the pixel
// limits, be charged, and fail in the worker. It is now refused at admission.
var sideLimitsAttack = attack{
	name:   "side-limits",
	review: "a 4200×1000 WebP at 4x and a 1×9000 JPEG at 8x were admitted (credits reserved, task queued) and then failed in the worker",
	what: func(*config) string {
		return "upsizes of a 4200×100 WebP at 4x (16,800 px wide) and a 1×9000 JPEG at 8x (72,000 px tall)"
	},
	setup: setupSideLimits,
	judge: func(e *env, r *result, m *memory) { peakWithin(r, m, 16<<20, "two refusals") },
}

func setupSideLimits(ctx context.Context, e *env, r *result) (func(), error) {
	const credits = 100
	u, err := e.svc.newUser(ctx, credits)
	if err != nil {
		return nil, err
	}
	webp, err := e.svc.uploadOK(ctx, u.Key, testimg.WebP(4200, 100, false, false))
	if err != nil {
		return nil, err
	}
	jpeg, err := e.svc.uploadOK(ctx, u.Key, testimg.JPEG(1, 9000, testimg.JPEGOptions{}))
	if err != nil {
		return nil, err
	}
	return func() {
		for _, c := range []struct {
			what  string
			id    int64
			scale string
		}{{"WebP 4200×100 at 4x", webp, "4x"}, {"JPEG 1×9000 at 8x", jpeg, "8x"}} {
			a := e.svc.upsize(ctx, u.Key, c.id, c.scale, e.run+"-side-"+c.scale)
			r.expect(c.what, a.is(422, "image_too_large") && a.Took < admissionBudget,
				"422 image_too_large in < "+fmtDur(admissionBudget), a.label()+" in "+fmtDur(a.Took))
		}
		left, err := e.svc.credits(ctx, u.ID)
		if err != nil {
			r.fail(err)
			return
		}
		r.expect("credits", left == credits, strconv.Itoa(credits)+" (nothing charged)", strconv.FormatInt(left, 10))
	}, nil
}

// 8. Credits were any int64: an admin could set 2^63−1, and the refund of a cancel then overflowed in
// Redis (the cancel answered 503). Credits are now whole numbers from 0 to 10^12, unknown fields refused.
var creditsOverflowAttack = attack{
	name:   "credits-overflow",
	review: "the admin set credits to 2^63−1 and every cancel (its refund) answered 503",
	what: func(*config) string {
		return "PATCH credits 2^63−1 and an unknown field; then credits 10^12 and a cancel of an admitted upsize (a refund)"
	},
	setup: setupCreditsOverflow,
	judge: func(e *env, r *result, m *memory) { peakWithin(r, m, 64<<20, "a few admin calls and one upsize") },
}

const maxCredits = 1_000_000_000_000 // SPEC: credits are whole numbers from 0 to 10^12

func setupCreditsOverflow(ctx context.Context, e *env, r *result) (func(), error) {
	u, err := e.svc.newUser(ctx, 10)
	if err != nil {
		return nil, err
	}
	// An image whose 2x takes the worker seconds, so that the cancel finds it queued or running.
	big := e.img.get("costly JPEG 5000² 60 scans", r, func() []byte { return testimg.ScanBomb(5000, 5000, 50) })
	id, err := e.svc.uploadOK(ctx, u.Key, big)
	if err != nil {
		return nil, err
	}
	path := fmt.Sprintf("/admin/users/%d", u.ID)
	patch := func(body string) answer {
		return e.svc.do(ctx, call{method: http.MethodPatch, path: path, admin: true, body: []byte(body), contentType: "application/json"})
	}
	return func() {
		a := patch(`{"credits": 9223372036854775807}`)
		r.expect("credits 2^63−1", a.is(400, "invalid_field (credits)"), "400 invalid_field (credits)", a.label())
		a = patch(`{"credits": 5, "role": "admin"}`)
		r.expect("unknown field", a.is(400, "invalid_field (role)"), "400 invalid_field (role)", a.label())
		a = patch(`{"credits": 1000000000000}`)
		r.expect("credits 10^12", a.is(200, ""), "200", a.label())

		// The review's scenario: a reservation at the top of the range, canceled, refunded.
		rid := e.run + "-refund"
		done := make(chan answer, 1)
		go func() { done <- e.svc.upsize(ctx, u.Key, id, "2x", rid) }()
		if _, err := e.svc.waitState(ctx, u.Key, rid, 30*time.Second, "queued", "running"); err != nil {
			r.fail(err)
		}
		c := e.svc.cancel(ctx, u.Key, rid)
		r.expect("cancel (refund at 10^12)", c.is(200, ""), "200 canceled", c.label())
		up := <-done
		r.expect("the canceled upsize", up.is(409, "user_canceled_request"), "409 user_canceled_request", up.label())
		left, err := e.svc.credits(ctx, u.ID)
		if err != nil {
			r.fail(err)
			return
		}
		r.expect("credits after the refund", left == maxCredits, "10^12", strconv.FormatInt(left, 10))
	}, nil
}
