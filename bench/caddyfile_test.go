package main

import (
	"os"
	"strings"
	"testing"
)

// TestPlainCaddyfileIsTheExampleWithoutTheModule keeps the baseline honest:
// bench/Caddyfile.plain must be Caddyfile.example with the session_ids block
// and the module's load-balancing policy (lb_policy session_ids, whose place
// plain reverse_proxy's default, random, takes) taken out, and nothing else
// changed (comments and blank lines aside).
func TestPlainCaddyfileIsTheExampleWithoutTheModule(t *testing.T) {
	example, err := os.ReadFile("../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	plain, err := os.ReadFile("Caddyfile.plain")
	if err != nil {
		t.Fatal(err)
	}
	want := withoutBlock(withoutBlock(directives(string(example)), "session_ids {"), "lb_policy session_ids {")
	got := directives(string(plain))
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("Caddyfile.plain differs from Caddyfile.example without session_ids and its lb_policy:\n got:\n%s\nwant:\n%s",
			strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// directives are a Caddyfile's lines without comments and blank lines.
func directives(caddyfile string) []string {
	var lines []string
	for _, line := range strings.Split(caddyfile, "\n") {
		if trimmed := strings.TrimSpace(line); trimmed != "" && !strings.HasPrefix(trimmed, "#") {
			lines = append(lines, line)
		}
	}
	return lines
}

// withoutBlock drops the block that opens with the line start (trimmed),
// up to its closing brace at the same indentation.
func withoutBlock(lines []string, start string) []string {
	var out []string
	closing := ""
	for _, line := range lines {
		switch {
		case closing != "":
			if line == closing {
				closing = ""
			}
		case strings.TrimSpace(line) == start:
			closing = line[:len(line)-len(strings.TrimLeft(line, "\t "))] + "}"
		default:
			out = append(out, line)
		}
	}
	return out
}
