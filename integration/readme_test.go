package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sessionid/caddy-sessionid/internal/jstools"
)

// readmeSnippet returns the code block that follows <!-- spawn:<lang> --> in
// the README, or in docs/spawn.md for the languages the README leaves there
// to stay short.
func readmeSnippet(t *testing.T, lang string) string {
	t.Helper()
	file := filepath.Join(repoRoot, "README.md")
	if lang == "go" {
		file = filepath.Join(repoRoot, "docs", "spawn.md")
	}
	return markedBlock(t, file, "<!-- spawn:"+lang+" -->\n```[a-z]*\n")
}

// derivationSnippet returns docs/derivation.md's code block in lang.
func derivationSnippet(t *testing.T, lang string) string {
	t.Helper()
	return markedBlock(t, filepath.Join(repoRoot, "docs", "derivation.md"), "```"+lang+"\n")
}

func markedBlock(t *testing.T, file, opening string) string {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)" + opening + "(.*?)```").FindStringSubmatch(string(raw))
	if m == nil {
		t.Fatalf("%s has no block opened by %q", file, opening)
	}
	return m[1]
}

// TestReadmeSpawnSnippets runs the "spawn a worker" snippets of the README and
// docs/spawn.md as they stand against the proxy in front of a real opencode.
// They all derive the same id, so the first run creates the worker and the
// others resume it.
func TestReadmeSpawnSnippets(t *testing.T) {
	model := startFakeModel(t)
	oc := startOpencode(t, model, "")
	proxy := startCaddy(t, oc)
	oc.waitHealthy(t)

	run := func(t *testing.T, dir string, name string, args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "BASE="+proxy.URL)
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != ModelReply {
			t.Fatalf("%s: %v\n%s", name, err, out)
		}
	}

	t.Run("shell", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Symlink(caddyBin, filepath.Join(dir, "caddy")); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "spawn.sh"), []byte("set -euo pipefail\n"+readmeSnippet(t, "sh")), 0o755); err != nil {
			t.Fatal(err)
		}
		run(t, dir, "bash", "spawn.sh")
	})
	t.Run("python", func(t *testing.T) {
		dir := t.TempDir()
		program := derivationSnippet(t, "python") + "\n" + readmeSnippet(t, "python")
		if err := os.WriteFile(filepath.Join(dir, "spawn.py"), []byte(program), 0o644); err != nil {
			t.Fatal(err)
		}
		run(t, dir, "python3", "spawn.py")
	})
	t.Run("typescript", func(t *testing.T) {
		tools := jstools.Ensure(t)
		// Inside the tools folder, so that the SDK resolves from its node_modules.
		dir, err := os.MkdirTemp(tools, "spawn-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		snippet := readmeSnippet(t, "typescript")
		imports, body, _ := strings.Cut(snippet, "\n\n")
		program := imports + "\n" + derivationSnippet(t, "typescript") + "\n" + body
		if err := os.WriteFile(filepath.Join(dir, "package.json"), []byte(`{"type":"module"}`), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "spawn.ts"), []byte(program), 0o644); err != nil {
			t.Fatal(err)
		}
		tsc := exec.Command(jstools.Bin(tools, "tsc"), "--strict", "--target", "es2022", "--module", "nodenext",
			"--moduleResolution", "nodenext", "--types", "node", "--skipLibCheck", "--outDir", dir, filepath.Join(dir, "spawn.ts"))
		tsc.Dir = dir
		if out, err := tsc.CombinedOutput(); err != nil {
			t.Fatalf("tsc: %v\n%s", err, out)
		}
		run(t, dir, "node", "spawn.js")
	})
	t.Run("go", func(t *testing.T) {
		// Inside the module, so that it builds against this idmap.
		dir, err := os.MkdirTemp(filepath.Join(repoRoot, "integration"), "spawn-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(readmeSnippet(t, "go")), 0o644); err != nil {
			t.Fatal(err)
		}
		run(t, repoRoot, "go", "run", "./integration/"+filepath.Base(dir))
	})
}
