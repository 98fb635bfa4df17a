package idempotency

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/apierror"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// Headers of exactly-once prompts.
const (
	// KeyHeader carries the client's key for one prompt
	// (draft-ietf-httpapi-idempotency-key-header).
	KeyHeader = "Idempotency-Key"
)

// Config configures the Idempotency-Key header on the prompt routes:
// POST /session/{id}/prompt_async, /message, /command, /shell and
// POST /api/session/{id}/prompt. The first request with a key is sent
// upstream once; every later request with the same key on the same session
// gets the first one's answer back, with `Idempotent-Replayed: true`, and the
// upstream sees nothing. Requests without the header are untouched. See
// docs/idempotency.md.
type Config struct {
	// Off turns the handling off: keyed prompts pass through like any other
	// request, and a retry prompts again. Default: false (on).
	Off bool `json:"off,omitempty"`

	// TTL is how long the answer of a keyed prompt is kept for replay. A
	// retry after that is a new prompt. Records also go when their session
	// is deleted through the handler. Expired records are swept from storage
	// hourly. Default: 24h, like Stripe's.
	TTL caddy.Duration `json:"ttl,omitempty"`

	// Wait bounds how long a request waits while another request with the
	// same key is in progress (on this instance or on another sharing the
	// storage). When the first finishes in time, the waiting one gets its
	// answer as a replay; otherwise it is answered 409 with Retry-After, as
	// the IETF draft says. Synchronous prompts (/message) can run for
	// minutes: a client retrying those meets 409 until the first is done.
	// Default: 10s.
	Wait caddy.Duration `json:"wait,omitempty"`

	// Confirm, when positive, makes a keyed prompt_async answer only once the
	// user message can be read upstream (GET /session/{id}/message/{messageID}),
	// polling for up to this long. It guards against upstream versions whose
	// 204 can precede persistence or be sent for a prompt that is then lost:
	// a prompt not visible in time is answered 504 and left for the retry,
	// which asks the upstream again before sending. It costs at least one
	// upstream round trip per keyed prompt_async. Default: 0 (off).
	Confirm caddy.Duration `json:"confirm,omitempty"`
}

// Defaults of Config.
const (
	defaultIdempotencyTTL  = 24 * time.Hour
	defaultIdempotencyWait = 10 * time.Second
	// Settle is how long after a pending prompt was sent a retry
	// trusts an upstream that does not show its message: a prompt can be in
	// the upstream's hands for a moment before it is persisted. Within it,
	// a retry is answered 409 rather than sending a second time.
	Settle = 3 * time.Second
	// maxRecordedAnswer bounds the answer body a record keeps; a larger
	// answer of a synchronous route is read back from the upstream on replay.
	maxRecordedAnswer = 1 << 20
)

// Provision checks the durations and applies the defaults.
func (c *Config) Provision() error {
	if c.TTL == 0 {
		c.TTL = caddy.Duration(defaultIdempotencyTTL)
	}
	if c.Wait == 0 {
		c.Wait = caddy.Duration(defaultIdempotencyWait)
	}
	if c.TTL < 0 || c.Wait < 0 || c.Confirm < 0 {
		return fmt.Errorf("idempotency durations must not be negative")
	}
	return nil
}

// IDs is what keyed prompts need of the handler's ids.
type IDs interface {
	// UpstreamID is the upstream's id of a client's session id.
	UpstreamID(ctx context.Context, id string) (string, error)
	// ToUpstream rewrites the client's ids in a body or a query into the
	// upstream's.
	ToUpstream(ctx context.Context, b []byte) ([]byte, error)
	// CheckIDs refuses, with an upstream.TooManyIDsError, a query and body
	// naming more distinct ids than one request may have looked up.
	CheckIDs(parts ...[]byte) error
	// Relay answers the client with an answer of the upstream's, its ids
	// rewritten into the client's; replayed marks it Idempotent-Replayed.
	Relay(w http.ResponseWriter, r *http.Request, answer *upstream.Answer, replayed bool)
}

// Prompts is one handler's exactly-once prompts: what it needs of the
// handler (its namespace's index, its IDs, the body limit) and its share of
// the sweeper of expired records.
type Prompts struct {
	config    *Config
	index     *idmap.Index
	ids       IDs
	maxBody   int64
	namespace string
	logger    *zap.Logger

	sweeperKey string
}

// New provisions a handler's keyed prompts. sweeperKey names the storage
// and namespace of index, so that every config on them shares one sweeper.
func New(config *Config, namespace string, index *idmap.Index, ids IDs, maxBody int64, sweeperKey string, logger *zap.Logger) (*Prompts, error) {
	if err := config.Provision(); err != nil {
		return nil, err
	}
	p := &Prompts{config: config, index: index, ids: ids, maxBody: maxBody, namespace: namespace, logger: logger}
	if afterPrompt != nil {
		logger.Error("test-only fault hook enabled: this process will kill itself after forwarding a keyed prompt", zap.String(FaultEnv, faultCrashAfterPrompt))
	}
	if !config.Off {
		p.startSweeper(sweeperKey)
	}
	return p, nil
}

// Close releases this handler's share of the sweeper.
func (p *Prompts) Close() { p.stopSweeper() }

// Route is a route the Idempotency-Key applies to.
type Route struct {
	name    string // the path's last segment
	idField string // the body field naming the user message id
	async   bool   // answered 204, the reply follows on /event
	// upstreamDedups: the upstream itself treats a repeated id as the same
	// input (opencode's v2 prompt admits an id once), so a retry of an
	// interrupted attempt may send the same id without asking first.
	upstreamDedups bool
}

var (
	routePromptAsync = Route{name: "prompt_async", idField: "messageID", async: true}
	routeMessage     = Route{name: "message", idField: "messageID"}
	routeCommand     = Route{name: "command", idField: "messageID"}
	routeShell       = Route{name: "shell", idField: "messageID"}
	routeV2Prompt    = Route{name: "prompt", idField: "id", upstreamDedups: true}
)

// Keyed returns the session id and route of a request the Idempotency-Key
// applies to: a POST to one of the prompt routes that carries the header.
func (p *Prompts) Keyed(r *http.Request) (string, Route, bool) {
	if r.Method != http.MethodPost || p.config.Off || len(r.Header.Values(KeyHeader)) == 0 {
		return "", Route{}, false
	}
	if rest, ok := strings.CutPrefix(r.URL.Path, "/api/session/"); ok {
		if id, sub, _ := strings.Cut(rest, "/"); sub == "prompt" && id != "" {
			return id, routeV2Prompt, true
		}
		return "", Route{}, false
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/session/")
	if !ok {
		return "", Route{}, false
	}
	id, sub, _ := strings.Cut(rest, "/")
	for _, route := range []Route{routePromptAsync, routeMessage, routeCommand, routeShell} {
		if sub == route.name && id != "" {
			return id, route, true
		}
	}
	return "", Route{}, false
}

// keyedRequest is one keyed prompt, parsed.
type keyedRequest struct {
	sessionID string // the client's
	caller    string // access.Caller's ID: whose record it is
	key       string
	route     Route
	body      []byte
	print     idmap.Fingerprint
	messageID string // the client's own, if its body names one
}

// Serve answers a keyed prompt exactly once per (session, key), under
// the key's lock: the first request is sent upstream under a message id
// recorded before it goes, and every later one is answered from the record.
func (p *Prompts) Serve(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, sessionID string, route Route) error {
	req, ok := p.parsePrompt(w, r, sessionID, route)
	if !ok {
		return nil
	}
	r.Header.Del(KeyHeader) // the upstream has no use for it
	log := p.logger.With(zap.String("session_id", sessionID), zap.String("idempotency_key", req.key))
	lockCtx, cancel := context.WithTimeout(r.Context(), time.Duration(p.config.Wait))
	unlock, err := p.index.Lock(lockCtx, idmap.PromptLockName(sessionID, req.caller, req.key))
	cancel()
	switch {
	case err != nil && r.Context().Err() != nil:
		return nil // the client is gone
	case errors.Is(err, context.DeadlineExceeded):
		p.count(outcomeInFlight)
		inProgress(w, req, "a request with this Idempotency-Key is still in progress; retry later")
		return nil
	case err != nil:
		log.Error("could not lock idempotency key", zap.Error(err))
		apierror.Storage(w, "could not lock the Idempotency-Key")
		return nil
	}
	defer unlock()
	// From here the prompt and its record outlive a client that gives up:
	// a client timeout must not leave the outcome unrecorded.
	ctx := context.WithoutCancel(r.Context())
	r = r.WithContext(ctx)

	rec, found, err := p.loadPrompt(ctx, req)
	if err != nil {
		p.logger.Error("the Idempotency-Key record could not be read", zap.Error(err))
		apierror.Storage(w, "the Idempotency-Key record could not be read")
		return nil
	}
	if found {
		if differ := rec.Fingerprint.Diff(req.print); len(differ) > 0 {
			p.count(outcomeMismatch)
			keyMismatch(w, req, differ)
			return nil
		}
		if rec.Done {
			return p.replayPrompt(w, r, next, rec)
		}
		return p.resumePrompt(w, r, next, req, rec)
	}
	return p.firstPrompt(w, r, next, req)
}

// loadPrompt reads the record of a key, treating one that expired or belongs
// to an earlier session of the same id as absent (and removing it).
func (p *Prompts) loadPrompt(ctx context.Context, req *keyedRequest) (idmap.Prompt, bool, error) {
	rec, err := p.index.Store.LoadPrompt(ctx, req.sessionID, req.caller, req.key)
	if errors.Is(err, idmap.ErrNotFound) {
		return rec, false, nil
	}
	if err != nil {
		return rec, false, err
	}
	created, err := p.sessionCreated(ctx, req.sessionID)
	if err != nil {
		return rec, false, err
	}
	if rec.Expired(time.Now()) || !rec.SessionCreated.Equal(created) {
		if err := p.index.Store.RemovePrompt(ctx, req.sessionID, req.caller, req.key); err != nil {
			return rec, false, err
		}
		return idmap.Prompt{}, false, nil
	}
	return rec, true, nil
}

// sessionCreated is when the handler recorded the session (its mapping, or
// its direct-mode record); zero for a session it did not create.
func (p *Prompts) sessionCreated(ctx context.Context, sessionID string) (time.Time, error) {
	m, err := p.index.Store.Load(ctx, sessionID)
	if errors.Is(err, idmap.ErrNotFound) {
		return time.Time{}, nil
	}
	return m.Created, err
}

// firstPrompt records a new key's prompt as pending under a fresh message
// id, then sends it.
func (p *Prompts) firstPrompt(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *keyedRequest) error {
	ctx := r.Context()
	created, err := p.sessionCreated(ctx, req.sessionID)
	if err != nil {
		p.logger.Error("session id mapping could not be read", zap.Error(err))
		apierror.Storage(w, "session id mapping could not be read")
		return nil
	}
	now := time.Now().UTC()
	rec := idmap.Prompt{
		SessionID: req.sessionID, Caller: req.caller, Key: req.key, Fingerprint: req.print, SessionCreated: created,
		MessageID: req.messageID, Started: now, Expires: now.Add(time.Duration(p.config.TTL)),
	}
	if rec.MessageID == "" {
		rec.MessageID = idmap.NewMessageID(now, req.sessionID, req.key)
	} else if !req.route.upstreamDedups {
		// The client chose the id: opencode appends a second prompt's parts
		// to an existing message of that id, so never send one that exists.
		exists, answered := p.messageExists(w, r, next, req, rec.MessageID)
		if answered {
			return nil
		}
		if exists {
			apierror.Conflict(w, req.sessionID, fmt.Sprintf("message %s already exists in session %s; a prompt with its id would change it", rec.MessageID, req.sessionID), nil)
			return nil
		}
	}
	if err := p.index.Store.SavePrompt(ctx, rec); err != nil {
		p.logger.Error("the Idempotency-Key record could not be written", zap.Error(err))
		apierror.Storage(w, "the Idempotency-Key record could not be written")
		return nil
	}
	return p.sendPrompt(w, r, next, req, rec, outcomeSent)
}
