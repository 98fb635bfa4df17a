package idmap

import (
	"bytes"
	"encoding/json"
	"slices"
)

// ComparedFields are the create parameters that define a session for the
// duplicate policy: a second create of the same id "matches" the first when it
// provides the same value for each of them (absent counts as a value). The
// location (directory, workspace) comes from the query string or headers; the
// rest from the JSON body. A fork under a chosen id (POST
// /session/{id}/fork) is defined by the session it forks (forkOf, a client
// id, from the path) and the message it forks at (messageID), with its
// location: a fork and a create of one id never match.
var ComparedFields = []string{"title", "agent", "model", "metadata", "permission", "parentID", "workspaceID", "directory", "workspace", "forkOf", "messageID"}

// Fields holds the compared create parameters of one request, each as
// canonical JSON (object keys sorted, insignificant white space removed), so
// that two requests that differ only in formatting or key order compare equal.
type Fields map[string]json.RawMessage

// forkFields are the compared fields only a fork has: a create body that
// names them does not make its session a fork.
var forkFields = []string{"forkOf", "messageID"}

// NewFields picks the compared fields out of a decoded create body and its
// location parameters. Only names in ComparedFields are kept, and not those
// of forks; a value that is not valid JSON is kept verbatim and so compares
// only to itself.
func NewFields(body map[string]json.RawMessage, location map[string]string) Fields {
	f := Fields{}
	for _, name := range ComparedFields {
		if slices.Contains(forkFields, name) {
			continue
		}
		if raw, ok := body[name]; ok {
			f[name] = canonical(raw)
		}
	}
	for name, value := range location {
		if value == "" || !slices.Contains(ComparedFields, name) {
			continue
		}
		raw, _ := json.Marshal(value)
		f[name] = raw
	}
	return f
}

// NewForkFields are the compared fields of a fork under a chosen id: the
// client id of the session forked, the fork body's messageID (nil when it
// has none) and the location parameters.
func NewForkFields(forkOf string, messageID json.RawMessage, location map[string]string) Fields {
	f := NewFields(nil, location)
	f["forkOf"], _ = json.Marshal(forkOf)
	if messageID != nil {
		f["messageID"] = canonical(messageID)
	}
	return f
}

// Diff returns the names of the compared fields whose values differ between f
// and other, in ComparedFields order. It is empty when the two match.
func (f Fields) Diff(other Fields) []string {
	var names []string
	for _, name := range ComparedFields {
		a, inA := f[name]
		b, inB := other[name]
		if inA != inB || !bytes.Equal(a, b) {
			names = append(names, name)
		}
	}
	return names
}

func canonical(raw json.RawMessage) json.RawMessage {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return raw
	}
	out, err := json.Marshal(v)
	if err != nil {
		return raw
	}
	return out
}
