package check

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	digest "github.com/opencontainers/go-digest"

	"upsize/internal/config"
)

// dockerfile is the parsed Dockerfile: its stages with ARG defaults substituted in FROM.
type dockerfile struct {
	stages []instructions.Stage
	args   map[string]string
}

func readDockerfile(t *testing.T) []byte {
	t.Helper()
	dt, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	return dt
}

// parseDockerfile parses with BuildKit and reports every parser and linter warning (experimental rules
// included) as an error.
func parseDockerfile(dt []byte) (*dockerfile, []string) {
	var warnings []string
	res, err := parser.Parse(bytes.NewReader(dt))
	if err != nil {
		return nil, []string{err.Error()}
	}
	for _, w := range res.Warnings {
		warnings = append(warnings, "parser: "+w.Short)
	}
	lint := linter.New(&linter.Config{
		ExperimentalAll: true,
		Warn: func(rule, _, _, msg string, loc []parser.Range) {
			line := 0
			if len(loc) > 0 {
				line = loc[0].Start.Line
			}
			warnings = append(warnings, fmt.Sprintf("line %d: %s: %s", line, rule, msg))
		},
	})
	stages, metaArgs, err := instructions.Parse(res.AST, lint)
	if err != nil {
		return nil, append(warnings, err.Error())
	}
	d := &dockerfile{stages: stages, args: map[string]string{}}
	for _, a := range metaArgs {
		for _, kv := range a.Args {
			d.args[kv.Key] = kv.ValueString()
		}
	}
	return d, warnings
}

// base is a stage's FROM with global ARG defaults substituted.
func (d *dockerfile) base(s instructions.Stage) string {
	b := s.BaseName
	for k, v := range d.args {
		b = strings.ReplaceAll(b, "${"+k+"}", v)
		b = strings.ReplaceAll(b, "$"+k, v)
	}
	return b
}

func (d *dockerfile) final() instructions.Stage { return d.stages[len(d.stages)-1] }

// offlineResolver stands in for a registry: BuildKit's lint pass resolves base images for their config
// (environment, platform). A plausible config keeps the checks that need one running without a network.
type offlineResolver struct{}

func (offlineResolver) ResolveImageConfig(_ context.Context, ref string, _ sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if strings.Contains(ref, "golang") {
		env = []string{"PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"GOLANG_VERSION=1.26.8", "GOTOOLCHAIN=local", "GOPATH=/go"}
	}
	cfg, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config":       map[string]any{"Env": env},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{digest.FromString(ref).String()}},
	})
	return ref, "", cfg, err
}

// lintDockerfile runs BuildKit's full lint pass (what `docker build --check` runs), including the rules
// that need the stages dispatched (undefined variables, base image platform, secrets in ENV, ...).
func lintDockerfile(dt []byte) []string {
	smap := llb.NewSourceMap(nil, "Dockerfile", "Dockerfile", dt)
	smap.Definition = &llb.Definition{} // the results reference it; there is no build context here
	res, err := dockerfile2llb.DockerfileLint(context.Background(), dt, dockerfile2llb.ConvertOpt{
		SourceMap:    smap,
		MetaResolver: offlineResolver{},
	})
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	for _, w := range res.Warnings {
		line := int32(0)
		if w.Location != nil && len(w.Location.Ranges) > 0 {
			line = w.Location.Ranges[0].Start.Line
		}
		out = append(out, fmt.Sprintf("line %d: %s: %s", line, w.RuleName, w.Detail))
	}
	if res.Error != nil {
		out = append(out, "build error: "+res.Error.Message)
	}
	return out
}

func loadDockerfile(t *testing.T) *dockerfile {
	t.Helper()
	d, warnings := parseDockerfile(readDockerfile(t))
	if d == nil {
		t.Fatalf("Dockerfile: %v", warnings)
	}
	return d
}

func TestDockerfileLintsClean(t *testing.T) {
	dt := readDockerfile(t)
	_, warnings := parseDockerfile(dt)
	warnings = append(warnings, lintDockerfile(dt)...)
	for _, w := range warnings {
		t.Error(w)
	}
	// The file's own check directive may make builds stricter, never skip a rule.
	if v, _, _, ok := parser.ParseDirective("check", dt); ok {
		cfg, err := linter.ParseLintOptions(v)
		if err != nil || cfg.SkipAll || len(cfg.SkipRules) > 0 {
			t.Errorf("# check=%s: rules must not be skipped (%v)", v, err)
		}
	}
}

// The lint pass itself must notice problems: a Dockerfile with known faults yields warnings.
func TestDockerfileLintCatchesFaults(t *testing.T) {
	bad := []byte("FROM debian:bookworm-slim as Final\nENV A $UNDEFINED\nrun true\nCMD /bin/true\n")
	_, w := parseDockerfile(bad)
	w = append(w, lintDockerfile(bad)...)
	joined := strings.Join(w, "\n")
	for _, rule := range []string{"FromAsCasing", "StageNameCasing", "LegacyKeyValueFormat", "UndefinedVar", "JSONArgsRecommended", "ConsistentInstructionCasing"} {
		if !strings.Contains(joined, rule) {
			t.Errorf("lint missed %s; got:\n%s", rule, joined)
		}
	}
}

// checkDockerfile: the final image is bookworm-slim with runtime libraries only, runs as a numeric
// non-root user, starts in exec form, carries MALLOC_ARENA_MAX, and holds both binaries.
func checkDockerfile(d *dockerfile) []error {
	var errs []error
	fail := func(f string, a ...any) { errs = append(errs, fmt.Errorf(f, a...)) }
	if len(d.stages) < 2 {
		return []error{fmt.Errorf("%d stages, want a build stage and a runtime stage", len(d.stages))}
	}
	final := d.final()
	for _, s := range d.stages {
		if !isBookworm(d.base(s)) {
			fail("stage %q: base %s is not Debian bookworm (build and runtime libvips must match)", s.Name, d.base(s))
		}
	}
	if b := d.base(final); !strings.HasPrefix(b, "debian:bookworm-slim") {
		fail("final stage: base %s, want debian:bookworm-slim", b)
	}

	var user string
	var env = map[string]string{}
	var starts []instructions.ShellDependantCmdLine
	var finalPkgs []string
	binaries := map[string]string{} // image path -> build-stage path
	for _, c := range final.Commands {
		switch c := c.(type) {
		case *instructions.UserCommand:
			user = c.User
		case *instructions.EnvCommand:
			for _, kv := range c.Env {
				env[kv.Key] = kv.Value
			}
		case *instructions.CmdCommand:
			starts = append(starts, c.ShellDependantCmdLine)
		case *instructions.EntrypointCommand:
			starts = append(starts, c.ShellDependantCmdLine)
		case *instructions.RunCommand:
			pkgs, err := aptInstalls(c.CmdLine)
			if err != nil {
				fail("final stage RUN: %v", err)
			}
			finalPkgs = append(finalPkgs, pkgs...)
		case *instructions.CopyCommand:
			if c.From == "" {
				fail("final stage COPY %v from the build context: only build outputs belong in the image", c.SourcePaths)
				continue
			}
			for _, src := range c.SourcePaths {
				if regexp.MustCompile(`^/usr/local/go|^/go(/|$)|gcc|/root/`).MatchString(src) {
					fail("final stage copies %s from %s: toolchain files", src, c.From)
				}
				dst := c.DestPath
				if strings.HasSuffix(dst, "/") || len(c.SourcePaths) > 1 {
					dst = path.Join(dst, path.Base(src))
				}
				binaries[dst] = src
			}
		}
	}

	// User: numeric uid:gid, not root (Kubernetes' runAsNonRoot can verify only numeric users).
	uid, gid, ok := strings.Cut(user, ":")
	u, uerr := strconv.Atoi(uid)
	g, gerr := strconv.Atoi(gid)
	if user == "" || !ok || uerr != nil || gerr != nil || u == 0 || g == 0 {
		fail("final stage USER %q: want numeric non-root uid:gid", user)
	}
	if len(starts) == 0 {
		fail("final stage has neither ENTRYPOINT nor CMD")
	}
	for _, s := range starts {
		if s.PrependShell {
			fail("ENTRYPOINT/CMD %v in shell form: a shell as PID 1 does not pass SIGTERM on", s.CmdLine)
		} else if _, ok := binaries[s.CmdLine[0]]; !ok {
			fail("ENTRYPOINT/CMD runs %s, which the image does not hold", s.CmdLine[0])
		}
	}
	if env["MALLOC_ARENA_MAX"] != "2" {
		fail("MALLOC_ARENA_MAX=%q, want 2 (glibc arenas fragment under libvips)", env["MALLOC_ARENA_MAX"])
	}
	for name := range env {
		if name != "MALLOC_ARENA_MAX" && !slices.Contains(config.Names(), name) {
			fail("ENV %s is not read by internal/config", name)
		}
	}
	if !slices.Contains(finalPkgs, "libvips42") {
		fail("final stage does not install libvips42 (the binaries link libvips)")
	}
	for _, p := range finalPkgs {
		if buildTool.MatchString(p) {
			fail("final stage installs %s: build tools belong in the build stage", p)
		}
	}

	// Both binaries, built from their commands in an earlier stage.
	for _, bin := range []struct{ image, pkg string }{{apiBinary, "./cmd/api"}, {workerBinary, "./cmd/worker"}} {
		src, ok := binaries[bin.image]
		if !ok {
			fail("the image has no %s", bin.image)
			continue
		}
		built := false
		for _, s := range d.stages[:len(d.stages)-1] {
			for _, c := range s.Commands {
				if r, ok := c.(*instructions.RunCommand); ok && strings.Contains(strings.Join(r.CmdLine, " "), "-o "+src+" "+bin.pkg) {
					built = true
				}
			}
		}
		if !built {
			fail("%s: no build stage RUN builds %s with -o %s", bin.image, bin.pkg, src)
		}
	}

	// EXPOSE documents both roles' default HTTP_ADDR ports.
	var exposed []string
	for _, c := range final.Commands {
		if e, ok := c.(*instructions.ExposeCommand); ok {
			exposed = append(exposed, e.Ports...)
		}
	}
	for _, role := range []string{"api", "worker"} {
		cfg, _ := config.Load(role, func(string) string { return "" })
		_, port, _ := strings.Cut(cfg.HTTPAddr, ":")
		if !slices.Contains(exposed, port) && !slices.Contains(exposed, port+"/tcp") {
			fail("EXPOSE %v lacks the %s port %s", exposed, role, port)
		}
	}
	return errs
}

func isBookworm(ref string) bool {
	_, tag, _ := strings.Cut(ref, ":")
	tag, _, _ = strings.Cut(tag, "@")
	return slices.Contains(strings.Split(tag, "-"), "bookworm")
}

// buildTool matches Debian packages that compile things.
var buildTool = regexp.MustCompile(`^(gcc|g\+\+|cpp|clang|llvm|make|cmake|build-essential|pkg-config|pkgconf|golang|git|binutils)(-.*)?$|-dev$`)

// aptInstalls returns the packages a RUN installs with apt, and an error if it installs them with
// recommended packages or leaves apt's lists in the layer.
func aptInstalls(cmdLine []string) ([]string, error) {
	script := strings.Join(cmdLine, " ")
	var pkgs []string
	for _, part := range regexp.MustCompile(`&&|;|\|\|`).Split(script, -1) {
		f := strings.Fields(part)
		for i := 0; i+1 < len(f); i++ {
			if (f[i] == "apt-get" || f[i] == "apt") && f[i+1] == "install" {
				if !slices.Contains(f, "--no-install-recommends") {
					return nil, fmt.Errorf("%q installs recommended packages too", strings.TrimSpace(part))
				}
				for _, a := range f[i+2:] {
					if !strings.HasPrefix(a, "-") && a != "\\" {
						pkgs = append(pkgs, strings.SplitN(a, "=", 2)[0])
					}
				}
			}
		}
	}
	if len(pkgs) > 0 && !strings.Contains(script, "rm -rf /var/lib/apt/lists/*") {
		return pkgs, fmt.Errorf("apt lists stay in the layer (rm -rf /var/lib/apt/lists/* in the same RUN)")
	}
	return pkgs, nil
}

// dockerfileUID is the numeric user the image runs as; manifests must run the service as that user.
func dockerfileUID(t *testing.T) int64 {
	t.Helper()
	d := loadDockerfile(t)
	uid := int64(-1)
	for _, c := range d.final().Commands {
		if u, ok := c.(*instructions.UserCommand); ok {
			s, _, _ := strings.Cut(u.User, ":")
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				t.Fatalf("USER %s: %v", u.User, err)
			}
			uid = n
		}
	}
	if uid < 0 {
		t.Fatal("Dockerfile: no USER in the final stage")
	}
	return uid
}

func TestDockerfileFinalStage(t *testing.T) {
	for _, err := range checkDockerfile(loadDockerfile(t)) {
		t.Error(err)
	}
}

// checkDockerignore: every file the binaries are built from reaches the build (not excluded, under a
// COPY of the build stage), COPY sources are not excluded, and local state and history stay out.
func checkDockerignore(d *dockerfile, ignore []byte, needed []string) []error {
	var errs []error
	patterns, err := ignorefile.ReadAll(bytes.NewReader(ignore))
	if err != nil {
		return []error{err}
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return []error{err}
	}
	ignored := func(p string) bool {
		// A path is out if it or a parent directory is excluded, as in the context transfer.
		m, _ := pm.MatchesOrParentMatches(p)
		return m
	}
	var copied []string
	for _, s := range d.stages {
		for _, c := range s.Commands {
			if cp, ok := c.(*instructions.CopyCommand); ok && cp.From == "" {
				for _, src := range cp.SourcePaths {
					src = path.Clean(src)
					copied = append(copied, src)
					if ignored(src) {
						errs = append(errs, fmt.Errorf("COPY %s: excluded by .dockerignore", src))
					}
				}
			}
		}
	}
	for _, f := range needed {
		if ignored(f) {
			errs = append(errs, fmt.Errorf("%s: needed by the build, excluded by .dockerignore", f))
		}
		in := false
		for _, c := range copied {
			in = in || f == c || strings.HasPrefix(f, c+"/")
		}
		if !in {
			errs = append(errs, fmt.Errorf("%s: needed by the build, copied by no COPY", f))
		}
	}
	for _, p := range []string{".git/config", "var/redis/appendonly.aof", "bin/api", "deploy/k8s/base/kustomization.yaml", "internal/jobs/jobs_test.go"} {
		if !ignored(p) {
			errs = append(errs, fmt.Errorf("%s reaches the build context", p))
		}
	}
	return errs
}

// buildInputs lists the repository files `go build ./cmd/api ./cmd/worker` reads, relative to the root.
func buildInputs(t *testing.T) []string {
	t.Helper()
	const tmpl = `{{if .Module}}{{if eq .Module.Path "upsize"}}{{$d := .Dir}}` +
		`{{range .GoFiles}}{{$d}}/{{.}}{{"\n"}}{{end}}{{range .CgoFiles}}{{$d}}/{{.}}{{"\n"}}{{end}}` +
		`{{range .CFiles}}{{$d}}/{{.}}{{"\n"}}{{end}}{{range .HFiles}}{{$d}}/{{.}}{{"\n"}}{{end}}` +
		`{{range .EmbedFiles}}{{$d}}/{{.}}{{"\n"}}{{end}}{{end}}{{end}}`
	cmd := exec.Command("go", "list", "-deps", "-f", tmpl, "./cmd/api", "./cmd/worker")
	cmd.Dir = repoRoot
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	files := []string{"go.mod", "go.sum"}
	for _, l := range strings.Fields(string(out)) {
		rel, err := filepath.Rel(root, l)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, filepath.ToSlash(rel))
	}
	if len(files) < 10 {
		t.Fatalf("go list found only %v", files)
	}
	return files
}

func TestDockerignoreKeepsBuildInputs(t *testing.T) {
	ignore, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range checkDockerignore(loadDockerfile(t), ignore, buildInputs(t)) {
		t.Error(err)
	}
}
