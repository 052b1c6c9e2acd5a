package main

import (
	"io"
	"math/rand/v2"
	"strings"
	"testing"
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
	if cfg.AdminToken != "from-env" || cfg.RedisURL != "redis://127.0.0.1:6390/0" || cfg.Configure || cfg.Seed == 0 {
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
