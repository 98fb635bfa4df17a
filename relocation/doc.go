// Package relocation moves sessions between the workers of a session_ids
// handler while clients keep using them, and drains a worker of all its
// sessions: the Caddy admin API of it (admin.api.session_ids, admin.go),
// one move (Relocator.Move), and drain jobs that outlive config reloads
// (drain.go).
//
// A move, under the session's move lock (on every Caddy sharing the
// storage): the session and its children are held (their requests wait,
// internal/moving), copied with their history once idle (package move),
// switched to the new worker in the index, released (the waiting requests
// go to the new worker), and deleted on the old one, whose session.deleted
// is not passed to clients (idmap.Moved).
package relocation
