package policy

import (
	"testing"
	"time"

	"upsize/internal/errcode"
	"upsize/internal/store"
)

var (
	paid     = store.User{ID: 1, Plan: store.PlanPaid, Billing: store.BillingOK}
	free     = store.User{ID: 2, Plan: store.PlanFree, Billing: store.BillingOK}
	settings = store.Settings{Model: "lanczos3", Costs: map[string]int64{"2x": 1, "4x": 2, "8x": 4}}
	limits   = Limits{MaxInputPixels: 50_000_000, MaxOutputPixels: 100_000_000}
)

func img(w, h int, format string) store.Image {
	return store.Image{ID: 42, OwnerID: 1, Width: w, Height: h, Scale: "1x", Format: format}
}

// Each rule on its own, and that an earlier rule answers before a later one.
func TestCheckAppliesTheRulesInOrder(t *testing.T) {
	premium := img(100, 100, "png")
	premium.Collection = "premium"
	upscaled := img(100, 100, "png")
	upscaled.Scale = "2x"
	billingFailed := paid
	billingFailed.Billing = store.BillingFailed
	premiumUser := paid
	premiumUser.Premium = true
	noCost := store.Settings{Model: "lanczos3", Costs: map[string]int64{"2x": 1}}
	for _, c := range []struct {
		name     string
		user     store.User
		src      store.Image
		scale    string
		scaleOK  bool
		settings store.Settings
		want     string // the refusal's data, "" for admitted
	}{
		{"5 premium collection", paid, premium, "2x", true, settings, "premium_collection(42)"},
		{"5 premium user passes", premiumUser, premium, "2x", true, settings, ""},
		{"6 already upscaled", paid, upscaled, "2x", true, settings, "cannot_upscale_already_upscaled_image"},
		{"5 before 6", paid, func() store.Image { i := premium; i.Scale = "4x"; return i }(), "2x", true, settings, "premium_collection(42)"},
		{"7 billing failed", billingFailed, img(10, 10, "png"), "2x", true, settings, "failed_billing"},
		{"6 before 7", billingFailed, upscaled, "2x", true, settings, "cannot_upscale_already_upscaled_image"},
		{"8 invalid scale", paid, img(10, 10, "png"), "", false, settings, "invalid_scale_size"},
		{"7 before 8", billingFailed, img(10, 10, "png"), "", false, settings, "failed_billing"},
		{"9 free user reaching 4K", free, img(1920, 1080, "png"), "2x", true, settings, "free_user_cannot_use_4k"},
		{"9 free user under 4K", free, img(1919, 1080, "png"), "2x", true, settings, ""},
		{"9 paid user at 4K", paid, img(1920, 1080, "png"), "2x", true, settings, ""},
		{"10 no model", paid, img(10, 10, "png"), "2x", true, store.Settings{Costs: settings.Costs}, "no_model_exception (upsize)"},
		{"10 unknown model", paid, img(10, 10, "png"), "2x", true, store.Settings{Model: "bicubic9", Costs: settings.Costs}, "unknown_model (bicubic9)"},
		{"8 before 10", paid, img(10, 10, "png"), "", false, store.Settings{}, "invalid_scale_size"},
		{"11 no cost for the scale", paid, img(10, 10, "png"), "4x", true, noCost, "no_credit_cost_info_at_admin"},
		{"11 a cost of 0 is a cost", paid, img(10, 10, "png"), "2x", true, store.Settings{Model: "nearest", Costs: map[string]int64{"2x": 0}}, ""},
		{"12 input pixels", paid, img(10_000, 5_001, "png"), "2x", true, settings, "image_too_large"},
		{"12 output pixels", paid, img(2_000, 1_600, "png"), "8x", true, settings, "image_too_large"},
		{"12 WebP side", paid, img(4_200, 1_000, "webp"), "4x", true, settings, "image_too_large"},
		{"12 JPEG side", paid, img(1, 9_000, "jpeg"), "8x", true, settings, "image_too_large"},
		{"12 PNG has no such side limit", paid, img(1, 9_000, "png"), "8x", true, settings, ""},
		{"11 before 12", paid, img(10_000, 10_000, "png"), "4x", true, noCost, "no_credit_cost_info_at_admin"},
	} {
		up, e := Check(c.user, c.src, c.scale, c.scaleOK, c.settings, limits)
		switch {
		case c.want == "" && e != nil:
			t.Errorf("%s: refused with %s", c.name, e)
		case c.want != "" && (e == nil || e.Data != c.want):
			t.Errorf("%s: got %v, want %s", c.name, e, c.want)
		case c.want == "" && (up.Model != c.settings.Model || up.Cost != c.settings.Costs[c.scale] || up.Scale != c.scale):
			t.Errorf("%s: admitted as %+v", c.name, up)
		}
	}
}

func TestStatusesAreTheContracts(t *testing.T) {
	_, e := Check(free, img(2000, 10, "png"), "2x", true, settings, limits)
	if e.Code.Status != 403 {
		t.Fatalf("free_user_cannot_use_4k answered %d", e.Code.Status)
	}
	_, e = Check(paid, img(10, 10, "png"), "16x", false, settings, limits)
	if e.Code != errcode.InvalidScaleSize || e.Code.Status != 400 {
		t.Fatalf("invalid scale: %v", e)
	}
}

func TestBackpressure(t *testing.T) {
	const h = time.Hour
	for _, c := range []struct {
		open, maxOpen, tasks, maxTasks int64
		work, maxWork                  time.Duration
		want                           string
	}{
		{0, 100, 0, 10, 0, h, ""},
		{99, 100, 10, 10, h, h, ""},
		{100, 100, 0, 10, 0, h, "too_many_requests"},
		{100, 100, 11, 10, 2 * h, h, "too_many_requests"}, // the user's own bound answers first
		{5, 0, 11, 10, 0, h, "queue_full"},                // no per-user bound; too many tasks
		{5, 0, 3, 10, h + time.Second, h, "queue_full"},   // few tasks, too much work
		{5, 0, 3, 10, 10 * h, 0, ""},                      // no work bound
		{1000, 0, 0, 10, 0, h, ""},
	} {
		e := Backpressure(c.open, c.maxOpen, c.tasks, c.maxTasks, c.work, c.maxWork)
		if (e == nil) != (c.want == "") || (e != nil && e.Data != c.want) {
			t.Errorf("%+v: got %v", c, e)
		}
	}
}

func TestScaleFactor(t *testing.T) {
	for s, want := range map[string]int{"2x": 2, "4x": 4, "8x": 8, "16x": 0, "": 0, "2X": 0} {
		if got, ok := ScaleFactor(s); got != want || ok != (want != 0) {
			t.Errorf("ScaleFactor(%q) = %d, %v", s, got, ok)
		}
	}
}

func TestWorkGrowsWithPixelsAndFormat(t *testing.T) {
	m := DefaultWork
	small, big := m.Estimate("jpeg", 512*512*4), m.Estimate("jpeg", 100_000_000)
	if small >= big || small < m.Fixed || big/small < 20 {
		t.Fatalf("jpeg: 1 MP %s, 100 MP %s", small, big)
	}
	if m.Estimate("png", 4_000_000) <= m.Estimate("jpeg", 4_000_000) {
		t.Fatal("PNG results cost more than JPEG ones")
	}
	if m.Estimate("tiff", 1_000_000) < m.Estimate("webp", 1_000_000) {
		t.Fatal("an unknown format must cost as the dearest")
	}
}

func TestWait(t *testing.T) {
	const m = time.Minute
	too, full := errcode.TooManyRequests.E(), errcode.QueueFull.E()
	for _, c := range []struct {
		refusal               *errcode.Error
		open, tasks, maxTasks int64
		work, maxWork         time.Duration
		want                  time.Duration
	}{
		{nil, 0, 0, 10, m, m, 0},
		{too, 4, 50, 100, 8 * m, 0, 2 * m},         // a quarter of the work: about one of four done
		{full, 0, 50, 100, 90 * m, 60 * m, 30 * m}, // the work over its bound
		{full, 0, 120, 100, 60 * m, 0, 10 * m},     // 20 tasks over of 120: a sixth of the work
	} {
		if got := Wait(c.refusal, c.open, c.tasks, c.maxTasks, c.work, c.maxWork); got != c.want {
			t.Errorf("%+v: %s, want %s", c, got, c.want)
		}
	}
}
