// Package shared holds the module's one caddy.UsagePool: the state that
// outlives a config reload, so that the handler of a new config finds what
// the one it replaces built while both serve requests. Keys name their
// owner: "index|…" (the mapping index of a namespace, storage and cache
// settings; package caddymodule), "sweeper|…" (the sweeper of expired prompt
// records; package idempotency) and "events|…" (the event hubs of a
// namespace; package events). A value lives while some config holds it and
// is destructed when the last one lets go.
package shared

import "github.com/caddyserver/caddy/v2"

// Pool is the state that outlives config reloads.
var Pool = caddy.NewUsagePool()
