package idmap

import (
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

// Prefix starts every session id, client-chosen or upstream-generated.
const Prefix = "ses_"

// MaxSuffixLen is the most characters a client id may carry after Prefix.
// It fits "ses_" + a UUID (36) and opencode's own 26-character shape, and it
// stays well under the 100 characters beyond which opencode 1.18 creates
// sessions it can no longer reach on any /session/{id} route.
const MaxSuffixLen = 64

// MaxTokenLen bounds the ids the rewriter can recognise, client or real. An
// upstream that answers a create with a longer real id is refused, because such
// an id could never be rewritten reliably.
const MaxTokenLen = len(Prefix) + 128

// Rules named by InvalidIDError, so clients can branch on them.
const (
	RuleType    = "type"    // the id is not a JSON string
	RulePrefix  = "prefix"  // it does not start with "ses_"
	RuleLength  = "length"  // nothing, or more than MaxSuffixLen characters, after the prefix
	RuleCharset = "charset" // a character outside [A-Za-z0-9_-]
)

// InvalidIDError says why a client id was refused.
type InvalidIDError struct {
	Rule   string // one of the Rule constants
	Detail string // human-readable reason
}

func (e *InvalidIDError) Error() string {
	return "invalid session id: " + e.Detail
}

// Validate reports whether id is acceptable as a client-chosen session id:
// "ses_" followed by 1 to MaxSuffixLen characters of [A-Za-z0-9_-]. The rule
// is deliberately looser than opencode's own shape ("ses_" + 12 hex + 14
// base62), because that shape is itself changing upstream, and strict enough
// that every accepted id is a single path segment, a single rewriter token and
// reachable on every opencode route.
func Validate(id string) error {
	if len(id) < len(Prefix) || id[:len(Prefix)] != Prefix {
		return &InvalidIDError{Rule: RulePrefix, Detail: fmt.Sprintf("must start with %q", Prefix)}
	}
	suffix := id[len(Prefix):]
	if suffix == "" {
		return &InvalidIDError{Rule: RuleLength, Detail: fmt.Sprintf("needs 1 to %d characters after %q", MaxSuffixLen, Prefix)}
	}
	for i := 0; i < len(suffix); {
		if IsIDChar(suffix[i]) {
			i++
			continue
		}
		r, _ := utf8.DecodeRuneInString(suffix[i:])
		return &InvalidIDError{Rule: RuleCharset, Detail: fmt.Sprintf("character %q at offset %d is not one of [A-Za-z0-9_-]", r, len(Prefix)+i)}
	}
	if len(suffix) > MaxSuffixLen {
		return &InvalidIDError{Rule: RuleLength, Detail: fmt.Sprintf("has %d characters after %q; at most %d are allowed", len(suffix), Prefix, MaxSuffixLen)}
	}
	return nil
}

// IsIDChar reports whether b may appear in the suffix of a session id.
func IsIDChar(b byte) bool {
	return 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '_' || b == '-'
}

// IsToken reports whether s has the shape the rewriter recognises: the prefix
// followed by id characters, at most MaxTokenLen bytes in all. Real ids
// returned by an upstream must pass it before they are mapped.
func IsToken(s string) bool {
	if len(s) <= len(Prefix) || len(s) > MaxTokenLen || s[:len(Prefix)] != Prefix {
		return false
	}
	for i := len(Prefix); i < len(s); i++ {
		if !IsIDChar(s[i]) {
			return false
		}
	}
	return true
}

// CreateID reads the optional "id" of a decoded create body: absent is "",
// false; present, it must be a JSON string that passes Validate.
func CreateID(body map[string]json.RawMessage) (string, bool, *InvalidIDError) {
	raw, present := body["id"]
	if !present {
		return "", false, nil
	}
	var id string
	if err := json.Unmarshal(raw, &id); err != nil || string(raw) == "null" {
		return "", true, &InvalidIDError{Rule: RuleType, Detail: "must be a string"}
	}
	if err := Validate(id); err != nil {
		return "", true, err.(*InvalidIDError)
	}
	return id, true, nil
}
