// Package caddymodule is the session_ids HTTP handler
// (http.handlers.session_ids): its configuration and Caddyfile directive,
// provisioning, the dispatcher (ServeHTTP, whose order serve.go writes
// down), creating sessions under client ids (mapping mode: create.go,
// adopt.go; direct mode: direct.go, capability.go), deletes, create_missing,
// the OpenAPI document, and the ids of every request and answer (ids.go: one
// translator per mode, and the streaming response rewriter).
//
// It owns the mapping index of its namespace (package idmap) and composes
// the subsystems below it, each behind the small contract it declares:
// fleet (the workers behind reverse_proxy), events (resumable streams),
// idempotency (exactly-once prompts), with internal/upstream between them
// and reverse_proxy. The selection policy is package lbpolicy. Nothing below
// imports this package.
package caddymodule

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/access"
	"github.com/sessionid/caddy-sessionid/events"
	"github.com/sessionid/caddy-sessionid/fleet"
	"github.com/sessionid/caddy-sessionid/idempotency"
	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/moving"
	"github.com/sessionid/caddy-sessionid/internal/shared"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
	"github.com/sessionid/caddy-sessionid/journal"
	"github.com/sessionid/caddy-sessionid/move"
	"github.com/sessionid/caddy-sessionid/relocation"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler gives an agent server that ignores client-chosen session ids (stock
// `opencode serve`) sessions whose ids the client picks. Place it before
// `reverse_proxy`, in a `route` or with the directive order it registers.
//
// A `POST /session` whose JSON body carries an `id` creates the upstream
// session (or finds the one already made for that id), stores the pair
// client id ↔ real id in Caddy's storage, and answers with the session under
// the client's id. From then on every request naming the client id reaches
// the upstream with the real id, and every response and event stream that
// carries the real id reaches the client with its own id. Sessions created
// without an id pass through untouched.
type Handler struct {
	// Mode selects how ids reach the upstream. "mapping" (the default) maps
	// client ids to the upstream's own ids and rewrites them in both
	// directions; it needs nothing from the upstream beyond the plain OpenCode
	// session API. "direct" passes ids to an upstream that honours them
	// itself (the reference native server through v1 POST /session, stock
	// opencode 1.17.9 or later through v2 POST /api/session), rewrites
	// nothing, and keeps validation, the duplicate policy and exactly-once
	// creation in the module. Which route a direct upstream offers is read
	// from its GET /doc at the first create; an upstream with neither is
	// refused with 501 and an error in the log.
	Mode string `json:"mode,omitempty"`

	// Namespace separates the mappings of different upstreams that share one
	// Caddy storage. Real ids are meaningful only to the server that made them,
	// so give each upstream server (each opencode data directory) its own
	// namespace. Default: "default".
	Namespace string `json:"namespace,omitempty"`

	// Duplicates says how a create is answered when its id is already mapped:
	// "match" (default) replays the existing session with 200 and the header
	// `Idempotent-Replayed: true` when the create provides the same title,
	// agent, model, metadata, permission, parentID, workspaceID and directory as
	// the one that made it, and answers 409 naming the fields that differ
	// otherwise; "return" always replays; "reject" always answers 409.
	Duplicates string `json:"duplicates,omitempty"`

	// MaxBodySize limits the request bodies the handler reads to rewrite ids
	// (JSON bodies only). A larger body is refused with 413 and never reaches
	// the upstream. Default: 64 MiB.
	MaxBodySize int64 `json:"max_body_size,omitempty"`

	// MaxBufferSize is the largest JSON response that is rewritten in memory so
	// that it keeps an exact Content-Length. Larger responses, and responses of
	// unknown length, are rewritten as they stream and sent without one.
	// Event streams are never buffered. Default: 4 MiB.
	MaxBufferSize int64 `json:"max_buffer_size,omitempty"`

	// CacheEntries is about how many ids the in-memory cache keeps, counting
	// both directions. The cache only speeds up lookups: a mapping that is not
	// cached is read from storage. Each cached id costs about 0.5 KB of
	// memory (measured: 100000 of them add about 53 MiB). Default: 20000.
	CacheEntries int64 `json:"cache_entries,omitempty"`

	// CreateMissing makes a request that names a well-formed session id that
	// does not exist yet create that session first, with the same
	// exactly-once and durability rules as an explicit create, so that
	// `opencode run --attach <caddy> --session <new id>` works. It applies to
	// GET /session/{id}, GET and POST /session/{id}/message and POST
	// /session/{id}/prompt_async, /command and /shell. Each such request for
	// an id the handler has not mapped costs one storage read and one upstream
	// GET. An id deleted through the handler is never made again this way:
	// its tombstone in storage keeps it deleted, and its reads the upstream's
	// 404, until an explicit create. Default: off.
	CreateMissing bool `json:"create_missing,omitempty"`

	// CacheTTL is how long a mapping stays in the cache before it is read
	// from storage again. A mapping changes only when its id is deleted and
	// created again; through this instance the cache follows at once, and
	// through another instance sharing the storage this instance follows
	// within CacheTTL. Default: 30s.
	CacheTTL caddy.Duration `json:"cache_ttl,omitempty"`

	// NegativeTTL is how long the handler remembers that an id is not mapped,
	// which spares a storage read for every unmapped id in a response. Mappings
	// made through this Caddy instance are visible at once regardless; one made
	// through another instance sharing the storage becomes visible here within
	// this time. Default: 2s. A negative value disables negative caching.
	NegativeTTL caddy.Duration `json:"negative_ttl,omitempty"`

	// Idempotency configures the Idempotency-Key header on the prompt
	// routes, which makes a retried prompt run once (see idempotency.Config
	// and docs/idempotency.md). On by default; requests without the header
	// are never affected.
	Idempotency *idempotency.Config `json:"idempotency,omitempty"`

	// Auth says how the handler learns, before it answers anything from its
	// own records, reads a body or spends work on a request, whether the
	// upstream would serve the caller: by asking the upstream with the
	// caller's credentials (verify, the default) or by trusting a Caddy
	// authentication handler placed before this one (trust). A caller the
	// upstream would refuse gets the upstream's refusal and nothing else
	// (see access.Config and docs/security.md).
	Auth *access.Config `json:"auth,omitempty"`

	// MaxIDsPerBody bounds how many distinct session ids the handler looks
	// up to rewrite one request body (mapping mode). A body naming more is
	// refused with 413 before any is looked up, like a body over
	// max_body_size. Default: 1000.
	MaxIDsPerBody int `json:"max_ids_per_body,omitempty"`

	// UpstreamAuthorization is the Authorization header of the handler's own
	// requests to workers that no client request carries: moves and drains
	// through the admin API (docs/fleet.md#moving-and-draining). Set it to
	// what the health checks send when the workers have a password. Default:
	// none.
	UpstreamAuthorization string `json:"upstream_authorization,omitempty"`

	// Events configures resumable event streams on GET /event and
	// /global/event: ids on every event, replay after Last-Event-ID, one
	// upstream subscription per stream shared by its clients (see
	// events.Config and docs/events.md). On by default.
	Events *events.Config `json:"events,omitempty"`

	// Journal keeps each session's sync history in Caddy's storage, at
	// most one completed turn behind, so that a session can be made again
	// on another worker when its own is lost (see journal.Config and
	// docs/fleet.md). It follows the workers lb_policy session_ids
	// balances. Off by default.
	Journal *journal.Config `json:"journal,omitempty"`

	duplicates    idmap.DuplicatePolicy
	index         *idmap.Index
	indexKey      string // in shared.Pool
	ids           ids    // the mode's translator
	createSession func(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *createRequest) error
	probes        *sync.Map // worker → *capabilityProbe, for direct mode
	fleet         *fleet.Fleet
	observe       func(*http.Request, *upstream.Route) // fleet.Observe, the Done of every route
	streams       *events.Streams
	prompts       *idempotency.Prompts
	gate          *access.Gate
	relocator     *relocation.Relocator
	moves         *moving.Namespace // the namespace's moves and drains
	storage       certmagic.Storage // Caddy's, for the journal
	journal       *journalKeeping
	logger        *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.session_ids",
		New: func() caddy.Module { return new(Handler) },
	}
}

// The modes.
const (
	ModeMapping = "mapping"
	ModeDirect  = "direct"
)

// Defaults of the configuration fields, applied by Provision.
const (
	defaultNamespace     = "default"
	defaultMaxBodySize   = 64 << 20
	defaultMaxBufferSize = 4 << 20
	defaultNegativeTTL   = 2 * time.Second
	defaultCacheTTL      = 30 * time.Second
	defaultMaxIDsPerBody = 1000
)

type pooledIndex struct{ *idmap.Index }

func (p pooledIndex) Destruct() error { p.Close(); return nil }

// Provision sets up the handler.
func (h *Handler) Provision(ctx caddy.Context) error {
	return h.provision(ctx.Storage(), ctx.GetMetricsRegistry(), ctx.Logger())
}

// provision is Provision with what it takes of Caddy's context.
func (h *Handler) provision(storage certmagic.Storage, registry *prometheus.Registry, logger *zap.Logger) error {
	h.logger = logger
	h.storage = storage
	h.setDefaults() // before the index: its settings are part of its key
	if err := registerAllMetrics(registry); err != nil {
		return err
	}
	// One Index per namespace, storage and cache settings, across config
	// reloads, so that the handler of a new config sees the locks,
	// in-flight creates and cache of the handler it replaces while both
	// serve requests. Settings that shape the index are part of the key, so
	// a reload that changes them gets a new index instead of silently
	// keeping the old one.
	storageKey := fmt.Sprintf("%s|%s|%d|%s|%s", h.Namespace, storageIdentity(storage), h.CacheEntries, time.Duration(h.CacheTTL), time.Duration(h.NegativeTTL))
	h.indexKey = "index|" + storageKey
	value, _, err := shared.Pool.LoadOrNew(h.indexKey, func() (caddy.Destructor, error) {
		store := idmap.NewStore(storage, h.Namespace)
		store.Observe = observeStorage(h.Namespace)
		index, err := idmap.NewIndex(store, idmap.IndexConfig{
			CacheEntries: h.CacheEntries,
			TTL:          time.Duration(h.CacheTTL),
			NegativeTTL:  time.Duration(h.NegativeTTL),
		})
		if err != nil {
			return nil, err
		}
		index.OnLookup = observeLookup(h.Namespace)
		return pooledIndex{index}, nil
	})
	if err != nil {
		return err
	}
	return h.setup(value.(pooledIndex).Index, storageKey)
}

// setDefaults gives every configuration field left unset its default.
func (h *Handler) setDefaults() {
	if h.logger == nil {
		h.logger = zap.NewNop()
	}
	if h.Mode == "" {
		h.Mode = ModeMapping
	}
	if h.Namespace == "" {
		h.Namespace = defaultNamespace
	}
	if h.MaxBodySize == 0 {
		h.MaxBodySize = defaultMaxBodySize
	}
	if h.MaxBufferSize == 0 {
		h.MaxBufferSize = defaultMaxBufferSize
	}
	if h.CacheTTL == 0 {
		h.CacheTTL = caddy.Duration(defaultCacheTTL)
	}
	if h.NegativeTTL == 0 {
		h.NegativeTTL = caddy.Duration(defaultNegativeTTL)
	}
	if h.MaxIDsPerBody == 0 {
		h.MaxIDsPerBody = defaultMaxIDsPerBody
	}
	if h.Auth == nil {
		h.Auth = new(access.Config)
	}
	if h.Events == nil {
		h.Events = new(events.Config)
	}
	if h.Idempotency == nil {
		h.Idempotency = new(idempotency.Config)
	}
}

// setup builds the handler around its index: the mode's translator and
// create, the fleet, the event streams and the keyed prompts. storageKey
// names the index's namespace and storage.
func (h *Handler) setup(index *idmap.Index, storageKey string) error {
	h.setDefaults()
	policy, err := idmap.ParseDuplicatePolicy(h.Duplicates)
	if err != nil {
		return err
	}
	h.duplicates = policy
	h.index = index
	h.probes = new(sync.Map)
	switch h.Mode {
	case ModeDirect:
		h.ids, h.createSession = directIDs{h}, h.createDirect
	default:
		h.ids, h.createSession = mappedIDs{h}, h.createMapped
	}
	if afterFork != nil {
		h.logger.Error("test-only fault hook enabled: this process will kill itself after a fork under a chosen id", zap.String(idempotency.FaultEnv, faultCrashAfterFork))
	}
	if err := h.Auth.Provision(); err != nil {
		return err
	}
	if h.gate, err = access.New(*h.Auth, h.Namespace, index.Store.Secret, h.logger); err != nil {
		return err
	}
	h.fleet = fleet.New(h.Namespace, index, h.logger)
	h.moves = moving.Of(h.Namespace)
	h.relocator = &relocation.Relocator{Namespace: h.Namespace, Index: index, Fleet: h.fleet,
		Workers: move.Workers{Authorization: h.UpstreamAuthorization}, Logger: h.logger}
	if err := h.relocator.LoadDraining(context.Background()); err != nil {
		h.logger.Warn("could not read which workers are being drained", zap.Error(err))
	}
	relocation.Register(h.relocator)
	h.observe = h.fleet.Observe // one method value, not one per request
	if h.streams, err = events.New(h.Events, h.Namespace, h.ids, h.fleet, h.logger); err != nil {
		return err
	}
	if h.prompts, err = idempotency.New(h.Idempotency, h.Namespace, index, h.ids, h.MaxBodySize, storageKey, h.logger); err != nil {
		return err
	}
	return h.startJournal()
}

// storageIdentity names a storage so that configs using the same storage share
// an index. Only file storage is shared across configs, by its folder: other
// storages are new objects in each config, and the old config closes its own
// (a Redis client, say) when it is unloaded, so an index kept from it would
// hold a closed storage. For those, exactly-once across a reload rests on the
// storage lock, as it does across Caddy instances.
func storageIdentity(s any) string {
	if fs, ok := s.(*certmagic.FileStorage); ok {
		return "file:" + fs.Path
	}
	return fmt.Sprintf("%T@%p", s, s)
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if h.Mode != ModeMapping && h.Mode != ModeDirect {
		return fmt.Errorf("unknown mode %q: want mapping or direct", h.Mode)
	}
	if h.MaxBodySize < 0 || h.MaxBufferSize < 0 || h.CacheEntries < 0 || h.MaxIDsPerBody < 0 {
		return fmt.Errorf("sizes must not be negative")
	}
	return nil
}

// Cleanup releases the handler's share of its index, sweeper and streams.
func (h *Handler) Cleanup() error {
	if h.prompts != nil {
		h.prompts.Close()
	}
	if h.gate != nil {
		h.gate.Close()
	}
	if h.streams != nil {
		h.streams.Close()
	}
	if h.relocator != nil {
		relocation.Unregister(h.relocator)
	}
	h.stopJournal()
	if h.indexKey == "" {
		return nil
	}
	_, err := shared.Pool.Delete(h.indexKey)
	return err
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
