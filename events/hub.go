package events

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/sessionid/caddy-sessionid/access"
	"github.com/sessionid/caddy-sessionid/eventlog"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// Event streams are served from hubs. A hub is one upstream subscription
// (one per worker with several) for one scope (a path, the selectors the
// upstream honours and the caller), the log of its recent events, and the
// clients reading that log. The first client of a scope starts the hub; the hub
// keeps its subscription, and so keeps retaining events, for Linger after
// its last client left, so that a client that drops and comes back misses
// nothing. Hubs are kept in a registry shared by the handlers of one
// namespace across config reloads: a client that reconnects to the new
// config resumes from the same log.

// registry is the hubs of one namespace, by scope, and the streams of the
// namespace's live configs, newest last, with what bounds them all: the
// client streams admitted and the budget of their retained events. It is
// kept in shared.Pool, across config reloads.
type registry struct {
	namespace string
	admission *admission
	budget    *eventlog.Budget

	mu     sync.Mutex
	hubs   map[string]*eventHub
	owners []*Streams
}

// join adds the streams of a config being loaded; its retain_total applies
// from now on.
func (g *registry) join(s *Streams) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.owners = append(g.owners, s)
	g.budget.SetLimit(s.config.RetainTotal)
}

func newRegistry(namespace string) *registry {
	return &registry{
		namespace: namespace,
		admission: newAdmission(namespace),
		budget:    eventlog.NewBudget(defaultRetainTotal),
		hubs:      map[string]*eventHub{},
	}
}

// Destruct ends every hub: no config uses the namespace any more.
func (g *registry) Destruct() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	for key, hub := range g.hubs {
		delete(g.hubs, key)
		hub.close()
	}
	g.countHubsLocked()
	return nil
}

func (g *registry) countHubsLocked() {
	eventMetrics.hubs.WithLabelValues(g.namespace).Set(float64(len(g.hubs)))
}

// eventScope is what makes two clients' streams the same stream: only what
// the upstream honours, so that what a client may vary freely (a junk query
// parameter) cannot make a stream, an upstream subscription and a retained
// log, per value.
type eventScope struct {
	key      string
	path     string // /event or /global/event
	rawQuery string // the stream's selectors among the client's query (streamParams)
	fleet    bool   // one subscription per worker, merged
}

// streamParams are the query parameters opencode declares on each event
// stream (its /doc, 1.18.33: directory and workspace on /event, none on
// /global/event), which are all it reads there. The rest of a client's
// query (the resume parameters, anything else) is part of neither the scope
// nor the subscription, but for access.TokenParam, the credentials opencode
// takes in the query: they reach the subscription, and the scope only as
// the caller.
var streamParams = map[string][]string{
	"/event":        {"directory", "workspace"},
	"/global/event": nil,
}

// selectorHeaders are opencode's directory and workspace selectors as
// headers: they decide what a stream carries.
var selectorHeaders = []string{"X-Opencode-Directory", "X-Opencode-Workspace"}

// credentialHeaders are what names the caller of a request that did not
// pass the gate (tests of this package), with access.TokenParam.
var credentialHeaders = []string{"Authorization", "Cookie"}

// resumeParams are the query parameters a client may name its last event
// id with, for clients that cannot set headers (EventSource).
var resumeParams = []string{"lastEventID", "last_event_id"}

// scopeOf returns the scope of a client's event stream request. The caller
// is the gate's (access.CallerOf: the same credentials, in a header or in
// auth_token, are one caller); headers enter the key only as a digest.
func (s *Streams) scopeOf(r *http.Request, fleet bool) eventScope {
	scope := eventScope{path: r.URL.Path, rawQuery: selectQuery(r.URL.Query(), streamParams[r.URL.Path]).Encode(), fleet: fleet}
	digest := sha256.New()
	names := selectorHeaders
	caller, admitted := access.CallerOf(r)
	if !admitted {
		names = append(slices.Clone(credentialHeaders), selectorHeaders...)
		tokens := r.URL.Query()[access.TokenParam]
		digest.Write([]byte(access.TokenParam + "\x00" + strings.Join(tokens, "\x00") + "\x01"))
	}
	for _, name := range names {
		values := r.Header.Values(name)
		sort.Strings(values)
		digest.Write([]byte(name + "\x00" + strings.Join(values, "\x00") + "\x01"))
	}
	mode := "single"
	if fleet {
		mode = "fleet"
	}
	scope.key = strings.Join([]string{s.ids.Mode(), mode, scope.path, scope.rawQuery, caller.ID, hex.EncodeToString(digest.Sum(nil))}, "|")
	return scope
}

// selectQuery returns the parameters of query named in names, every value
// of each.
func selectQuery(query url.Values, names []string) url.Values {
	kept := url.Values{}
	for _, name := range names {
		if values, ok := query[name]; ok {
			kept[name] = values
		}
	}
	return kept
}

// subscriptionQuery is the query of a hub's subscriptions, made for the
// first client of its scope: the scope's selectors and the client's
// credentials, if it sent them in the query.
func subscriptionQuery(r *http.Request) string {
	return selectQuery(r.URL.Query(), append(slices.Clone(streamParams[r.URL.Path]), access.TokenParam)).Encode()
}

// lastEventID is the id a reconnecting client names: the Last-Event-ID
// header, or a resume query parameter.
func lastEventID(r *http.Request) string {
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		return strings.TrimSpace(id)
	}
	query := r.URL.Query()
	for _, p := range resumeParams {
		if id := query.Get(p); id != "" {
			return strings.TrimSpace(id)
		}
	}
	return ""
}

// eventHub is one scope's upstream subscription, event log and clients.
type eventHub struct {
	scope    eventScope
	log      *eventlog.Log
	registry *registry
	ctx      context.Context // the subscription's; ends with the hub
	cancel   context.CancelFunc
	base     *http.Request // what subscriptions are made of
	done     chan struct{} // closed when the subscription has stopped

	// ready is closed once the upstream answered the first subscription,
	// with refusal (an answer to relay) or failure (an error for Caddy to
	// answer) set before when it did not grant it.
	ready     chan struct{}
	readyOnce sync.Once
	refusal   *upstream.Answer
	failure   error

	mu       sync.Mutex
	owner    *Streams          // the live config's streams: events are rewritten with its IDs
	next     caddyhttp.Handler // the reverse_proxy new subscriptions go through; nil until a client of owner's config came
	newOwner chan struct{}     // closed and replaced when the owner changes
	greeting []byte            // the first server.connected, for every client
	clients  int
	idle     *time.Timer
	idleFrom time.Time // when its last client left
	closed   bool
}

// acquire returns the running hub of the request's scope, or starts one,
// counting the request as one more client. The hub goes on through the
// request's streams from now on: the newest config's, after a reload. With
// max_streams hubs already, a new scope's hub takes the place of the one
// that has been without clients longest; with none such, there is no hub
// and the refusal's reason instead.
func (g *registry) acquire(s *Streams, r *http.Request, next caddyhttp.Handler, scope eventScope) (*eventHub, string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	hub := g.hubs[scope.key]
	start := hub == nil
	if start {
		for len(g.hubs) >= s.config.MaxStreams {
			if !g.endIdlestLocked() {
				return nil, refusedStreams
			}
		}
		hub = newEventHub(g, scope, s, r)
		g.hubs[scope.key] = hub
		g.countHubsLocked()
	}
	hub.mu.Lock()
	hub.clients++
	if hub.idle != nil {
		hub.idle.Stop()
		hub.idle = nil
	}
	hub.setOwnerLocked(s, next)
	hub.mu.Unlock()
	if start {
		go hub.run()
	}
	return hub, ""
}

// endIdlestLocked ends the hub that has been without clients longest, to
// make room for another; false when every hub has clients.
func (g *registry) endIdlestLocked() bool {
	var idlest *eventHub
	var since time.Time
	for _, hub := range g.hubs {
		hub.mu.Lock()
		idle, from := hub.clients == 0, hub.idleFrom
		hub.mu.Unlock()
		if idle && (idlest == nil || from.Before(since)) {
			idlest, since = hub, from
		}
	}
	if idlest == nil {
		return false
	}
	g.removeLocked(idlest)
	return true
}

func newEventHub(g *registry, scope eventScope, s *Streams, r *http.Request) *eventHub {
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	base := r.Clone(ctx)
	base.URL.RawQuery = subscriptionQuery(r)
	base.RequestURI = base.URL.RequestURI()
	base.Header.Del("Last-Event-ID")
	base.Header.Del("Accept-Encoding") // events are read as plain text
	base.Body, base.ContentLength, base.GetBody = http.NoBody, 0, nil
	return &eventHub{
		scope:    scope,
		log:      eventlog.New(s.config.limits(g.budget)),
		registry: g,
		ctx:      ctx,
		cancel:   cancel,
		base:     base,
		done:     make(chan struct{}),
		ready:    make(chan struct{}),
		newOwner: make(chan struct{}),
	}
}

func (hub *eventHub) setOwnerLocked(s *Streams, next caddyhttp.Handler) {
	if hub.owner == s && hub.next != nil {
		return
	}
	hub.owner, hub.next = s, next
	close(hub.newOwner)
	hub.newOwner = make(chan struct{})
}

// current returns the streams and the reverse_proxy to subscribe through;
// next is nil, with a channel closed when that changes, while the config
// subscriptions went through was unloaded and no client of a newer config
// has come yet.
func (hub *eventHub) current() (*Streams, caddyhttp.Handler, <-chan struct{}) {
	hub.mu.Lock()
	defer hub.mu.Unlock()
	return hub.owner, hub.next, hub.newOwner
}

// release counts a client out. With no client left, the hub lingers, still
// subscribed and retaining, and ends once it has stayed without a client for
// the Linger of the config it runs through.
func (g *registry) release(hub *eventHub) {
	hub.mu.Lock()
	defer hub.mu.Unlock()
	hub.clients--
	if hub.clients > 0 || hub.closed {
		return
	}
	hub.idleFrom = time.Now()
	linger := defaultLinger
	if hub.owner != nil {
		linger = time.Duration(hub.owner.config.Linger)
	}
	hub.idle = time.AfterFunc(linger, func() { g.expire(hub) })
}

// expire ends a hub that is still without clients.
func (g *registry) expire(hub *eventHub) {
	g.mu.Lock()
	defer g.mu.Unlock()
	hub.mu.Lock()
	idle := hub.clients == 0
	hub.mu.Unlock()
	if idle {
		g.removeLocked(hub)
	}
}

// remove ends a hub and forgets it, so the scope's next client starts anew.
func (g *registry) remove(hub *eventHub) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.removeLocked(hub)
}

func (g *registry) removeLocked(hub *eventHub) {
	if g.hubs[hub.scope.key] == hub {
		delete(g.hubs, hub.scope.key)
		g.countHubsLocked()
	}
	hub.close()
}

// disown hands the hubs of a config being unloaded to the newest live
// config of the namespace: their events are rewritten with its IDs (the old
// config's storage may be closed). Their running subscriptions go on; a new
// one waits for a client of a newer config, which brings its reverse_proxy.
func (g *registry) disown(s *Streams) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.owners = slices.DeleteFunc(g.owners, func(x *Streams) bool { return x == s })
	var heir *Streams
	if len(g.owners) > 0 {
		heir = g.owners[len(g.owners)-1]
	}
	for _, hub := range g.hubs {
		hub.mu.Lock()
		if hub.owner == s {
			hub.owner, hub.next = heir, nil
		}
		hub.mu.Unlock()
	}
}

// rewriter returns the streams whose IDs rewrite the hub's events: its
// owner, or fallback (the streams the subscription went through) when the
// namespace has no live config left.
func (hub *eventHub) rewriter(fallback *Streams) *Streams {
	hub.mu.Lock()
	defer hub.mu.Unlock()
	if hub.owner != nil {
		return hub.owner
	}
	return fallback
}

// close ends the subscription and the log; clients' streams end and they
// may resume (and are told to resync) with a new hub.
func (hub *eventHub) close() {
	hub.mu.Lock()
	if hub.closed {
		hub.mu.Unlock()
		return
	}
	hub.closed = true
	if hub.idle != nil {
		hub.idle.Stop()
	}
	hub.mu.Unlock()
	hub.cancel()
	hub.log.Close()
	hub.markReady(nil, nil)
}

// markReady records how the first subscription went, once.
func (hub *eventHub) markReady(refusal *upstream.Answer, failure error) {
	hub.readyOnce.Do(func() {
		hub.refusal, hub.failure = refusal, failure
		close(hub.ready)
	})
}

// subscribers returns how many clients read the hub now.
func (hub *eventHub) subscribers() int {
	hub.mu.Lock()
	defer hub.mu.Unlock()
	return hub.clients
}

// requestFor returns a subscription request to one worker ("" for the
// policy's choice) with a route of its own.
func (hub *eventHub) requestFor(worker string) (*http.Request, *upstream.Route) {
	sub, rt := upstream.WithRoute(hub.base, worker, false)
	sub.URL = cloneURL(hub.base.URL)
	return sub, rt
}

func cloneURL(u *url.URL) *url.URL {
	c := *u
	return &c
}
