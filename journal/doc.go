// Package journal keeps a copy of each session's sync history (opencode's
// POST /sync/history events) in Caddy's storage, so that a session can be
// replayed onto another worker when its own is lost for good (issue 18).
//
// A session's journal is chunks of consecutive events, each written once
// under the seq range it holds:
//
//	session_ids/<namespace>/journal/<real id>/<first seq>-<last seq>   a JSON array of events
//	session_ids/<namespace>/journal/<real id>/full                     the journal passed its limit
//
// Appending never reads what is stored, and appending the same events again
// rewrites the same chunk. A journal that would pass its size limit is
// marked full and keeps nothing more: it is never half a history.
package journal
