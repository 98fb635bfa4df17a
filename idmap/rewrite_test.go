package idmap

import (
	"bytes"
	"strings"
	"testing"
)

// realToClient maps two real ids to client ids of other lengths.
var realToClient = map[string]string{
	"ses_df56f5ae4ffeUEKLWgxQCa70jN": "ses_mine",
	"ses_R2":                         "ses_a-much-longer-client-id",
}

func mapLookup(m map[string]string) Lookup {
	return func(token []byte) (string, bool) {
		v, ok := m[string(token)]
		return v, ok
	}
}

func TestReplace(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"json string", `{"id":"ses_df56f5ae4ffeUEKLWgxQCa70jN"}`, `{"id":"ses_mine"}`},
		{"path", `/session/ses_R2/message`, `/session/ses_a-much-longer-client-id/message`},
		{"several", `ses_R2 ses_R2,ses_df56f5ae4ffeUEKLWgxQCa70jN`, `ses_a-much-longer-client-id ses_a-much-longer-client-id,ses_mine`},
		{"at both ends", `ses_R2`, `ses_a-much-longer-client-id`},
		{"unmapped untouched", `{"id":"ses_other","x":"ses_"}`, `{"id":"ses_other","x":"ses_"}`},
		{"inside a longer id", `ses_R2x xses_R2 a-ses_R2 ses_R2_`, `ses_R2x xses_R2 a-ses_R2 ses_R2_`},
		{"after punctuation", `(ses_R2) "ses_R2" =ses_R2&`, `(ses_a-much-longer-client-id) "ses_a-much-longer-client-id" =ses_a-much-longer-client-id&`},
		{"no ids", `{"hello":"world"}`, `{"hello":"world"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := Replace([]byte(tt.in), mapLookup(realToClient))
			if string(got) != tt.want {
				t.Fatalf("Replace(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestReplaceReturnsTheSameBufferWhenNothingChanges(t *testing.T) {
	in := []byte(`{"id":"ses_unmapped"}`)
	out, replaced := Replace(in, mapLookup(realToClient))
	if replaced != 0 || &out[0] != &in[0] {
		t.Fatal("an unchanged buffer was copied or reported as changed")
	}
}

// sseSample is two events of opencode's /event stream about one mapped session.
const sseSample = "data: {\"id\":\"evt_1\",\"type\":\"session.created\",\"properties\":{\"sessionID\":\"ses_df56f5ae4ffeUEKLWgxQCa70jN\",\"info\":{\"id\":\"ses_df56f5ae4ffeUEKLWgxQCa70jN\",\"parentID\":\"ses_R2\"}}}\n\n" +
	"data: {\"id\":\"evt_2\",\"type\":\"session.idle\",\"properties\":{\"sessionID\":\"ses_unmapped\"}}\n\n" +
	"data: {\"text\":\"ses\"}\n\ndata: ses_R2"

func TestWriterGivesTheSameResultForEverySplit(t *testing.T) {
	want, _ := Replace([]byte(sseSample), mapLookup(realToClient))
	for cut1 := 0; cut1 <= len(sseSample); cut1++ {
		for _, cut2 := range []int{cut1, (cut1 + len(sseSample)) / 2, len(sseSample)} {
			var out bytes.Buffer
			w := NewWriter(&out, mapLookup(realToClient))
			for _, piece := range []string{sseSample[:cut1], sseSample[cut1:cut2], sseSample[cut2:]} {
				if _, err := w.Write([]byte(piece)); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if out.String() != string(want) {
				t.Fatalf("cuts at %d,%d:\n got %q\nwant %q", cut1, cut2, out.String(), want)
			}
		}
	}
}

func TestWriterByteByByte(t *testing.T) {
	want, _ := Replace([]byte(sseSample), mapLookup(realToClient))
	var out bytes.Buffer
	w := NewWriter(&out, mapLookup(realToClient))
	for i := range len(sseSample) {
		w.Write([]byte{sseSample[i]})
	}
	w.Close()
	if out.String() != string(want) {
		t.Fatalf("got %q\nwant %q", out.String(), want)
	}
}

func TestWriterPassesCompleteEventsAtOnce(t *testing.T) {
	// An SSE event ends in a blank line; nothing of it may be held back, or the
	// client would see it only with the next event.
	var out bytes.Buffer
	w := NewWriter(&out, mapLookup(realToClient))
	event := "data: {\"sessionID\":\"ses_R2\"}\n\n"
	w.Write([]byte(event))
	if out.String() != "data: {\"sessionID\":\"ses_a-much-longer-client-id\"}\n\n" {
		t.Fatalf("after one whole event the client has %q", out.String())
	}
}

func TestWriterHoldsOnlyAPossibleToken(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out, mapLookup(realToClient))
	w.Write([]byte("abc ses_R"))
	if out.String() != "abc " {
		t.Fatalf("held wrong bytes: passed %q", out.String())
	}
	w.Write([]byte("2 tail se"))
	if out.String() != "abc ses_a-much-longer-client-id tail " {
		t.Fatalf("passed %q", out.String())
	}
	w.Close()
	if out.String() != "abc ses_a-much-longer-client-id tail se" {
		t.Fatalf("after Close: %q", out.String())
	}
}

func TestWriterPassesOverlongTokensUntouched(t *testing.T) {
	long := "ses_" + strings.Repeat("R", MaxTokenLen) + " ses_R2"
	lookup := mapLookup(map[string]string{"ses_R2": "ses_x", "ses_" + strings.Repeat("R", MaxTokenLen): "ses_never"})
	var out bytes.Buffer
	w := NewWriter(&out, lookup)
	for i := 0; i < len(long); i += 7 {
		w.Write([]byte(long[i:min(i+7, len(long))]))
	}
	w.Close()
	if want := "ses_" + strings.Repeat("R", MaxTokenLen) + " ses_x"; out.String() != want {
		t.Fatalf("got %q", out.String())
	}
}
