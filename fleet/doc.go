// Package fleet is what the session_ids handler knows of the workers behind
// reverse_proxy and how it uses them: the pool lb_policy session_ids
// reported last, finding a session's worker (recorded, or found by asking
// every worker once), placing a new session, routing a request to its
// session's worker or answering 503 naming it, and the fleet-wide reads
// (/session, /session/status, /permission, /question) answered from every
// worker as if one opencode held every session.
//
// It reads and records workers through the mapping index (package idmap)
// and talks to workers through internal/upstream. It knows nothing of id
// rewriting, creates or event streams, and must not import the handler.
package fleet
