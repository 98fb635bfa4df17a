package docs

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode"
)

// pages returns README.md and every page in docs/, by path from this folder.
func pages(t *testing.T) []string {
	t.Helper()
	docs, err := filepath.Glob("*.md")
	if err != nil || len(docs) == 0 {
		t.Fatalf("no pages in docs/: %v", err)
	}
	return append([]string{filepath.Join("..", "README.md")}, docs...)
}

var (
	fence      = regexp.MustCompile("(?ms)^```.*?^```[ \t]*$")
	inlineCode = regexp.MustCompile("`[^`\n]*`")
	link       = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	heading    = regexp.MustCompile(`(?m)^#{1,6}[ \t]+(.+?)[ \t#]*$`)
)

// prose is a page without its code, where links and headings are not markup.
func prose(t *testing.T, page string) string {
	t.Helper()
	raw, err := os.ReadFile(page)
	if err != nil {
		t.Fatal(err)
	}
	return fence.ReplaceAllString(string(raw), "")
}

// anchors returns the GitHub anchors of a page's headings: lower case, with
// markup and punctuation other than '-' and '_' dropped, spaces as '-', and
// repeated ones numbered -1, -2….
func anchors(t *testing.T, page string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	count := map[string]int{}
	for _, m := range heading.FindAllStringSubmatch(prose(t, page), -1) {
		text := regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`).ReplaceAllString(m[1], "$1")
		var slug strings.Builder
		for _, r := range strings.ToLower(text) {
			switch {
			case r == ' ':
				slug.WriteRune('-')
			case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
				slug.WriteRune(r)
			}
		}
		s := slug.String()
		if n := count[s]; n > 0 {
			out[fmt.Sprintf("%s-%d", s, n)] = true
		} else {
			out[s] = true
		}
		count[s]++
	}
	return out
}

// TestRelativeLinksResolve checks every relative link of the README and the
// docs: its file exists, and its #anchor is a heading there.
func TestRelativeLinksResolve(t *testing.T) {
	checked := 0
	for _, page := range pages(t) {
		text := inlineCode.ReplaceAllString(prose(t, page), "")
		for _, m := range link.FindAllStringSubmatch(text, -1) {
			target := m[1]
			if regexp.MustCompile(`^[a-z][a-z0-9+.-]*:`).MatchString(target) {
				continue // http:, https:, mailto:
			}
			checked++
			path, anchor, _ := strings.Cut(target, "#")
			file := page
			if path != "" {
				file = filepath.Join(filepath.Dir(page), path)
				if _, err := os.Stat(file); err != nil {
					t.Errorf("%s: link %s: %v", page, target, err)
					continue
				}
			}
			if anchor == "" {
				continue
			}
			if !strings.HasSuffix(file, ".md") {
				t.Errorf("%s: link %s: an anchor in a file that is not Markdown", page, target)
			} else if !anchors(t, file)[anchor] {
				t.Errorf("%s: link %s: %s has no heading with anchor #%s", page, target, file, anchor)
			}
		}
	}
	if checked == 0 {
		t.Fatal("found no relative links at all")
	}
}

// TestEveryPageIsMappedAndAsksItsQuestion checks that the README links every
// page of docs/, and that each page opens, under its title, with the question
// it answers in italics.
func TestEveryPageIsMappedAndAsksItsQuestion(t *testing.T) {
	readme := prose(t, filepath.Join("..", "README.md"))
	question := regexp.MustCompile(`^# .+\n\n\*[^*\n]+\?\*\n`)
	for _, page := range pages(t)[1:] {
		if !strings.Contains(readme, "](docs/"+page+")") {
			t.Errorf("the README's map of docs/ does not link %s", page)
		}
		raw, _ := os.ReadFile(page)
		if !question.Match(raw) {
			t.Errorf("%s does not open with a title and then its question, in italics", page)
		}
	}
}
