// Package access decides, before the handler answers anything from its own
// records, reads a request body or spends work on a request, whether the
// upstream would serve the caller at all.
//
// opencode protects itself with one password (OPENCODE_SERVER_PASSWORD,
// HTTP basic auth, user "opencode"), which it takes in the Authorization
// header or as ?auth_token=<base64 of user:password>. The handler keeps
// records (mappings, keyed-prompt answers, retained events) the upstream
// never sees being read; without this package a caller the upstream would
// refuse could read them. A Gate learns who is asking in one of two ways:
//
//   - verify (the default): it asks the upstream, with the caller's own
//     credentials, for a cheap route (GET /global/health) and remembers the
//     verdict, good or refused, for a short while in a bounded cache keyed
//     by an HMAC of the credentials under a secret of this process: never
//     the credentials themselves, nor a plain hash of them;
//   - trust: a Caddy authentication handler placed before this one
//     (basic_auth, forward_auth) has checked the caller and named the user
//     in a placeholder; a request on which it named no user is refused.
//
// A refused caller gets the upstream's own refusal (status, body and
// WWW-Authenticate) and nothing else. An admitted caller is given a Caller,
// a stable name of its credentials that records can be bound to.
package access
