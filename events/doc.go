// Package events serves opencode's event streams, GET /event and
// /global/event, for the session_ids handler: resumable streams (every
// event with an SSE id, replay after Last-Event-ID, one upstream
// subscription per scope shared by its clients, kept across config
// reloads), and with several workers one stream merged from a subscription
// per worker.
//
// An event's way through: a subscription's Answer cuts the upstream's bytes
// into whole events (subscribe.go, follow.go for the workers of a fleet);
// the hub rewrites each once with the handler's IDs and appends it to its
// log (hub.go, package eventlog); each client reads the log from its own
// cursor (client.go). With events off, a merged fleet stream goes from the
// same per-worker subscriptions straight to its one client (merged.go).
// What the streams of a namespace hold at once, hubs, clients (in all and
// per client address) and retained bytes, is bounded (limits.go); a scope
// is only what the upstream honours, so that junk in a query string makes
// no stream of its own (hub.go).
//
// What it needs of the handler is two small interfaces, IDs (rewrite an
// event into the client's ids, having followed a create it announces) and
// Workers (the pool); it must not import the handler, and it keeps no
// mapping or record of its own.
package events
