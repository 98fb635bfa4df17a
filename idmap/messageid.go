package idmap

import (
	"crypto/sha256"
	"fmt"
	"time"
)

// NewMessageID returns the user message id under which a keyed prompt is
// sent upstream: opencode's own ascending shape, "msg_" + 12 hex digits of
// time and counter + 14 base62 characters, with the 14 derived from the
// session, the key and the time instead of drawn at random.
//
// The time field matters: opencode 1.18 lists a session's messages by
// (time created, id), and its web and terminal clients keep messages sorted
// by id, so a message id that did not start with the current time in
// opencode's encoding would show the prompt out of place in history. The
// derived tail makes the id traceable to its key by anyone who knows both
// (see docs/idempotency.md) without a lookup, and the time field keeps two
// records of one key (the first expired) from ever sharing an id.
func NewMessageID(now time.Time, sessionID, key string) string {
	v := (uint64(now.UnixMilli())*0x1000 + uint64(idCounter.Add(1)&0xfff)) & 0xffffffffffff
	sum := sha256.Sum256([]byte(fmt.Sprintf("session_ids message\x00%s\x00%s\x00%d", sessionID, key, v)))
	tail := make([]byte, 14)
	for i := range tail {
		tail[i] = base62[int(sum[i])%len(base62)]
	}
	return fmt.Sprintf("msg_%012x%s", v, tail)
}
