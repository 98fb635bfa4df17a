package idmap

import (
	"strings"
	"testing"

	"github.com/google/uuid"
)

func TestDeriveHasOpencodesShape(t *testing.T) {
	for _, name := range []string{"", "a", "worker-1", strings.Repeat("x", 10000), "日本語"} {
		id := Derive(uuid.NameSpaceDNS, name)
		if len(id) != len(Prefix)+26 || Validate(id) != nil {
			t.Fatalf("Derive(%q) = %q", name, id)
		}
		for _, c := range id[len(Prefix) : len(Prefix)+12] {
			if !strings.ContainsRune("0123456789abcdef", c) {
				t.Fatalf("Derive(%q) = %q: not 12 lowercase hex digits first", name, id)
			}
		}
	}
	if Derive(uuid.NameSpaceDNS, "a") == Derive(uuid.NameSpaceURL, "a") || Derive(uuid.NameSpaceDNS, "a") == Derive(uuid.NameSpaceDNS, "b") {
		t.Fatal("different inputs give one id")
	}
}

func TestParseNamespace(t *testing.T) {
	for spec, want := range map[string]uuid.UUID{
		"6ba7b810-9dad-11d1-80b4-00c04fd430c8": uuid.NameSpaceDNS,
		"dns:example.com":                      uuid.NewSHA1(uuid.NameSpaceDNS, []byte("example.com")),
		"url:https://example.com/":             uuid.NewSHA1(uuid.NameSpaceURL, []byte("https://example.com/")),
	} {
		if got, err := ParseNamespace(spec); err != nil || got != want {
			t.Errorf("ParseNamespace(%q) = %v, %v", spec, got, err)
		}
	}
	for _, bad := range []string{"", "dns:", "example.com", "uuid:x"} {
		if _, err := ParseNamespace(bad); err == nil {
			t.Errorf("ParseNamespace(%q) accepted", bad)
		}
	}
}
