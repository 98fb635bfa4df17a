package eventlog

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

func appendN(l *Log, n int) {
	for i := 0; i < n; i++ {
		l.Append([]byte(fmt.Sprintf("data: %d\n\n", l.Last()+1)), false)
	}
}

func seqs(evs []Event) []uint64 {
	out := make([]uint64, len(evs))
	for i, ev := range evs {
		out[i] = ev.Seq
	}
	return out
}

func TestLog(t *testing.T) {
	t.Run("events are numbered from 1 and read after a cursor in order", func(t *testing.T) {
		l := New(Limits{})
		appendN(l, 5)
		res := l.Read(2, 0)
		if got := fmt.Sprint(seqs(res.Events)); got != "[3 4 5]" || res.Lost {
			t.Fatalf("read after 2: %s lost=%v", got, res.Lost)
		}
		if got := string(res.Events[0].Data); got != "data: 3\n\n" {
			t.Fatalf("event 3 is %q", got)
		}
		if res := l.Read(5, 0); len(res.Events) != 0 || res.Lost {
			t.Fatalf("a reader that is up to date gets nothing: %v", seqs(res.Events))
		}
		if res := l.Read(1, 2); fmt.Sprint(seqs(res.Events)) != "[2 3]" {
			t.Fatalf("max bounds a read: %v", seqs(res.Events))
		}
	})

	t.Run("the count limit drops the oldest, and a cursor before what is kept is told it lost events", func(t *testing.T) {
		l := New(Limits{Events: 3})
		appendN(l, 10)
		if oldest, newest := l.Span(); oldest != 8 || newest != 10 {
			t.Fatalf("span %d..%d, want 8..10", oldest, newest)
		}
		res := l.Read(4, 0)
		if !res.Lost || fmt.Sprint(seqs(res.Events)) != "[8 9 10]" {
			t.Fatalf("read after 4: %v lost=%v", seqs(res.Events), res.Lost)
		}
		if res := l.Read(7, 0); res.Lost {
			t.Fatal("a cursor right before the oldest kept event lost nothing")
		}
	})

	t.Run("the byte limit counts each event's bytes and a fixed overhead, and keeps the newest event", func(t *testing.T) {
		l := New(Limits{Bytes: 3 * (10 + entryOverhead)})
		for i := 0; i < 5; i++ {
			l.Append([]byte(strings.Repeat("x", 10)), false)
		}
		if n, b := l.Size(); n != 3 || b != 3*(10+entryOverhead) {
			t.Fatalf("kept %d events, %d bytes", n, b)
		}
		l.Append(make([]byte, 1000), false)
		if n, _ := l.Size(); n != 1 {
			t.Fatalf("an event larger than the limit is kept alone, got %d events", n)
		}
	})

	t.Run("the age limit drops events older than it, also when nothing is appended", func(t *testing.T) {
		l := New(Limits{Age: time.Minute})
		now := time.Unix(1000, 0)
		l.now = func() time.Time { return now }
		appendN(l, 2)
		now = now.Add(30 * time.Second)
		appendN(l, 1)
		now = now.Add(45 * time.Second)
		res := l.Read(0, 0)
		if fmt.Sprint(seqs(res.Events)) != "[3]" || !res.Lost {
			t.Fatalf("after 75 s: %v lost=%v", seqs(res.Events), res.Lost)
		}
	})

	t.Run("a reader waits for the next append, and Close wakes it for good", func(t *testing.T) {
		l := New(Limits{})
		res := l.Read(0, 0)
		go l.Append([]byte("data: 1\n\n"), false)
		<-res.Wake
		if res := l.Read(0, 0); len(res.Events) != 1 {
			t.Fatalf("woken, then read %d events", len(res.Events))
		}
		res = l.Read(1, 0)
		l.Close()
		<-res.Wake
		if res := l.Read(1, 0); !res.Closed {
			t.Fatal("a closed log says so")
		}
		if seq := l.Append([]byte("x"), false); seq != 0 {
			t.Fatal("a closed log takes no events")
		}
	})

	t.Run("memory follows what is retained: the ring is compacted", func(t *testing.T) {
		l := New(Limits{Events: 10})
		appendN(l, 10_000)
		l.mu.Lock()
		defer l.mu.Unlock()
		if cap(l.ring) > 1000 {
			t.Fatalf("ring capacity %d for 10 retained events", cap(l.ring))
		}
	})

	t.Run("concurrent appends and readers see every event once, in order", func(t *testing.T) {
		l := New(Limits{})
		const writers, each = 4, 500
		var wg sync.WaitGroup
		for w := 0; w < writers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < each; i++ {
					l.Append([]byte("data: x\n\n"), false)
				}
			}()
		}
		var cursor uint64
		for cursor < writers*each {
			res := l.Read(cursor, 0)
			for _, ev := range res.Events {
				if ev.Seq != cursor+1 {
					t.Fatalf("event %d after %d", ev.Seq, cursor)
				}
				cursor = ev.Seq
			}
			if len(res.Events) == 0 {
				<-res.Wake
			}
		}
		wg.Wait()
	})
}

func TestResume(t *testing.T) {
	l := New(Limits{Events: 5})
	appendN(l, 10) // keeps 6..10
	other := New(Limits{})
	appendN(other, 10)

	cases := []struct {
		name       string
		id         string
		wantCursor uint64
		wantGap    Gap
	}{
		{"no id: from the newest event, as a new subscriber", "", 10, NoGap},
		{"an id still retained: right after it", l.ID(7), 7, NoGap},
		{"the event right before the oldest kept", l.ID(5), 5, NoGap},
		{"the newest event: nothing to replay", l.ID(10), 10, NoGap},
		{"an id older than what is kept", l.ID(3), 10, GapExpired},
		{"an id of another stream (a restart, another Caddy)", other.ID(7), 10, GapUnknown},
		{"an id from this stream's future", l.ID(11), 10, GapUnknown},
		{"garbage", "not-an-id", 10, GapUnknown},
		{"no number", l.Epoch(), 10, GapUnknown},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cursor, gap := l.Resume(c.id)
			if cursor != c.wantCursor || gap != c.wantGap {
				t.Fatalf("Resume(%q) = %d, %q; want %d, %q", c.id, cursor, gap, c.wantCursor, c.wantGap)
			}
		})
	}
}

func TestResumeAfterTheAgeLimitIsExpiredEvenWithoutAnAppendSince(t *testing.T) {
	l := New(Limits{Age: time.Second})
	now := time.Unix(1000, 0)
	l.now = func() time.Time { return now }
	appendN(l, 3)
	id := l.ID(1)
	now = now.Add(2 * time.Second)
	if cursor, gap := l.Resume(id); gap != GapExpired || cursor != 3 {
		t.Fatalf("Resume(%s) two seconds on = %d, %q; want 3, expired", id, cursor, gap)
	}
}

func TestEpochsDiffer(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		e := New(Limits{}).Epoch()
		if seen[e] || len(e) != 10 || strings.Contains(e, "-") {
			t.Fatalf("epoch %q (seen before: %v)", e, seen[e])
		}
		seen[e] = true
	}
}
