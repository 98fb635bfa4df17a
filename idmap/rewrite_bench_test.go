package idmap

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// The benchmarks measure the rewriter on one core over what the module
// really rewrites: a JSON message list (GET /session/{id}/message) and an
// event stream written event by event. `go run ./bench` compares their MB/s
// with the target; nothing here asserts a number.
//
//	go test -run '^$' -bench . -benchmem -cpu 1 ./idmap/

// benchReal is the upstream's id of the session the body is about, mapped to
// benchClient; benchUnmapped are ids the mapping does not know (sessions made
// without an id, children started by the task tool), as a busy upstream's
// responses carry them.
const (
	benchReal   = "ses_df56f5ae4ffeUEKLWgxQCa70jN"
	benchClient = "ses_9f1c2ab0d4e7Xq3LmN8pR2sTvW"
)

var benchUnmapped = []string{
	"ses_df56f5b01a2cKd83JmQpLx0aZe", "ses_df56f5b1f3e9Wn4Vb7Tg2HyUio",
	"ses_df56f5b3aa01Pq9Rs8Lk1MnBvc", "ses_df56f5b5c7d2Zx6Cv5Bn4MaSdf",
}

// benchMessageList is opencode's answer to GET /session/{id}/message, about
// size bytes: user prompts and assistant replies whose parts all name the
// session, some tool results that name unmapped child sessions, and prose that
// mentions "session" and "ses" without being an id.
func benchMessageList(size int) []byte {
	var b bytes.Buffer
	b.WriteString("[")
	for i := 0; b.Len() < size; i++ {
		if i > 0 {
			b.WriteString(",")
		}
		role := "user"
		if i%2 == 1 {
			role = "assistant"
		}
		msg := fmt.Sprintf("msg_df56f5ae%04xAbCdEfGhIjKlMn", i)
		fmt.Fprintf(&b, `{"info":{"id":%q,"sessionID":%q,"role":%q,"time":{"created":%d,"completed":%d},`+
			`"agent":"build","model":{"providerID":"anthropic","modelID":"claude-sonnet-4"},"cost":0.0123,`+
			`"tokens":{"input":1834,"output":412,"reasoning":0,"cache":{"read":12034,"write":0}}},"parts":[`,
			msg, benchReal, role, 1763900000000+i*1000, 1763900000500+i*1000)
		fmt.Fprintf(&b, `{"id":"prt_df56f5ae%04xText00000001","sessionID":%q,"messageID":%q,"type":"text",`+
			`"text":"Looking at the session handling in server/session.ts: the sessions list is sorted by time, `+
			`and each session keeps its messages in the database. I will change the tests so that the session `+
			`ids they use are stable, then run them again and report what the sessions show."}`, i, benchReal, msg)
		if role == "assistant" {
			child := benchUnmapped[i%len(benchUnmapped)]
			fmt.Fprintf(&b, `,{"id":"prt_df56f5ae%04xTool00000002","sessionID":%q,"messageID":%q,"type":"tool",`+
				`"tool":"task","callID":"toolu_01ABCdefGHIjklMNOpqrSTUv","state":{"status":"completed",`+
				`"input":{"description":"run the tests","prompt":"Run go test ./... and summarise failures"},`+
				`"output":"All 214 tests passed in 38.2s. The child session %s ran them; see session %s for the log.",`+
				`"metadata":{"sessionId":%q,"summary":[{"id":"prt_1","tool":"bash","state":{"status":"completed","title":"go test ./..."}}]},`+
				`"title":"run the tests","time":{"start":%d,"end":%d}}}`,
				i, benchReal, msg, child, child, child, 1763900000100+i*1000, 1763900000400+i*1000)
		}
		b.WriteString("]}")
	}
	b.WriteString("]")
	return b.Bytes()
}

// benchEvents is opencode's /event stream, one event per element: message and
// part updates of the mapped session interleaved with status events of
// unmapped ones and heartbeats.
func benchEvents(size int) [][]byte {
	var events [][]byte
	for i, total := 0, 0; total < size; i++ {
		var e string
		switch i % 4 {
		case 0, 1:
			e = fmt.Sprintf(`data: {"id":"evt_df56f5ae%04xAbCdEfGhIjKl","type":"message.part.updated","properties":{"part":`+
				`{"id":"prt_df56f5ae%04xText00000001","sessionID":%q,"messageID":"msg_df56f5ae%04xAbCdEfGhIjKlMn",`+
				`"type":"text","text":"I will change the tests so that the ids they use are stable, then run them again."},`+
				`"delta":" run them again."}}`+"\n\n", i, i, benchReal, i)
		case 2:
			e = fmt.Sprintf(`data: {"id":"evt_df56f5ae%04xAbCdEfGhIjKl","type":"session.status","properties":`+
				`{"sessionID":%q,"status":{"type":"busy"}}}`+"\n\n", i, benchUnmapped[i%len(benchUnmapped)])
		default:
			e = fmt.Sprintf(`data: {"id":"evt_df56f5ae%04xAbCdEfGhIjKl","type":"session.updated","properties":{"info":`+
				`{"id":%q,"slug":"calm-river","version":"1.18.33","projectID":"0c8e9d7f","directory":"/work/repo",`+
				`"title":"fix tests","time":{"created":1763900000000,"updated":%d}}}}`+"\n\n", i, benchReal, 1763900000000+i)
		}
		events = append(events, []byte(e))
		total += len(e)
	}
	return events
}

func benchLookup() Lookup {
	return mapLookup(map[string]string{benchReal: benchClient})
}

func countTokens(b []byte) (mapped, all int) {
	all = bytes.Count(b, []byte(Prefix))
	return bytes.Count(b, []byte(benchReal)), all
}

// BenchmarkRewriteJSON rewrites a 64 KB message list in one piece, as the
// module does with a buffered JSON response.
func BenchmarkRewriteJSON(b *testing.B) {
	body := benchMessageList(64 << 10)
	mapped, all := countTokens(body)
	lookup := benchLookup()
	out := make([]byte, 0, len(body)+1024)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		rw := NewRewriter(lookup)
		out = rw.Append(out[:0], body, true)
		if rw.Replaced() != int64(mapped) {
			b.Fatalf("replaced %d of %d ids, want %d", rw.Replaced(), all, mapped)
		}
	}
}

// BenchmarkRewriteSSE writes an event stream through a Writer one event per
// Write, as the module does with each flush of the upstream.
func BenchmarkRewriteSSE(b *testing.B) {
	events := benchEvents(64 << 10)
	var size int64
	for _, e := range events {
		size += int64(len(e))
	}
	lookup := benchLookup()
	b.SetBytes(size)
	b.ReportAllocs()
	for b.Loop() {
		w := NewWriter(io.Discard, lookup)
		for _, e := range events {
			if _, err := w.Write(e); err != nil {
				b.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRewriteJSONIndex is BenchmarkRewriteJSON with the module's lookup:
// every id is answered by the Index's cache (hits for the mapped id, cached
// absences for the others).
func BenchmarkRewriteJSONIndex(b *testing.B) {
	index := benchIndex(b)
	ctx := context.Background()
	lookup := func(token []byte) (string, bool) {
		id, ok, err := index.ClientOf(ctx, string(token))
		return id, ok && err == nil
	}
	body := benchMessageList(64 << 10)
	Replace(body, lookup) // cache every id, mapped or not
	index.cache.Wait()
	out := make([]byte, 0, len(body)+1024)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		out = NewRewriter(lookup).Append(out[:0], body, true)
	}
	if !bytes.Contains(out, []byte(benchClient)) {
		b.Fatal("the mapped id was not rewritten")
	}
}

// BenchmarkIndexClientOfHit is one lookup answered by the cache.
func BenchmarkIndexClientOfHit(b *testing.B) {
	index := benchIndex(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if id, ok, err := index.ClientOf(ctx, benchReal); !ok || err != nil || id != benchClient {
			b.Fatalf("ClientOf = %q, %v, %v", id, ok, err)
		}
	}
}

// benchIndex is an Index over file storage with benchReal mapped, its entry
// in the cache.
func benchIndex(b *testing.B) *Index {
	b.Helper()
	ctx := context.Background()
	storage := &certmagic.FileStorage{Path: b.TempDir()}
	index, err := NewIndex(NewStore(storage, "bench"), IndexConfig{NegativeTTL: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(index.Close)
	if err := index.Save(ctx, Mapping{ClientID: benchClient, RealID: benchReal}); err != nil {
		b.Fatal(err)
	}
	index.cache.Wait()
	if _, ok, _ := index.ClientOf(ctx, benchReal); !ok {
		b.Fatal("mapping not found")
	}
	return index
}

// TestBenchBodiesAreRealistic keeps the benchmark inputs honest: the sizes
// the benchmarks announce, the mapped id in most objects, unmapped ids among
// them, and the same result in one piece or event by event.
func TestBenchBodiesAreRealistic(t *testing.T) {
	body := benchMessageList(64 << 10)
	mapped, all := countTokens(body)
	if len(body) < 64<<10 || len(body) > 70<<10 || mapped < 100 || all-mapped < 50 {
		t.Fatalf("message list: %d bytes, %d mapped of %d ids", len(body), mapped, all)
	}
	events := benchEvents(64 << 10)
	joined := bytes.Join(events, nil)
	want, _ := Replace(joined, benchLookup())
	var got bytes.Buffer
	w := NewWriter(&got, benchLookup())
	for _, e := range events {
		w.Write(e)
	}
	w.Close()
	if got.String() != string(want) || !strings.Contains(got.String(), benchClient) || strings.Contains(got.String(), benchReal) {
		t.Fatal("the event stream is not rewritten like the whole buffer")
	}
}
