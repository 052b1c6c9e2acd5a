package main

import (
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"upsize/internal/jobs"
)

func TestParseBaseOnlyLoopbackByDefault(t *testing.T) {
	for _, tc := range []struct {
		base        string
		allowRemote bool
		ok          bool
	}{
		{"http://127.0.0.1:8080", false, true},
		{"http://127.3.4.5", false, true},
		{"https://127.0.0.1/", false, true},
		{"http://localhost:8080", false, true},
		{"http://LOCALHOST", false, true},
		{"http://[::1]:8080", false, true},
		{"http://10.0.0.1:8080", false, false},
		{"http://0.0.0.0:8080", false, false},
		{"http://128.0.0.1", false, false},
		{"http://[::2]:8080", false, false},
		{"http://example.com", false, false},
		{"http://localhost.example.com", false, false},
		{"http://127.0.0.1.nip.io", false, false},
		{"ftp://127.0.0.1", false, false},
		{"127.0.0.1:8080", false, false},
		{"http://", false, false},
		{"http://example.com", true, true},
		{"http://10.0.0.1:8080", true, true},
		{"ftp://example.com", true, false},
	} {
		u, err := parseBase(tc.base, tc.allowRemote)
		if (err == nil) != tc.ok {
			t.Errorf("parseBase(%q, allowRemote=%v): err %v, want ok=%v", tc.base, tc.allowRemote, err, tc.ok)
		}
		if err == nil && strings.HasSuffix(u.String(), "/") {
			t.Errorf("parseBase(%q) = %q keeps a trailing slash", tc.base, u)
		}
	}
}

func TestParseConfigRefusesRemoteWithoutFlag(t *testing.T) {
	_, err := parseConfig([]string{"-admin-token", "x", "-base", "http://192.0.2.1:8080"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "-allow-remote") {
		t.Fatalf("remote base without -allow-remote: err %v", err)
	}
	cfg, err := parseConfig([]string{"-admin-token", "x", "-base", "http://192.0.2.1:8080", "-allow-remote"}, io.Discard)
	if err != nil || cfg.Base.Host != "192.0.2.1:8080" {
		t.Fatalf("with -allow-remote: %v, %+v", err, cfg)
	}
}

func TestParseConfigChecks(t *testing.T) {
	for _, args := range [][]string{
		{}, // no admin token
		{"-admin-token", "x", "-burst", "-n", "0"},
		{"-admin-token", "x", "-rate", "0"},
		{"-admin-token", "x", "-cancel-share", "1.5"},
		{"-admin-token", "x", "-scales", "3x:1"},
		{"-admin-token", "x", "-scales", "2x:0"},
		{"-admin-token", "x", "-sizes", "512"},
		{"-admin-token", "x", "-costs", "2x"},
		{"-admin-token", "x", "-poll-interval", "0s"},
		{"-admin-token", "x", "extra"},
		{"-admin-token", "x", "-out", "report.md"},
		{"-admin-token", "x", "-follow", "websocket"},
	} {
		t.Setenv("ADMIN_TOKEN", "")
		if _, err := parseConfig(args, io.Discard); err == nil {
			t.Errorf("parseConfig(%q) accepted", args)
		}
	}
}

func TestParseConfigDefaults(t *testing.T) {
	t.Setenv("ADMIN_TOKEN", "from-env")
	t.Setenv("REDIS_URL", "redis://127.0.0.1:6390/0")
	cfg, err := parseConfig(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.AdminToken != "from-env" || cfg.RedisURL != "redis://127.0.0.1:6390/0" || cfg.Configure || cfg.Seed == 0 || cfg.Follow != followPoll {
		t.Fatalf("defaults: %+v", cfg)
	}
	if len(cfg.Sizes) != 3 || cfg.Costs["8x"] != 4 || cfg.Scales[0] != (choice{"2x", 70}) {
		t.Fatalf("default mixes: %+v %+v %+v", cfg.Sizes, cfg.Scales, cfg.Costs)
	}
}

func TestMixPicksByWeight(t *testing.T) {
	m, err := parseMix("2x:70,4x:25, 8x:5,8x:0", parseScale)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	got := map[string]int{}
	const n = 20000
	for range n {
		got[m.pick(r)]++
	}
	for name, want := range map[string]float64{"2x": 0.70, "4x": 0.25, "8x": 0.05} {
		if share := float64(got[name]) / n; share < want-0.02 || share > want+0.02 {
			t.Errorf("%s picked %.3f of the time, want %.2f", name, share, want)
		}
	}
	sizes, err := parseMix("256x256,1024x512:3", parseSize)
	if err != nil || sizes[0] != (choice{"256x256", 1}) || sizes[1] != (choice{"1024x512", 3}) {
		t.Fatalf("sizes: %v %v", sizes, err)
	}
}

func TestParseJobSpec(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want jobSpec
		str  string
	}{
		{"1024x1024:png:8x:noise", jobSpec{1024, 1024, "png", "8x", patternNoise}, "1024x1024:png:8x:noise"},
		{"64x48:jpeg:2x", jobSpec{64, 48, "jpeg", "2x", patternGradient}, "64x48:jpeg:2x"},
		{"512x512:png:4x:gradient", jobSpec{512, 512, "png", "4x", patternGradient}, "512x512:png:4x"},
	} {
		got, err := parseJobSpec(tc.in)
		if err != nil || got != tc.want || got.String() != tc.str {
			t.Errorf("parseJobSpec(%q) = %+v, %v (%q)", tc.in, got, err, got.String())
		}
	}
	for _, bad := range []string{"", "1024x1024", "1024x1024:png", "1024:png:2x", "64x64:gif:2x", "64x64:png:3x",
		"64x64:png:2x:stripes", "64x64:png:2x:noise:extra", "0x64:png:2x"} {
		if j, err := parseJobSpec(bad); err == nil {
			t.Errorf("parseJobSpec(%q) accepted: %+v", bad, j)
		}
	}
}

// The classes come from the service's own model: these are the scenarios' defaults and the near misses
// that make them what they are.
func TestJobSpecClass(t *testing.T) {
	for _, tc := range []struct {
		spec        string
		estimate    time.Duration
		class       string
		first, more string
	}{
		{"1024x1024:png:8x:noise", 5*time.Millisecond + 49*time.Millisecond*67108864/1e6, "large", jobs.QueuePaid, jobs.QueuePaidMore},
		{"1280x1280:png:4x", 5*time.Millisecond + 49*time.Millisecond*26214400/1e6, "large", jobs.QueuePaid, jobs.QueuePaidMore},
		{"1024x1024:png:4x", 5*time.Millisecond + 49*time.Millisecond*16777216/1e6, "small", jobs.QueuePaidSmall, ""},
		{"1024x1024:jpeg:8x", 5*time.Millisecond + 4500*time.Microsecond*67108864/1e6, "small", jobs.QueuePaidSmall, ""},
		{"64x64:jpeg:2x", 5*time.Millisecond + 4500*time.Microsecond*16384/1e6, "small", jobs.QueuePaidSmall, ""},
	} {
		j, err := parseJobSpec(tc.spec)
		if err != nil {
			t.Fatal(err)
		}
		first, more := j.queues()
		if j.estimate() != tc.estimate || j.class() != tc.class || first != tc.first || more != tc.more {
			t.Errorf("%s: estimate %v (want %v), class %s, queues %s %s", tc.spec, j.estimate(), tc.estimate, j.class(), first, more)
		}
	}
}

func TestParseConfigScenario(t *testing.T) {
	t.Setenv("ADMIN_TOKEN", "x")
	cfg, err := parseConfig([]string{"-scenario", "heavy-burst-small-stream", "-phases", "burst,idle"}, io.Discard)
	if err != nil || cfg.Heavy.String() != "1024x1024:png:8x:noise" || cfg.HeavyN != 12 || cfg.Small.String() != "64x64:jpeg:2x" ||
		cfg.SmallN != 40 || !slices.Equal(cfg.Phases, []string{"burst", "idle"}) {
		t.Fatalf("heavy-burst-small-stream defaults: %+v %v", cfg, err)
	}
	cfg, err = parseConfig([]string{"-scenario", "fairness", "-backlog-users", "3", "-backlog-n", "30", "-trials", "5"}, io.Discard)
	if err != nil || cfg.Large.String() != "1280x1280:png:4x" || cfg.BacklogUsers != 3 || cfg.BacklogN != 30 || cfg.LoneUsers != 1 ||
		cfg.Trials != 5 || cfg.KeepBacklog || !slices.Equal(cfg.Phases, phasesAll) {
		t.Fatalf("fairness: %+v %v", cfg, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-scenario", "stampede"}, "is not heavy-burst-small-stream or fairness"},
		{[]string{"-scenario", "heavy-burst-small-stream", "-heavy", "512x512:png:4x"}, "a small task"},
		{[]string{"-scenario", "heavy-burst-small-stream", "-small", "1280x1280:png:4x"}, "a large task"},
		{[]string{"-scenario", "heavy-burst-small-stream", "-heavy-n", "0"}, "at least 1"},
		{[]string{"-scenario", "fairness", "-large", "512x512:png:4x"}, "small tasks have no lanes"},
		{[]string{"-scenario", "fairness", "-trials", "0"}, "at least 1"},
		{[]string{"-phases", "idle,idle"}, "twice"},
		{[]string{"-phases", "idle,warm"}, "is not one of"},
		{[]string{"-heavy", "1024x1024:png"}, "-heavy"},
	} {
		if _, err := parseConfig(tc.args, io.Discard); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseConfig(%q): err %v, want %q", tc.args, err, tc.want)
		}
	}
	// without -scenario the scenario flags are not checked against the classes
	if _, err := parseConfig([]string{"-heavy", "16x16:png:2x"}, io.Discard); err != nil {
		t.Errorf("mix run refused for a scenario flag: %v", err)
	}
}
