// Package move copies a session, with its whole history, from one opencode
// worker to another over opencode's sync routes, and checks the copy: the
// part of a move that talks to workers. What a move must also do around it
// (hold the session's requests, switch the recorded worker, delete the
// source's copy without telling clients) is the caller's (package
// relocation).
//
// opencode 1.18 keeps a session as a log of sync events per aggregate (the
// session's id): POST /sync/history returns the events after the positions
// it is given for the aggregates it lists, and the whole history of every
// aggregate it does not list; POST /sync/replay applies a history on
// another server, where the session appears under the same id, with its
// messages, and its next prompt carries the earlier turns.
package move
