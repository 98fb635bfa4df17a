package idmap

import (
	"crypto/rand"
	"fmt"
	"sync/atomic"
	"time"
)

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

var idCounter atomic.Uint32

// NewID returns an id in opencode's own shape: prefix, "_", 12 hex digits of
// time and counter, and 14 random base62 characters, e.g.
// ses_df56f5ae4ffeUEKLWgxQCa70jN. Like opencode's, session ids count down
// (descending) so that newer sessions sort first, and other ids count up.
func NewID(prefix string, descending bool) string {
	v := uint64(time.Now().UnixMilli())*0x1000 + uint64(idCounter.Add(1)&0xfff)
	if descending {
		v = ^v
	}
	random := make([]byte, 14)
	_, _ = rand.Read(random)
	for i, b := range random {
		random[i] = base62[int(b)%len(base62)]
	}
	return fmt.Sprintf("%s_%012x%s", prefix, v&0xffffffffffff, random)
}
