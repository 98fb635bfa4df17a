package idmap

import (
	"bytes"
	"io"
)

// Lookup returns the replacement for a token, and false to leave it as it is.
// The token slice is only valid during the call.
type Lookup func(token []byte) (string, bool)

var prefix = []byte(Prefix)

// Rewriter replaces tokens in a stream that arrives in arbitrary pieces. It
// holds back at most one partial token (MaxTokenLen bytes) between calls, so
// an event of a server-sent event stream, which ends in a blank line, always
// leaves it complete. A Rewriter is not safe for concurrent use.
type Rewriter struct {
	lookup  Lookup
	pending []byte // a possible token cut by the end of the last piece
	joined  []byte // scratch: pending followed by the new piece
	prev    byte   // the byte before pending, for the left-boundary rule
	count   int64  // tokens replaced so far
}

// NewRewriter returns a Rewriter that replaces the tokens lookup knows.
func NewRewriter(lookup Lookup) *Rewriter {
	return &Rewriter{lookup: lookup}
}

// Replaced returns how many tokens were replaced so far.
func (rw *Rewriter) Replaced() int64 { return rw.count }

// Append rewrites p, which follows whatever was given before, appends the
// result to dst and returns it. Bytes that may start a token that p leaves
// unfinished are kept for the next call; final says there is no next call, so
// that everything is written.
func (rw *Rewriter) Append(dst, p []byte, final bool) []byte {
	data := p
	if len(rw.pending) > 0 {
		rw.joined = append(append(rw.joined[:0], rw.pending...), p...)
		data = rw.joined
	}
	if len(data) == 0 {
		return dst
	}
	emitted, from := 0, 0
	hold := len(data)
	for {
		k := bytes.Index(data[from:], prefix)
		if k < 0 {
			break
		}
		start := from + k
		if start > 0 && IsIDChar(data[start-1]) || start == 0 && IsIDChar(rw.prev) {
			from = start + len(Prefix)
			continue
		}
		end := start + len(Prefix)
		for end < len(data) && IsIDChar(data[end]) {
			end++
		}
		if end == len(data) && !final && end-start <= MaxTokenLen {
			hold = start // the token may go on in the next piece
			break
		}
		if end-start <= MaxTokenLen {
			if repl, ok := rw.lookup(data[start:end]); ok {
				dst = append(dst, data[emitted:start]...)
				dst = append(dst, repl...)
				emitted = end
				rw.count++
			}
		}
		from = end
	}
	if hold == len(data) && !final {
		hold = partialPrefixStart(data, rw.prev)
	}
	dst = append(dst, data[emitted:hold]...)
	if hold > 0 {
		rw.prev = data[hold-1]
	}
	rw.pending = append(rw.pending[:0], data[hold:]...)
	return dst
}

// partialPrefixStart returns where a trailing "s", "se" or "ses" that could
// begin a token starts, or len(data) when data cannot end inside a token.
func partialPrefixStart(data []byte, prev byte) int {
	for n := len(Prefix) - 1; n > 0; n-- {
		start := len(data) - n
		if start < 0 || !bytes.Equal(data[start:], prefix[:n]) {
			continue
		}
		before := prev
		if start > 0 {
			before = data[start-1]
		}
		if !IsIDChar(before) {
			return start
		}
	}
	return len(data)
}

// Replace rewrites a complete buffer and says how many tokens it replaced.
// With none replaced it returns src itself, and a buffer without "ses_" is
// not copied at all.
func Replace(src []byte, lookup Lookup) ([]byte, int64) {
	if !bytes.Contains(src, prefix) {
		return src, 0
	}
	rw := NewRewriter(lookup)
	out := rw.Append(make([]byte, 0, len(src)+64), src, true)
	if rw.count == 0 {
		return src, 0
	}
	return out, rw.count
}

// Writer is an io.WriteCloser that rewrites what is written to it before
// passing it on. Close writes out the last held bytes; it does not close the
// underlying writer.
type Writer struct {
	rw  *Rewriter
	dst io.Writer
	buf []byte
}

// NewWriter returns a Writer that rewrites into dst.
func NewWriter(dst io.Writer, lookup Lookup) *Writer {
	return &Writer{rw: NewRewriter(lookup), dst: dst}
}

// Write rewrites p. It reports len(p) written when everything that could be
// decided was passed on; held bytes go out with a later Write or Close.
func (w *Writer) Write(p []byte) (int, error) {
	w.buf = w.rw.Append(w.buf[:0], p, false)
	if len(w.buf) > 0 {
		if _, err := w.dst.Write(w.buf); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Close writes out whatever is still held.
func (w *Writer) Close() error {
	w.buf = w.rw.Append(w.buf[:0], nil, true)
	if len(w.buf) == 0 {
		return nil
	}
	_, err := w.dst.Write(w.buf)
	return err
}

// Replaced returns how many tokens were replaced so far.
func (w *Writer) Replaced() int64 { return w.rw.Replaced() }

// EachToken calls visit with every token of a complete buffer, in order,
// without copying it, until visit returns false. It finds the tokens Replace
// looks up, but for a bare prefix, which no id is.
func EachToken(src []byte, visit func(token []byte) bool) {
	from := 0
	for {
		k := bytes.Index(src[from:], prefix)
		if k < 0 {
			return
		}
		start := from + k
		if start > 0 && IsIDChar(src[start-1]) {
			from = start + len(Prefix)
			continue
		}
		end := start + len(Prefix)
		for end < len(src) && IsIDChar(src[end]) {
			end++
		}
		if end-start <= MaxTokenLen && end-start > len(Prefix) && !visit(src[start:end]) {
			return
		}
		from = end
	}
}

// TooManyTokens reports whether the buffers together hold more than max
// distinct tokens; it stops counting at max+1.
func TooManyTokens(max int, bufs ...[]byte) bool {
	var seen map[string]struct{}
	for _, b := range bufs {
		if bytes.Contains(b, prefix) {
			seen = map[string]struct{}{}
			break
		}
	}
	if seen == nil {
		return false
	}
	for _, b := range bufs {
		EachToken(b, func(token []byte) bool {
			if _, ok := seen[string(token)]; !ok {
				seen[string(token)] = struct{}{}
			}
			return len(seen) <= max
		})
		if len(seen) > max {
			return true
		}
	}
	return false
}
