package eventlog

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

// tenByte is an event that counts for 10 bytes plus the overhead.
var tenByte = []byte(strings.Repeat("x", 10))

const tenByteSize = 10 + entryOverhead

func TestBudget(t *testing.T) {
	t.Run("logs sharing a budget retain no more than it together; the log appended to gives up its own oldest", func(t *testing.T) {
		budget := NewBudget(6 * tenByteSize)
		a, b := New(Limits{Total: budget}), New(Limits{Total: budget})
		for range 3 {
			a.Append(tenByte, false)
			b.Append(tenByte, false)
		}
		if budget.Used() != 6*tenByteSize {
			t.Fatalf("used %d, want %d", budget.Used(), 6*tenByteSize)
		}
		a.Append(tenByte, false) // a's 4th: a drops its oldest
		if n, _ := a.Size(); n != 3 {
			t.Fatalf("a retains %d events, want 3", n)
		}
		if n, _ := b.Size(); n != 3 {
			t.Fatalf("b retains %d events, want 3: another log's append does not touch it", n)
		}
		if oldest, _ := a.Span(); oldest != 2 {
			t.Fatalf("a's oldest is %d, want 2", oldest)
		}
		if budget.Used() != 6*tenByteSize {
			t.Fatalf("used %d after the drop, want %d", budget.Used(), 6*tenByteSize)
		}
	})

	t.Run("a reader past what the budget dropped is told it lost events, and Resume says expired", func(t *testing.T) {
		budget := NewBudget(3 * tenByteSize)
		l := New(Limits{Total: budget})
		for range 10 {
			l.Append(tenByte, false)
		}
		if res := l.Read(2, 0); !res.Lost || fmt.Sprint(seqs(res.Events)) != "[8 9 10]" {
			t.Fatalf("read after 2: %v lost=%v", seqs(res.Events), res.Lost)
		}
		if cursor, gap := l.Resume(l.ID(2)); gap != GapExpired || cursor != 10 {
			t.Fatalf("Resume(%s) = %d, %q; want 10, expired", l.ID(2), cursor, gap)
		}
	})

	t.Run("a log with nothing to give takes room from the others, oldest first, each keeping its newest", func(t *testing.T) {
		budget := NewBudget(4 * tenByteSize)
		older, newer := New(Limits{Total: budget}), New(Limits{Total: budget})
		older.Append(tenByte, false)
		older.Append(tenByte, false)
		newer.Append(tenByte, false)
		newer.Append(tenByte, false)
		l := New(Limits{Total: budget})
		l.Append(tenByte, false)
		if n, _ := older.Size(); n != 1 {
			t.Fatalf("the log with the oldest event retains %d, want 1", n)
		}
		if n, _ := newer.Size(); n != 2 {
			t.Fatalf("the other retains %d, want 2", n)
		}
		if budget.Used() != 4*tenByteSize {
			t.Fatalf("used %d, want %d", budget.Used(), 4*tenByteSize)
		}
	})

	t.Run("the newest event is kept even when it alone is over the budget", func(t *testing.T) {
		budget := NewBudget(2 * tenByteSize)
		other := New(Limits{Total: budget})
		other.Append(tenByte, false)
		other.Append(tenByte, false)
		l := New(Limits{Total: budget})
		l.Append(make([]byte, 1000), false)
		if n, _ := l.Size(); n != 1 {
			t.Fatalf("the big event: %d events retained, want 1", n)
		}
		if n, _ := other.Size(); n != 1 {
			t.Fatalf("the other log retains %d events, want its newest only", n)
		}
		if want := int64(tenByteSize + 1000 + entryOverhead); budget.Used() != want {
			t.Fatalf("used %d, want %d: over the limit only by what no log may drop", budget.Used(), want)
		}
		l.Append(tenByte, false)
		if n, b := l.Size(); n != 1 || b != tenByteSize {
			t.Fatalf("after one more: %d events, %d bytes; want the new one only", n, b)
		}
		if budget.Used() != 2*tenByteSize {
			t.Fatalf("used %d, want %d: back within the limit", budget.Used(), 2*tenByteSize)
		}
	})

	t.Run("every byte is given back: by each log's own limits, by age, and by Close", func(t *testing.T) {
		budget := NewBudget(1 << 20)
		a := New(Limits{Events: 2, Total: budget})
		b := New(Limits{Bytes: 3 * tenByteSize, Total: budget})
		for range 10 {
			a.Append(tenByte, false)
			b.Append(tenByte, false)
		}
		_, aBytes := a.Size()
		_, bBytes := b.Size()
		if budget.Used() != aBytes+bBytes || aBytes != 2*tenByteSize || bBytes != 3*tenByteSize {
			t.Fatalf("used %d; the logs count %d and %d", budget.Used(), aBytes, bBytes)
		}
		a.Close()
		if budget.Used() != bBytes {
			t.Fatalf("after closing a: used %d, want %d", budget.Used(), bBytes)
		}
		if res := a.Read(1, 0); !res.Closed || res.Lost || len(res.Events) != 0 {
			t.Fatalf("a closed log: %+v; want closed, nothing lost or read", res)
		}
		b.Close()
		if budget.Used() != 0 {
			t.Fatalf("after closing both: used %d", budget.Used())
		}
	})

	t.Run("concurrent appends to many logs never take the total over the budget", func(t *testing.T) {
		const logs, each, perLog = 8, 2000, 20
		budget := NewBudget(logs * perLog * tenByteSize)
		all := make([]*Log, logs)
		for i := range all {
			all[i] = New(Limits{Total: budget})
		}
		done := make(chan struct{})
		var most int64
		var sampled sync.WaitGroup
		sampled.Add(1)
		go func() {
			defer sampled.Done()
			for {
				most = max(most, budget.Used())
				select {
				case <-done:
					return
				default:
				}
			}
		}()
		var wg sync.WaitGroup
		for _, l := range all {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range each {
					l.Append(tenByte, false)
				}
			}()
		}
		wg.Wait()
		close(done)
		sampled.Wait()
		if most > budget.Limit() {
			t.Fatalf("the total reached %d, over the budget of %d", most, budget.Limit())
		}
		var sum int64
		for _, l := range all {
			_, b := l.Size()
			sum += b
		}
		if sum != budget.Used() {
			t.Fatalf("the logs count %d bytes, the budget %d", sum, budget.Used())
		}
	})

	t.Run("a nil budget is no bound", func(t *testing.T) {
		l := New(Limits{})
		appendN(l, 100)
		if n, _ := l.Size(); n != 100 {
			t.Fatalf("%d events retained", n)
		}
	})
}
