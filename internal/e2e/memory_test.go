package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"

	"upsize/internal/testenv"
	"upsize/internal/testimg"
)

// rssKB reads a field of /proc/<pid>/status (VmRSS, VmHWM) in kB.
func rssKB(t testing.TB, pid int, field string) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// The API's memory stays within what its settings allow whatever clients send at once (README, "Limits"):
// RSS ≤ baseline + UPLOAD_MEMORY + VALIDATE_MEMORY + connections × their cost. Measured on a build without
// the race detector (whose shadow memory would swamp the figures), under 40 concurrent 30 MB uploads and
// concurrent large progressive JPEGs, which once took the API to 2.25 GB.
func TestAPIMemoryStaysWithinItsBound(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a plain binary and holds hundreds of MB")
	}
	plain := t.TempDir()
	if out, err := exec.Command("go", "build", "-o", plain+"/", "upsize/cmd/api").CombinedOutput(); err != nil {
		t.Fatalf("building: %v\n%s", err, out)
	}
	const uploadMemory, validateMemory = 64 << 20, 256 << 20
	s := newService(t)
	api := startFrom(t, plain, "api", s.with(map[string]string{
		"UPLOAD_MEMORY": strconv.Itoa(uploadMemory), "VALIDATE_MEMORY": strconv.Itoa(validateMemory),
		"UPLOAD_WAIT": "30s",
	}))
	_, key, _ := s.setup(api, 10) // also warms the API up: a user, a key, one upload
	pid := api.cmd.Process.Pid
	baseline := rssKB(t, pid, "VmRSS")

	// 40 uploads of 30 MB of noise (valid PNGs, so each is held and decoded) and 4 progressive JPEGs whose
	// decodes hold ~150 MB each.
	big := testimg.EncodePNG(testimg.Noise(3150, 3150, 3)) // 29.8 MB: noise does not compress
	progressive := testimg.ProgressiveJPEG(5000, 5000, true)
	t.Logf("uploads: %d × %.1f MB PNG, 4 × %.1f MB progressive JPEG", 40, float64(len(big))/1e6, float64(len(progressive))/1e6)
	base := "http://" + api.addr
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	// The two bodies are built once and shared (each request reads its own bytes.Reader over them). With
	// a copy per request (44 × 30 MB in this process, under the race detector, beside other test
	// binaries) uploads twice failed in the client without ever reaching a handler: most likely the
	// client stalled between dialling and sending the header for longer than the API's
	// ReadHeaderTimeout (10 s), after which the API closes a connection without an answer, as it should.
	type body struct {
		ct   string
		data []byte
	}
	multipart := func(file []byte) body { ct, b := testenv.Multipart(file, nil); return body{ct, b} }
	bigBody, progressiveBody := multipart(big), multipart(progressive)
	send := func(b body) {
		defer wg.Done()
		a := call(t, "POST", base+"/api/images", map[string]string{"X-Api-Key": key}, b.data, b.ct)
		mu.Lock()
		statuses[a.status]++
		mu.Unlock()
	}
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go send(bigBody)
	}
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go send(progressiveBody)
	}
	wg.Wait()
	peak := rssKB(t, pid, "VmHWM")
	after := rssKB(t, pid, "VmRSS")
	// What the bound leaves for the rest: Go's runtime and garbage not yet collected, 45 connections'
	// buffers, libvips' threads and caches.
	const slackKB = 96 << 10
	bound := baseline + (uploadMemory+validateMemory)>>10 + slackKB
	t.Logf("answers %v; RSS baseline %d MB, peak %d MB, after %d MB; bound %d MB", statuses,
		baseline>>10, peak>>10, after>>10, bound>>10)
	if statuses[201] == 0 {
		t.Fatalf("no upload succeeded: %v", statuses)
	}
	for st := range statuses {
		if st != 201 && st != 503 {
			t.Errorf("unexpected answers: %v", statuses)
		}
	}
	if peak > bound {
		t.Fatalf("peak RSS %d MB over the bound %d MB (baseline %d + UPLOAD_MEMORY %d + VALIDATE_MEMORY %d + %d)",
			peak>>10, bound>>10, baseline>>10, uploadMemory>>20, validateMemory>>20, slackKB>>10)
	}
}
