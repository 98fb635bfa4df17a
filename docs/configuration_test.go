package docs

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/sessionid/caddy-sessionid/caddymodule"
	"github.com/sessionid/caddy-sessionid/idmap"
)

// option is one row of configuration.md's option table.
type option struct {
	Name, JSON string
	// Values are every `value` written in the value and default columns.
	Values []string
}

// documentedOptions reads the table whose rows are
// | `option` | `json name` | values | default |.
func documentedOptions(t *testing.T) ([]option, string) {
	t.Helper()
	raw, err := os.ReadFile("configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| `([a-z_]+)` \\| `([a-z_]+)` \\|(.*)\\|(.*)\\|$")
	code := regexp.MustCompile("`([^`]+)`")
	var options []option
	for _, line := range strings.Split(string(raw), "\n") {
		m := row.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		o := option{Name: m[1], JSON: m[2]}
		for _, v := range code.FindAllStringSubmatch(m[3]+m[4], -1) {
			o.Values = append(o.Values, v[1])
		}
		options = append(options, o)
	}
	if len(options) == 0 {
		t.Fatal("configuration.md has no option table")
	}
	return options, string(raw)
}

// parse runs the session_ids Caddyfile parser on one directive.
func parse(directive string) (*caddymodule.Handler, error) {
	h := new(caddymodule.Handler)
	return h, h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(directive))
}

// TestEveryDocumentedOptionParses parses every value of every documented
// option, checks that it sets only the documented JSON field, and that the
// handler's own checks (Validate, and the duplicate policy Provision parses)
// accept it.
func TestEveryDocumentedOptionParses(t *testing.T) {
	options, _ := documentedOptions(t)
	for _, o := range options {
		setsField := false
		if len(o.Values) == 0 {
			t.Errorf("%s: no value in the table", o.Name)
		}
		for _, value := range o.Values {
			h, err := parse("session_ids {\n" + o.Name + " " + value + "\n}")
			if err != nil {
				t.Errorf("%s %s: %v", o.Name, value, err)
				continue
			}
			raw, _ := json.Marshal(h)
			var fields map[string]any
			json.Unmarshal(raw, &fields)
			for name := range fields {
				if name != o.JSON {
					t.Errorf("%s %s sets JSON field %q, the table says %q", o.Name, value, name, o.JSON)
				}
			}
			setsField = setsField || fields[o.JSON] != nil
			if h.Mode == "" {
				h.Mode = caddymodule.ModeMapping // what Provision does
			}
			if err := h.Validate(); err != nil {
				t.Errorf("%s %s: %v", o.Name, value, err)
			}
			if _, err := idmap.ParseDuplicatePolicy(h.Duplicates); err != nil {
				t.Errorf("%s %s: %v", o.Name, value, err)
			}
		}
		if !setsField {
			t.Errorf("no documented value of %s sets JSON field %q", o.Name, o.JSON)
		}
	}
}

// TestEveryParsedOptionIsDocumented reads the options UnmarshalCaddyfile
// accepts from its source (the strings it compares `option` with), so that a
// new option cannot go undocumented.
func TestEveryParsedOptionIsDocumented(t *testing.T) {
	options, _ := documentedOptions(t)
	var documented []string
	for _, o := range options {
		documented = append(documented, o.Name)
	}
	parsed := parserOptions(t)
	slices.Sort(documented)
	if !slices.Equal(parsed, documented) {
		t.Errorf("UnmarshalCaddyfile accepts %v; configuration.md documents %v", parsed, documented)
	}
}

func TestUnknownOptionsAreRefused(t *testing.T) {
	for _, directive := range []string{"session_ids {\nno_such_option 1\n}", "session_ids {\nMode mapping\n}"} {
		if _, err := parse(directive); err == nil || !strings.Contains(err.Error(), "unknown session_ids option") {
			t.Errorf("%q: error %v, want an unknown option", directive, err)
		}
	}
	if _, err := parse("session_ids mapping"); err == nil {
		t.Error("an argument on the directive line parses; want an error")
	}
}

// TestEveryJSONFieldIsDocumented checks the JSON names of the handler's
// configuration fields against the table, so that a field without a Caddyfile
// option still shows up there.
func TestEveryJSONFieldIsDocumented(t *testing.T) {
	options, _ := documentedOptions(t)
	documented := map[string]bool{}
	for _, o := range options {
		documented[o.JSON] = true
	}
	handler := reflect.TypeFor[caddymodule.Handler]()
	for i := range handler.NumField() {
		field := handler.Field(i)
		name, _, _ := strings.Cut(field.Tag.Get("json"), ",")
		if !field.IsExported() || name == "-" {
			continue
		}
		if name == "" {
			t.Errorf("field %s has no JSON name", field.Name)
		} else if !documented[name] {
			t.Errorf("JSON field %q (%s) is not in configuration.md's table", name, field.Name)
		}
	}
}

// TestSyntaxBlockListsEveryOption checks the Caddyfile syntax block at the top
// of configuration.md against the table.
func TestSyntaxBlockListsEveryOption(t *testing.T) {
	options, doc := documentedOptions(t)
	m := regexp.MustCompile("(?s)```caddy\nsession_ids [^\n]*\\{\n(.*?)\\}\n```").FindStringSubmatch(doc)
	if m == nil {
		t.Fatal("configuration.md has no session_ids syntax block")
	}
	var listed, documented []string
	for _, line := range strings.Split(strings.TrimSpace(m[1]), "\n") {
		listed = append(listed, strings.Fields(line)[0])
	}
	for _, o := range options {
		documented = append(documented, o.Name)
	}
	if !slices.Equal(listed, documented) {
		t.Errorf("the syntax block lists %v, the table %v (same order)", listed, documented)
	}
}

// TestDocumentedFacts checks what else configuration.md states that code
// knows: the fields the duplicate policy compares, and the environment
// variables Caddyfile.example reads.
func TestDocumentedFacts(t *testing.T) {
	_, doc := documentedOptions(t)
	for _, field := range idmap.ComparedFields {
		if !strings.Contains(doc, "`"+field+"`") {
			t.Errorf("the duplicate policy compares %s; configuration.md does not name it", field)
		}
	}
	example, err := os.ReadFile("../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`\{\$([A-Z_]+)`).FindAllStringSubmatch(string(example), -1) {
		if !strings.Contains(doc, "`"+m[1]+"`") {
			t.Errorf("Caddyfile.example reads %s; configuration.md does not name it", m[1])
		}
	}
}

// parserOptions returns, sorted, the string literals that
// caddymodule.(*Handler).UnmarshalCaddyfile compares the option name with:
// `option == "x"` and the cases of `switch option`.
func parserOptions(t *testing.T) []string {
	t.Helper()
	file, err := parser.ParseFile(token.NewFileSet(), "../caddymodule/caddyfile.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var unmarshal *ast.FuncDecl
	for _, decl := range file.Decls {
		if f, ok := decl.(*ast.FuncDecl); ok && f.Name.Name == "UnmarshalCaddyfile" {
			unmarshal = f
		}
	}
	if unmarshal == nil {
		t.Fatal("caddymodule/caddyfile.go has no UnmarshalCaddyfile")
	}
	isOption := func(e ast.Expr) bool {
		id, ok := e.(*ast.Ident)
		return ok && id.Name == "option"
	}
	seen := map[string]bool{}
	add := func(e ast.Expr) {
		if lit, ok := e.(*ast.BasicLit); ok && lit.Kind == token.STRING {
			s, _ := strconv.Unquote(lit.Value)
			seen[s] = true
		}
	}
	ast.Inspect(unmarshal.Body, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.BinaryExpr:
			if n.Op == token.EQL && isOption(n.X) {
				add(n.Y)
			}
		case *ast.SwitchStmt:
			if n.Tag != nil && isOption(n.Tag) {
				for _, clause := range n.Body.List {
					for _, e := range clause.(*ast.CaseClause).List {
						add(e)
					}
				}
			}
		}
		return true
	})
	if len(seen) == 0 {
		t.Fatal("found no option names in UnmarshalCaddyfile: it no longer compares a variable named option")
	}
	var names []string
	for name := range seen {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

func TestBareCreateMissingMeansTrue(t *testing.T) {
	h, err := parse("session_ids {\ncreate_missing\n}")
	if err != nil || !h.CreateMissing {
		t.Errorf("bare create_missing: CreateMissing %v, error %v; configuration.md says it means true", h.CreateMissing, err)
	}
}
