// Package docs holds the project's specifications; its tests keep them true.
package docs

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/jstools"
)

type vector struct{ Namespace, Name, ID string }

// spec reads derivation.md's test vectors and its code blocks by language.
func spec(t *testing.T) ([]vector, map[string]string) {
	t.Helper()
	raw, err := os.ReadFile("derivation.md")
	if err != nil {
		t.Fatal(err)
	}
	var vectors []vector
	row := regexp.MustCompile("^\\| `([^`]*)` \\| `([^`]*)` \\| `(ses_[^`]*)` \\|$")
	for _, line := range strings.Split(string(raw), "\n") {
		if m := row.FindStringSubmatch(line); m != nil {
			vectors = append(vectors, vector{m[1], m[2], m[3]})
		}
	}
	if len(vectors) < 10 {
		t.Fatalf("derivation.md has %d test vectors, want at least 10", len(vectors))
	}
	blocks := map[string]string{}
	for _, m := range regexp.MustCompile("(?s)```(python|typescript)\n(.*?)```").FindAllStringSubmatch(string(raw), -1) {
		blocks[m[1]] = m[2]
	}
	return vectors, blocks
}

func TestGoDerivesEveryVector(t *testing.T) {
	vectors, _ := spec(t)
	for _, v := range vectors {
		ns, err := idmap.ParseNamespace(v.Namespace)
		if err != nil {
			t.Fatal(err)
		}
		got := idmap.Derive(ns, v.Name)
		if got != v.ID {
			t.Errorf("Derive(%s, %q) = %s, want %s", v.Namespace, v.Name, got, v.ID)
		}
		if err := idmap.Validate(got); err != nil {
			t.Errorf("derived id %s is not a valid client id: %v", got, err)
		}
	}
}

// checkSnippet runs a program that reads the vectors as JSON on stdin and
// prints the ids it derives, one per line.
func checkSnippet(t *testing.T, vectors []vector, cmd *exec.Cmd) {
	t.Helper()
	in, _ := json.Marshal(vectors)
	cmd.Stdin = strings.NewReader(string(in))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	got := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(got) != len(vectors) {
		t.Fatalf("%d ids for %d vectors:\n%s", len(got), len(vectors), out)
	}
	for i, v := range vectors {
		if got[i] != v.ID {
			t.Errorf("(%s, %q): snippet says %s, want %s", v.Namespace, v.Name, got[i], v.ID)
		}
	}
}

func TestPythonSnippetDerivesEveryVector(t *testing.T) {
	vectors, blocks := spec(t)
	program := blocks["python"] + `
import json, sys
for v in json.load(sys.stdin):
    print(session_id(v["Namespace"], v["Name"]))
`
	file := filepath.Join(t.TempDir(), "derive.py")
	if err := os.WriteFile(file, []byte(program), 0o644); err != nil {
		t.Fatal(err)
	}
	checkSnippet(t, vectors, exec.Command("python3", file))
}

func TestTypeScriptSnippetDerivesEveryVector(t *testing.T) {
	vectors, blocks := spec(t)
	tools := jstools.Ensure(t)
	dir := t.TempDir()
	program := blocks["typescript"] + `
import { readFileSync } from "node:fs";
for (const v of JSON.parse(readFileSync(0, "utf8"))) console.log(sessionId(v.Namespace, v.Name));
`
	// The snippet is an ES module: tsc (module nodenext) and node both read
	// that from the nearest package.json.
	if err := os.WriteFile(filepath.Join(dir, "package.json"), []byte(`{"type":"module"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "derive.ts"), []byte(program), 0o644); err != nil {
		t.Fatal(err)
	}
	tsc := exec.Command(jstools.Bin(tools, "tsc"), "--strict", "--target", "es2022", "--module", "nodenext",
		"--moduleResolution", "nodenext", "--types", "node", "--typeRoots", filepath.Join(tools, "node_modules", "@types"),
		"--outDir", dir, filepath.Join(dir, "derive.ts"))
	if out, err := tsc.CombinedOutput(); err != nil {
		t.Fatalf("tsc: %v\n%s", err, out)
	}
	checkSnippet(t, vectors, exec.Command("node", filepath.Join(dir, "derive.js")))
}
