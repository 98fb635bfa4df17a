package idmap

import (
	"crypto/sha256"
	"encoding/hex"
)

// ForkLockName is the name under which Index.Lock serialises the forks of
// one upstream session made through the proxy. opencode copies a session's
// metadata to its forks, so a fork is told apart from its parent's other
// forks only by when it was made: one fork of a session at a time keeps
// "the fork of this session made while this fork was pending" down to one
// session. The real id is hashed: it comes from the upstream, and a storage
// key must hold nothing a backend treats specially.
func ForkLockName(parentRealID string) string {
	sum := sha256.Sum256([]byte(parentRealID))
	return "fork/" + hex.EncodeToString(sum[:])
}
