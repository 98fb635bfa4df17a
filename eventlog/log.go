// Package eventlog keeps the recent events of a server-sent event stream so
// that a client that lost its connection can resume where it left off.
//
// A Log numbers the events appended to it (1, 2, 3, … within an epoch, a
// random name the Log picks when it is made) and retains the newest ones
// within limits of count, bytes and age. Readers hold a cursor, the number
// of the last event they have, and read what follows it; a reader whose
// cursor points before what is retained is told that events were lost, never
// handed a silent gap. Because readers read from the one shared log instead
// of each holding a queue of its own, a slow reader costs no memory: it
// merely falls behind, and past the retained window it is told so.
//
// The package knows nothing of HTTP; the event streams that use it are
// package events.
package eventlog

import (
	"crypto/rand"
	"strings"
	"sync"
	"time"
)

// Limits bound what a Log retains. An event is dropped once any limit is
// exceeded, oldest first; the newest event is always kept. Zero means no
// limit of that kind.
type Limits struct {
	Events int
	Bytes  int64
	Age    time.Duration
}

// Event is one event of a stream as it is sent: its lines and the blank
// line that ends it, without an id line.
type Event struct {
	// Seq numbers the event within its Log's epoch, from 1.
	Seq uint64
	// Data is the event's bytes.
	Data []byte
	// Transient events (heartbeats, say) are for live readers only: a
	// resuming reader does not get them again.
	Transient bool
	// At is when the event was appended.
	At time.Time
}

// entryOverhead is what the log counts per event beyond its bytes: the
// Event itself and its place in the ring, so that a byte limit also bounds
// a log of many tiny events. BenchmarkMemoryPerRetainedEvent measures
// about 85 bytes of heap per event beyond its data, allocator rounding
// included.
const entryOverhead = 80

// Log is the retained tail of one stream. It is safe for concurrent use.
type Log struct {
	epoch  string
	limits Limits
	now    func() time.Time

	mu     sync.Mutex
	ring   []Event // retained events, oldest first, from ring[head]
	head   int
	bytes  int64
	last   uint64        // Seq of the newest event appended, 0 before any
	wake   chan struct{} // closed and replaced by every Append
	closed bool
}

// New returns an empty Log with a fresh epoch.
func New(limits Limits) *Log {
	return &Log{
		epoch:  newEpoch(),
		limits: limits,
		now:    time.Now,
		wake:   make(chan struct{}),
	}
}

// newEpoch names a Log: 10 lower-case base32 characters, different for every
// Log, so that ids of another Log (before a restart, on another Caddy) are
// never mistaken for this one's.
func newEpoch() string { return strings.ToLower(rand.Text()[:10]) }

// Epoch is the Log's name, the first part of its event ids.
func (l *Log) Epoch() string { return l.epoch }

// Append adds an event and wakes the readers waiting for one. It returns
// the event's number, or 0 when the Log is closed.
func (l *Log) Append(data []byte, transient bool) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 0
	}
	l.last++
	ev := Event{Seq: l.last, Data: data, Transient: transient, At: l.now()}
	l.ring = append(l.ring, ev)
	l.bytes += size(ev)
	l.evict(ev.At)
	close(l.wake)
	l.wake = make(chan struct{})
	return ev.Seq
}

func size(ev Event) int64 { return int64(len(ev.Data)) + entryOverhead }

// evict drops the oldest events while a limit is exceeded, keeping the newest.
func (l *Log) evict(now time.Time) {
	for len(l.ring)-l.head > 1 {
		oldest := l.ring[l.head]
		over := (l.limits.Events > 0 && len(l.ring)-l.head > l.limits.Events) ||
			(l.limits.Bytes > 0 && l.bytes > l.limits.Bytes) ||
			(l.limits.Age > 0 && now.Sub(oldest.At) > l.limits.Age)
		if !over {
			break
		}
		l.bytes -= size(oldest)
		l.ring[l.head] = Event{} // let its bytes go
		l.head++
	}
	// Compact once the dropped prefix is most of the slice, so the ring's
	// memory follows what is retained.
	if l.head > 32 && l.head*2 > len(l.ring) {
		n := copy(l.ring, l.ring[l.head:])
		clear(l.ring[n:])
		l.ring = l.ring[:n]
		l.head = 0
	}
}

// Result is what a Read found.
type Result struct {
	// Events follow the cursor, in order.
	Events []Event
	// Lost reports that events right after the cursor are no longer
	// retained: the reader has missed them. Events then starts with the
	// oldest event retained.
	Lost bool
	// Wake is closed when an event is appended after this Read.
	Wake <-chan struct{}
	// Closed reports that the Log is closed: no event will follow.
	Closed bool
}

// Read returns up to max events after the cursor (the Seq of the last event
// the reader has; 0 for none), the oldest first. max <= 0 means all.
func (l *Log) Read(cursor uint64, max int) Result {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.limits.Age > 0 {
		l.evict(l.now())
	}
	res := Result{Wake: l.wake, Closed: l.closed}
	retained := l.ring[l.head:]
	if len(retained) == 0 || cursor >= l.last {
		res.Lost = len(retained) == 0 && cursor < l.last
		return res
	}
	first := retained[0].Seq
	start := 0
	if cursor+1 < first {
		res.Lost = true
	} else {
		start = int(cursor + 1 - first)
	}
	end := len(retained)
	if max > 0 && end-start > max {
		end = start + max
	}
	res.Events = append([]Event(nil), retained[start:end]...)
	return res
}

// Last returns the number of the newest event appended, 0 before any.
func (l *Log) Last() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}

// Span returns the numbers of the oldest and newest events retained; both
// are 0 when nothing is.
func (l *Log) Span() (oldest, newest uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.limits.Age > 0 {
		l.evict(l.now())
	}
	if len(l.ring) == l.head {
		return 0, 0
	}
	return l.ring[l.head].Seq, l.last
}

// Size returns how many events are retained and the bytes they count for.
func (l *Log) Size() (events int, bytes int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.ring) - l.head, l.bytes
}

// Close ends the Log: readers are woken and told, and appends are ignored.
func (l *Log) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.closed = true
	close(l.wake)
	l.wake = make(chan struct{})
}
