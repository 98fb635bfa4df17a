package idmap

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
)

// referenceToken is the token rule written independently of the scanner: a
// maximal run of id characters that starts with "ses_" and is not preceded
// by an id character.
var referenceToken = regexp.MustCompile(`(^|[^A-Za-z0-9_-])(ses_[A-Za-z0-9_-]*)`)

// referenceReplace rewrites with the regular expression, as the oracle.
func referenceReplace(src []byte, m map[string]string) []byte {
	var out bytes.Buffer
	last := 0
	for _, loc := range referenceToken.FindAllSubmatchIndex(src, -1) {
		start, end := loc[4], loc[5]
		if repl, ok := m[string(src[start:end])]; ok && end-start <= MaxTokenLen {
			out.Write(src[last:start])
			out.WriteString(repl)
			last = end
		}
	}
	out.Write(src[last:])
	return out.Bytes()
}

func hasToken(src []byte, set map[string]string) bool {
	for _, loc := range referenceToken.FindAllSubmatchIndex(src, -1) {
		if _, ok := set[string(src[loc[4]:loc[5]])]; ok {
			return true
		}
	}
	return false
}

var (
	fuzzRealToClient = map[string]string{
		"ses_df56f5ae4ffeUEKLWgxQCa70jN": "ses_mine",
		"ses_R":                          "ses_a-much-longer-client-id-than-the-real-one",
		"ses_" + strings.Repeat("x", 60): "ses_y",
	}
	fuzzClientToReal = func() map[string]string {
		inv := map[string]string{}
		for k, v := range fuzzRealToClient {
			inv[v] = k
		}
		return inv
	}()
)

// FuzzRewriterChunks feeds a stream to the Writer in pieces cut where the
// fuzzer says and checks it against the reference, that unmapped streams pass
// unchanged, and that rewriting there and back restores the stream.
func FuzzRewriterChunks(f *testing.F) {
	f.Add([]byte(`data: {"sessionID":"ses_df56f5ae4ffeUEKLWgxQCa70jN"}`+"\n\n"), []byte{3, 17, 40})
	f.Add([]byte(`{"a":"ses_R","b":"xses_R","c":"ses_Rx","d":"ses_"}`), []byte{1, 1, 1, 1, 9})
	f.Add([]byte("ses_R ses_R\nses_R"), []byte{0, 5})
	f.Add([]byte("s"+"es_R se"+"s_ ses"), []byte{1, 2, 3})
	f.Add([]byte("ses_"+strings.Repeat("x", 60)+strings.Repeat("y", 200)), []byte{30, 30, 30})
	f.Fuzz(func(t *testing.T, data, cuts []byte) {
		want := referenceReplace(data, fuzzRealToClient)

		var out bytes.Buffer
		w := NewWriter(&out, mapLookup(fuzzRealToClient))
		rest := data
		for _, c := range cuts {
			n := int(c) % (len(rest) + 1)
			w.Write(rest[:n])
			rest = rest[n:]
		}
		w.Write(rest)
		w.Close()
		if !bytes.Equal(out.Bytes(), want) {
			t.Fatalf("streamed in pieces %v:\n got %q\nwant %q", cuts, out.Bytes(), want)
		}

		if oneShot, _ := Replace(data, mapLookup(fuzzRealToClient)); !bytes.Equal(oneShot, want) {
			t.Fatalf("Replace:\n got %q\nwant %q", oneShot, want)
		}
		if !hasToken(data, fuzzRealToClient) && !bytes.Equal(out.Bytes(), data) {
			t.Fatalf("a stream without mapped ids changed: %q -> %q", data, out.Bytes())
		}
		if !hasToken(data, fuzzClientToReal) {
			back, _ := Replace(out.Bytes(), mapLookup(fuzzClientToReal))
			if !bytes.Equal(back, data) {
				t.Fatalf("round trip:\n got %q\nwant %q", back, data)
			}
		}
	})
}

// FuzzJSONStaysJSON checks that rewriting a JSON body (as requests and
// responses are) keeps it valid JSON with the same structure.
func FuzzJSONStaysJSON(f *testing.F) {
	f.Add(`{"sessionID":"ses_mine","parts":[{"text":"ses_mine and ses_R"}],"n":1}`)
	f.Add(`["ses_R","\u0073es_R","ses_R\"ses_R"]`)
	f.Add(`{"ses_mine":{"ses_R":null}}`)
	f.Fuzz(func(t *testing.T, doc string) {
		var before any
		if json.Unmarshal([]byte(doc), &before) != nil {
			return
		}
		for _, m := range []map[string]string{fuzzRealToClient, fuzzClientToReal} {
			out, _ := Replace([]byte(doc), mapLookup(m))
			var after any
			if err := json.Unmarshal(out, &after); err != nil {
				t.Fatalf("%q became invalid JSON %q: %v", doc, out, err)
			}
		}
	})
}

// FuzzValidate checks that every accepted id is a single, rewritable token of
// bounded length, and that every refusal names its rule.
func FuzzValidate(f *testing.F) {
	for _, seed := range []string{"ses_a", "ses_", "ses_../x", "ses_a\x00", "ses_café", "SES_a", "ses_" + strings.Repeat("a", 64), "ses_a/b", "ses_a%2F"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, id string) {
		err := Validate(id)
		if err != nil {
			invalid, ok := err.(*InvalidIDError)
			if !ok || invalid.Rule == "" {
				t.Fatalf("Validate(%q) = %v without a rule", id, err)
			}
			return
		}
		if !IsToken(id) || len(id) > len(Prefix)+MaxSuffixLen || strings.ContainsAny(id, "/?#%.\x00\n ") {
			t.Fatalf("Validate accepted %q", id)
		}
		if got := referenceToken.FindStringSubmatch(id); got == nil || got[2] != id {
			t.Fatalf("accepted id %q is not one whole token", id)
		}
	})
}

// FuzzEachTokenVisitsWhatReplaceLooksUp: the scan that bounds how many ids
// a body may name sees every token the rewriter would look up (but for a
// bare prefix), in order, so a body cannot name more ids than were counted.
func FuzzEachTokenVisitsWhatReplaceLooksUp(f *testing.F) {
	for _, seed := range []string{`{"id":"ses_a","p":"ses_b"}`, `ses_`, `xses_a ses_a-ses_b`, "ses_" + strings.Repeat("z", 80)} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		var looked, visited []string
		Replace(src, func(token []byte) (string, bool) {
			if len(token) > len(Prefix) {
				looked = append(looked, string(token))
			}
			return "", false
		})
		EachToken(src, func(token []byte) bool {
			visited = append(visited, string(token))
			return true
		})
		if strings.Join(looked, "\x00") != strings.Join(visited, "\x00") {
			t.Fatalf("Replace looked up %q, EachToken visited %q", looked, visited)
		}
		distinct := map[string]bool{}
		for _, v := range visited {
			distinct[v] = true
		}
		if n := len(distinct); n > 0 && (!TooManyTokens(n-1, src) || TooManyTokens(n, src)) {
			t.Fatalf("%d distinct tokens: TooManyTokens(%d)=%v, TooManyTokens(%d)=%v", n, n-1, TooManyTokens(n-1, src), n, TooManyTokens(n, src))
		}
	})
}
