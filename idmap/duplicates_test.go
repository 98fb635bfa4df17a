package idmap

import (
	"encoding/json"
	"slices"
	"testing"
)

func fieldsOf(t *testing.T, body string, location map[string]string) Fields {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatal(err)
	}
	return NewFields(m, location)
}

func TestFieldsCompareCanonicalJSON(t *testing.T) {
	a := fieldsOf(t, `{"title":"t","metadata":{"a":1,"b":[1,2]},"model":{"id":"m","providerID":"p"}}`, nil)
	b := fieldsOf(t, `{ "model" : {"providerID":"p","id":"m"}, "metadata":{"b":[1, 2],"a":1}, "title":"t", "unrelated": 5}`, nil)
	if diff := a.Diff(b); len(diff) != 0 {
		t.Fatalf("same fields in another order and spacing differ in %v", diff)
	}
}

func TestFieldsDiffNamesEveryDifference(t *testing.T) {
	stored := fieldsOf(t, `{"title":"t","agent":"build","parentID":"ses_p"}`, map[string]string{"directory": "/a"})
	asked := fieldsOf(t, `{"title":"u","agent":"build","permission":[]}`, map[string]string{"directory": "/b"})
	want := []string{"title", "permission", "parentID", "directory"}
	if got := stored.Diff(asked); !slices.Equal(got, want) {
		t.Fatalf("Diff = %v, want %v", got, want)
	}
}

func TestDuplicatePolicy(t *testing.T) {
	same := fieldsOf(t, `{"title":"t"}`, nil)
	other := fieldsOf(t, `{"title":"u"}`, nil)
	tests := []struct {
		policy    DuplicatePolicy
		requested Fields
		replay    bool
		differ    []string
	}{
		{DuplicatesMatch, same, true, nil},
		{DuplicatesMatch, other, false, []string{"title"}},
		{DuplicatesReturn, other, true, nil},
		{DuplicatesReject, same, false, nil},
	}
	for _, tt := range tests {
		got := tt.policy.Decide(same, tt.requested)
		if got.Replay != tt.replay || !slices.Equal(got.Differ, tt.differ) {
			t.Errorf("%s: Decide = %+v, want replay %v differ %v", tt.policy, got, tt.replay, tt.differ)
		}
	}
}

func TestParseDuplicatePolicy(t *testing.T) {
	if p, err := ParseDuplicatePolicy(""); err != nil || p != DuplicatesMatch {
		t.Fatalf("empty policy = %q, %v; want match", p, err)
	}
	if _, err := ParseDuplicatePolicy("sometimes"); err == nil {
		t.Fatal("unknown policy accepted")
	}
}

func TestACreateAndAForkOfOneIDNeverMatch(t *testing.T) {
	location := map[string]string{"directory": "/w"}
	fork := NewForkFields("ses_parent", nil, location)
	// A create body that names the fork's fields is still a create.
	create := NewFields(map[string]json.RawMessage{"forkOf": json.RawMessage(`"ses_parent"`)}, location)
	if d := DuplicatesMatch.Decide(fork, create); d.Replay || !slices.Equal(d.Differ, []string{"forkOf"}) {
		t.Fatalf("a create and a fork: %+v", d)
	}
	at := NewForkFields("ses_parent", json.RawMessage(` "msg_1" `), location)
	if d := DuplicatesMatch.Decide(fork, at); d.Replay || !slices.Equal(d.Differ, []string{"messageID"}) {
		t.Fatalf("forks at different messages: %+v", d)
	}
	if d := DuplicatesMatch.Decide(at, NewForkFields("ses_parent", json.RawMessage(`"msg_1"`), location)); !d.Replay {
		t.Fatalf("the same fork: %+v", d)
	}
}
