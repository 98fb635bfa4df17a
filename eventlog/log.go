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
// merely falls behind, and past the retained window it is told so. Logs may
// also share a Budget, one bound on what they retain together.
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
	// Total, when set, is a bound the Log shares with other Logs: see
	// Budget.
	Total *Budget
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
	l := &Log{
		epoch:  newEpoch(),
		limits: limits,
		now:    time.Now,
		wake:   make(chan struct{}),
	}
	limits.Total.join(l)
	return l
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
	n := int64(len(data)) + entryOverhead
	l.makeRoom(n)
	if l.closed { // while it took room from other Logs
		l.limits.Total.give(n)
		return 0
	}
	l.last++
	ev := Event{Seq: l.last, Data: data, Transient: transient, At: l.now()}
	l.ring = append(l.ring, ev)
	l.bytes += n
	l.evict(ev.At)
	close(l.wake)
	l.wake = make(chan struct{})
	return ev.Seq
}

func size(ev Event) int64 { return int64(len(ev.Data)) + entryOverhead }

// makeRoom counts n more bytes in the shared budget, if any. Room comes out
// of this Log's own oldest events first; when it has none left, out of the
// other Logs of the budget, theirs oldest first (each keeps its newest);
// when no Log has anything left to give, n is counted over the limit. It is
// called with l.mu held, and lets go of it while it takes from other Logs,
// so that no two Logs' locks are ever held at once.
func (l *Log) makeRoom(n int64) {
	b := l.limits.Total
	for !b.take(n) {
		if l.head < len(l.ring) {
			l.dropOldest()
			continue
		}
		l.mu.Unlock()
		gave := b.reclaim(l, n)
		l.mu.Lock()
		if !gave {
			b.force(n)
			return
		}
	}
}

// oldestSpare returns when the oldest event this Log could give up (any but
// its newest) was appended; false when it has none to give.
func (l *Log) oldestSpare() (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.ring)-l.head < 2 {
		return time.Time{}, false
	}
	return l.ring[l.head].At, true
}

// spare drops this Log's oldest events, keeping its newest, until n more
// bytes fit in the budget; false when it dropped none.
func (l *Log) spare(n int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.limits.Total
	dropped := false
	for len(l.ring)-l.head > 1 && !b.fits(n) {
		l.dropOldest()
		dropped = true
	}
	return dropped
}

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
		l.dropOldest()
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

// dropOldest forgets the oldest event retained, giving its bytes back to
// the shared budget.
func (l *Log) dropOldest() {
	n := size(l.ring[l.head])
	l.bytes -= n
	l.limits.Total.give(n)
	l.ring[l.head] = Event{} // let its bytes go
	l.head++
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
		// A closed Log has let its events go: the reader is told it ended,
		// not that it lost them.
		res.Lost = len(retained) == 0 && cursor < l.last && !l.closed
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

// Close ends the Log: readers are woken and told, appends are ignored, and
// what it retained is let go (and given back to the shared budget).
func (l *Log) Close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	l.limits.Total.give(l.bytes)
	l.ring, l.head, l.bytes = nil, 0, 0
	close(l.wake)
	l.wake = make(chan struct{})
	l.mu.Unlock()
	l.limits.Total.leave(l) // not under l.mu: see makeRoom
}
