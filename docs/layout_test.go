package docs

import (
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// module is this repository's module path.
const module = "github.com/sessionid/caddy-sessionid"

// TestThePackageTableIsTheCode holds how-it-works.md's "Where the code is"
// to the code: every package of the repository has a row, every row's
// package exists, and each package's non-test code imports exactly the
// packages of this repository its row names. That keeps the layers: the
// handler imports the subsystems, never the other way round.
func TestThePackageTableIsTheCode(t *testing.T) {
	documented := documentedImports(t)
	actual := actualImports(t)
	for pkg, imports := range actual {
		want, ok := documented[pkg]
		if !ok {
			t.Errorf("package %s has no row in how-it-works.md's table", shown(pkg))
			continue
		}
		if !slices.Equal(imports, want) {
			t.Errorf("%s imports %v of this repository; the table says %v", shown(pkg), shownAll(imports), shownAll(want))
		}
	}
	for pkg := range documented {
		if _, ok := actual[pkg]; !ok {
			t.Errorf("the table has a row for %s, which is not a package", shown(pkg))
		}
	}
	if imports := actual["caddymodule"]; !slices.Contains(imports, "events") {
		t.Errorf("the handler does not import events (%v): the check reads the wrong imports", imports)
	}
	for pkg, imports := range actual {
		if slices.Contains(imports, "caddymodule") && pkg != "" {
			t.Errorf("%s imports the handler; only the root package may", shown(pkg))
		}
	}
}

// documentedImports reads the table's rows as package (relative to the
// module, "" for the root) → the packages of this repository it imports.
func documentedImports(t *testing.T) map[string][]string {
	t.Helper()
	raw, err := os.ReadFile("how-it-works.md")
	if err != nil {
		t.Fatal(err)
	}
	section := string(raw)
	start := strings.Index(section, "## Where the code is")
	if start < 0 {
		t.Fatal("how-it-works.md has no section 'Where the code is'")
	}
	section = section[start:]
	code := regexp.MustCompile("`([^`]+)`")
	rows := map[string][]string{}
	for _, line := range strings.Split(section, "\n") {
		cells := strings.Split(line, " | ")
		if !strings.HasPrefix(line, "| `") || len(cells) != 3 {
			continue
		}
		var imports []string
		for _, m := range code.FindAllStringSubmatch(cells[2], -1) {
			imports = append(imports, packageOf(m[1]))
		}
		slices.Sort(imports)
		for _, m := range code.FindAllStringSubmatch(cells[0], -1) {
			switch path := m[1]; {
			case path == "sessionid.go":
				rows[""] = imports
			case strings.HasSuffix(path, "/"):
				rows[strings.TrimSuffix(path, "/")] = imports
			}
		}
	}
	if len(rows) < 10 {
		t.Fatalf("read %d package rows from the table; its shape changed", len(rows))
	}
	return rows
}

// packageOf is the package a name in the imports column means.
func packageOf(name string) string {
	if name == "caddysessionid" {
		return ""
	}
	return strings.TrimSuffix(name, "/")
}

// actualImports asks go list for every package of the repository and the
// repository's packages its non-test files import.
func actualImports(t *testing.T) map[string][]string {
	t.Helper()
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}}{{range .Imports}} {{.}}{{end}}", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	packages := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		var imports []string
		for _, imp := range fields[1:] {
			if imp == module || strings.HasPrefix(imp, module+"/") {
				imports = append(imports, relative(imp))
			}
		}
		slices.Sort(imports)
		packages[relative(fields[0])] = imports
	}
	return packages
}

func relative(importPath string) string {
	return strings.TrimPrefix(strings.TrimPrefix(importPath, module), "/")
}

func shown(pkg string) string {
	if pkg == "" {
		return "the root package"
	}
	return pkg + "/"
}

func shownAll(pkgs []string) []string {
	out := make([]string, len(pkgs))
	for i, p := range pkgs {
		out[i] = shown(p)
	}
	return out
}
