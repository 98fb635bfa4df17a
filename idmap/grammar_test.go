package idmap

import (
	"errors"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name, id, rule string
	}{
		{"short", "ses_a", ""},
		{"opencode shape", "ses_df56f5ae4ffeUEKLWgxQCa70jN", ""},
		{"uuid", "ses_6ba7b810-9dad-11d1-80b4-00c04fd430c8", ""},
		{"64 after prefix", "ses_" + strings.Repeat("x", 64), ""},
		{"underscore and dash", "ses__-_-", ""},
		{"empty", "", RulePrefix},
		{"prefix only", "ses_", RuleLength},
		{"missing underscore", "sesX", RulePrefix},
		{"other prefix", "msg_abc", RulePrefix},
		{"upper-case prefix", "SES_abc", RulePrefix},
		{"65 after prefix", "ses_" + strings.Repeat("x", 65), RuleLength},
		{"10 MB", "ses_" + strings.Repeat("x", 10<<20), RuleLength},
		{"NUL", "ses_a\x00b", RuleCharset},
		{"newline", "ses_a\nb", RuleCharset},
		{"slash", "ses_a/b", RuleCharset},
		{"dot dot", "ses_../../etc", RuleCharset},
		{"space", "ses_a b", RuleCharset},
		{"unicode", "ses_café", RuleCharset},
		{"percent", "ses_a%2Fb", RuleCharset},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.id)
			if tt.rule == "" {
				if err != nil {
					t.Fatalf("Validate(%q) = %v, want nil", tt.id, err)
				}
				return
			}
			var invalid *InvalidIDError
			if !errors.As(err, &invalid) || invalid.Rule != tt.rule {
				t.Fatalf("Validate(%.40q) = %v, want rule %q", tt.id, err, tt.rule)
			}
		})
	}
}

func TestIsToken(t *testing.T) {
	for id, want := range map[string]bool{
		"ses_df56f5ae4ffeUEKLWgxQCa70jN":  true,
		"ses_":                            false,
		"ses_a/b":                         false,
		"ses_" + strings.Repeat("a", 128): true,
		"ses_" + strings.Repeat("a", 129): false,
		"xses_a":                          false,
	} {
		if got := IsToken(id); got != want {
			t.Errorf("IsToken(%.20q) = %v, want %v", id, got, want)
		}
	}
}
