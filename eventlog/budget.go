package eventlog

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Budget bounds the bytes several Logs retain together, counted as each
// Log counts its own (an event's bytes plus entryOverhead). When an append
// would take the total over the limit, the Log appended to drops its own
// oldest events until the new one fits. Only when it has none left to drop
// (a new Log, say, while the others hold the whole budget) do the other
// Logs give up theirs, oldest first. A Log's newest event is never dropped
// (live readers may not have read it yet), so the total exceeds the limit
// only when every Log is down to its newest event. Room is made before an
// event is counted: the total is never over the limit, not even for a
// moment, while there is anything to drop.
//
// A nil *Budget is no bound. It is safe for concurrent use.
type Budget struct {
	limit atomic.Int64
	used  atomic.Int64

	mu   sync.Mutex
	logs map[*Log]struct{} // the open Logs that share it
}

// NewBudget returns a budget of limit bytes (0 or less: no bound).
func NewBudget(limit int64) *Budget {
	b := &Budget{logs: map[*Log]struct{}{}}
	b.limit.Store(limit)
	return b
}

// SetLimit changes the limit (a config reload); Logs come within it as they
// are appended to.
func (b *Budget) SetLimit(limit int64) { b.limit.Store(limit) }

// Limit returns the limit in bytes.
func (b *Budget) Limit() int64 { return b.limit.Load() }

// Used returns the bytes the Logs of the budget retain now.
func (b *Budget) Used() int64 {
	if b == nil {
		return 0
	}
	return b.used.Load()
}

// fits reports whether n more bytes fit within the limit now.
func (b *Budget) fits(n int64) bool {
	limit := b.limit.Load()
	return limit <= 0 || b.used.Load()+n <= limit
}

// take counts n more bytes if they fit within the limit.
func (b *Budget) take(n int64) bool {
	if b == nil {
		return true
	}
	for {
		used, limit := b.used.Load(), b.limit.Load()
		if limit > 0 && used+n > limit {
			return false
		}
		if b.used.CompareAndSwap(used, used+n) {
			return true
		}
	}
}

// force counts n more bytes whether they fit or not.
func (b *Budget) force(n int64) {
	if b != nil {
		b.used.Add(n)
	}
}

// give counts n bytes less.
func (b *Budget) give(n int64) {
	if b != nil && n != 0 {
		b.used.Add(-n)
	}
}

func (b *Budget) join(l *Log) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.logs[l] = struct{}{}
}

func (b *Budget) leave(l *Log) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.logs, l)
}

// reclaim makes room for n bytes out of the Logs other than self, the Log
// with the oldest event that may go first; false when none gave anything.
// It holds one Log's lock at a time, and never b.mu with one.
func (b *Budget) reclaim(self *Log, n int64) bool {
	b.mu.Lock()
	others := make([]*Log, 0, len(b.logs))
	for l := range b.logs {
		if l != self {
			others = append(others, l)
		}
	}
	b.mu.Unlock()
	type candidate struct {
		log    *Log
		oldest time.Time
	}
	var candidates []candidate
	for _, l := range others {
		if at, ok := l.oldestSpare(); ok {
			candidates = append(candidates, candidate{l, at})
		}
	}
	slices.SortFunc(candidates, func(a, b candidate) int { return a.oldest.Compare(b.oldest) })
	gave := false
	for _, c := range candidates {
		if b.fits(n) {
			break
		}
		gave = c.log.spare(n) || gave
	}
	return gave
}
