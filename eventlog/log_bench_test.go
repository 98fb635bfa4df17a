package eventlog

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// opencodeEvent is the size of a typical opencode event (a
// message.part.updated with a short text part is about 400 bytes).
var opencodeEvent = []byte("data: " + strings.Repeat("x", 394) + "\n\n")

// BenchmarkAppend is the cost of retaining one event, with the log at its
// count limit (so every append also drops one).
func BenchmarkAppend(b *testing.B) {
	l := New(Limits{Events: 10000})
	for b.Loop() {
		l.Append(opencodeEvent, false)
	}
}

// BenchmarkMemoryPerRetainedEvent reports the heap a retained event costs
// beyond its own bytes: its place in the log.
func BenchmarkMemoryPerRetainedEvent(b *testing.B) {
	for _, n := range []int{1000, 10000, 100000} {
		b.Run(fmt.Sprintf("%d events", n), func(b *testing.B) {
			var perEvent float64
			for b.Loop() {
				runtime.GC()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				l := New(Limits{Events: n})
				for range n {
					// Each event its own bytes, as events read off a stream are.
					l.Append(append([]byte(nil), opencodeEvent...), false)
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				perEvent = float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
				runtime.KeepAlive(l)
			}
			b.ReportMetric(perEvent, "heap-B/event")
			b.ReportMetric(perEvent-float64(len(opencodeEvent)), "overhead-B/event")
		})
	}
}

// BenchmarkRead is one reader catching up on 100 events.
func BenchmarkRead(b *testing.B) {
	l := New(Limits{Events: 10000})
	for range 10000 {
		l.Append(opencodeEvent, false)
	}
	for b.Loop() {
		if res := l.Read(9900, 0); len(res.Events) != 100 {
			b.Fatal(len(res.Events))
		}
	}
}
