// Package idempotency makes prompts exactly-once with the Idempotency-Key
// header (draft-ietf-httpapi-idempotency-key-header) on opencode's prompt
// routes: the first request with a key is sent upstream once, under a
// message id recorded before it goes; every later request with the key on
// the session gets the first one's answer back. It owns the prompt records
// in Caddy's storage (through package idmap), their sweeper, its
// configuration, Caddyfile option, metrics and part of the OpenAPI document.
//
// What it needs of the handler is the IDs interface (the upstream's id of a
// session, rewriting a body, relaying an answer); it talks to the upstream
// through internal/upstream and must not import the handler.
package idempotency
