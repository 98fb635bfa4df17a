// Package idmap is the domain of client-chosen session ids: the id grammar,
// the durable mapping between a client's id and the upstream's real id, the
// duplicate policy, and the byte-level rewriting of ids in streams.
//
// The mapping is written to a [Storage] (Caddy's configured storage in
// production) and read through an in-memory ristretto cache. The storage is the
// only source of truth: the cache may drop any entry at any time, and every
// decision that must be exactly-once (creating a session for an id) is taken
// under a per-id lock, first in-process and then in the storage, so that it
// also holds across Caddy instances that share the storage.
//
// Rewriting works on tokens rather than on JSON structure: a token is a
// maximal run of id characters ([A-Za-z0-9_-]) that starts with "ses_" and is
// not preceded by an id character. A token that is a mapped id is replaced
// whole; everything else passes through byte for byte. Because tokens are
// matched whole, a mapped id is never replaced inside a longer id, and because
// the scanner carries at most one partial token between writes, streams are
// rewritten as they flow without being buffered.
//
// This package knows nothing of HTTP; the Caddy glue lives in caddymodule.
package idmap
