package eventlog

import (
	"strconv"
	"strings"
)

// ID returns the event id of the event numbered seq: the Log's epoch and the
// number, "<epoch>-<seq>". It is what a client sends back as Last-Event-ID.
func (l *Log) ID(seq uint64) string { return l.epoch + "-" + strconv.FormatUint(seq, 10) }

// Why a reader cannot resume exactly where it asked.
type Gap string

const (
	// NoGap: the reader gets every event after its id.
	NoGap Gap = ""
	// GapExpired: the id is this stream's, but events after it are no
	// longer retained.
	GapExpired Gap = "expired"
	// GapUnknown: the id is not this stream's: it was sent by another Caddy
	// instance, or before this stream was started again (a restart, a stream
	// that was idle for longer than it is kept), or it is malformed.
	GapUnknown Gap = "unknown"
	// GapOverrun: the reader was too slow to keep up, and events it had not
	// read yet were dropped.
	GapOverrun Gap = "overrun"
	// GapUpstream: the upstream's stream broke off and was subscribed
	// again; events it sent in between never arrived.
	GapUpstream Gap = "upstream_reconnected"
)

// Resume returns the cursor from which a reader that last saw the event
// lastEventID reads on, and the gap it must be told about, if any. With no
// id the reader starts at the newest event, as a new subscriber would; with
// a gap it continues from the newest event too, once told.
func (l *Log) Resume(lastEventID string) (cursor uint64, gap Gap) {
	oldest, newest := l.Span()
	last := l.Last()
	if lastEventID == "" {
		return last, NoGap
	}
	epoch, number, ok := strings.Cut(lastEventID, "-")
	seq, err := strconv.ParseUint(number, 10, 64)
	if !ok || err != nil || epoch != l.epoch || seq > last {
		return last, GapUnknown
	}
	if seq == last || (newest != 0 && seq+1 >= oldest) {
		return seq, NoGap
	}
	return last, GapExpired
}
