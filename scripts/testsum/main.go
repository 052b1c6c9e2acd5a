// Command testsum reads `go test -json` on stdin and prints one line per test (subtests folded into
// their test), the whole output of every failed test, and the totals; it exits non-zero when anything
// failed. `make test` pipes the race run through it, so the log says what ran, not only which packages.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"
)

type event struct {
	Action  string
	Package string
	Test    string
	Elapsed float64
	Output  string
}

func main() {
	start := time.Now()
	outputs := map[string]*strings.Builder{} // by package and test, kept until the test ends
	counts := map[string]int{}
	failedPkgs := 0
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			fmt.Println(sc.Text()) // build errors and the like come as plain text
			continue
		}
		key := e.Package + " " + e.Test
		switch e.Action {
		case "output":
			if e.Test == "" {
				if strings.HasPrefix(e.Output, "FAIL") || strings.Contains(e.Output, "panic:") || strings.Contains(e.Output, "[build failed]") {
					fmt.Print(e.Output)
				}
				continue
			}
			// A subtest's output goes to its top-level test too: a failing test shows all of it.
			top := e.Package + " " + strings.SplitN(e.Test, "/", 2)[0]
			b := outputs[top]
			if b == nil {
				b = &strings.Builder{}
				outputs[top] = b
			}
			b.WriteString(e.Output)
		case "pass", "fail", "skip":
			if strings.Contains(e.Test, "/") {
				continue // a subtest: its test's line says it all, and its output is its test's
			}
			out := outputs[key]
			delete(outputs, key)
			if e.Test == "" {
				fmt.Printf("%-4s %s (%.1fs)\n", map[string]string{"pass": "ok", "fail": "FAIL", "skip": "--"}[e.Action], e.Package, e.Elapsed)
				if e.Action == "fail" {
					failedPkgs++
				}
				continue
			}
			counts[e.Action]++
			fmt.Printf("  %-4s %s (%.2fs)\n", strings.ToUpper(e.Action), e.Test, e.Elapsed)
			if e.Action == "fail" && out != nil {
				fmt.Print(indent(out.String()))
			}
		}
	}
	fmt.Printf("go test: %d passed, %d failed, %d skipped, %d packages failed, in %s\n",
		counts["pass"], counts["fail"], counts["skip"], failedPkgs, time.Since(start).Round(time.Second))
	if counts["fail"] > 0 || failedPkgs > 0 {
		os.Exit(1)
	}
}

func indent(s string) string {
	return "      " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n      ") + "\n"
}
