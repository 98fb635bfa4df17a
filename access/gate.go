package access

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dgraph-io/ristretto/v2"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// Caller names the credentials a request was admitted with. Its ID is an
// HMAC of them under a secret every instance sharing the storage holds: the
// same credentials are the same caller on every instance and across
// restarts, and the ID says nothing of them to whoever reads a record.
type Caller struct {
	ID string
}

type callerKey struct{}

// CallerOf returns the caller a request was admitted as; false for a
// request that did not pass a Gate.
func CallerOf(r *http.Request) (Caller, bool) {
	c, ok := r.Context().Value(callerKey{}).(Caller)
	return c, ok
}

// WithCaller returns r admitted as c (for tests of the packages that bind
// records to callers).
func WithCaller(r *http.Request, c Caller) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), callerKey{}, c))
}

// Gate admits the callers the upstream would serve and refuses the others
// with the upstream's own answer.
type Gate struct {
	config    Config
	namespace string
	local     []byte // this process's: keys the verdicts, never leaves memory
	binding   *binding
	verdicts  *ristretto.Cache[string, *verdict]
	macs      sync.Pool // of HMACs under local, reset between uses
	flight    singleflight.Group
	logger    *zap.Logger
}

// verdict is what the gate remembers of one set of credentials.
type verdict struct {
	caller  Caller
	refusal *upstream.Answer // the upstream's answer when it refused; nil when it served
}

// verifyTimeout bounds one verification, which runs for every caller
// waiting on it, whichever of them gives up.
const verifyTimeout = 30 * time.Second

// New returns a gate. secret returns the secret that names callers in
// records, the same on every instance sharing the storage (see
// idmap.Store.Secret); it is asked once, when the first caller is admitted.
func New(config Config, namespace string, secret func(context.Context) ([]byte, error), logger *zap.Logger) (*Gate, error) {
	local := make([]byte, 32)
	if _, err := rand.Read(local); err != nil {
		return nil, err
	}
	verdicts, err := ristretto.NewCache(&ristretto.Config[string, *verdict]{
		NumCounters: int64(config.MaxCallers) * 10,
		MaxCost:     int64(config.MaxCallers),
		BufferItems: 64,
	})
	if err != nil {
		return nil, fmt.Errorf("auth: verdict cache: %w", err)
	}
	g := &Gate{config: config, namespace: namespace, local: local, binding: &binding{load: secret}, verdicts: verdicts, logger: logger}
	g.macs.New = func() any { return hmac.New(sha256.New, g.local) }
	return g, nil
}

// Close releases the verdict cache.
func (g *Gate) Close() { g.verdicts.Close() }

// Admit returns r admitted (CallerOf names its caller), or nil when it
// answered the client itself with the upstream's refusal. An error is the
// upstream's failure to answer (502, 503, 504) for Caddy to answer.
func (g *Gate) Admit(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) (*http.Request, error) {
	if g.config.Trust != "" {
		return g.admitTrusted(w, r)
	}
	creds := credentials(r.Header, tokens(r))
	// A refusal depends on the route family (opencode's /api routes refuse
	// with a JSON body, the others with none) and on the Origin (CORS
	// headers): each is verified, and remembered, on its own.
	uri := g.config.VerifyURI
	if strings.HasPrefix(r.URL.Path, "/api/") {
		uri = APIVerifyURI
	}
	key := g.verdictKey(uri, r.Header.Get("Origin"), creds)
	v, ok := g.verdicts.Get(key)
	if !ok {
		result, err, _ := g.flight.Do(key, func() (any, error) {
			if v, ok := g.verdicts.Get(key); ok {
				return v, nil
			}
			v, err := g.verify(r, next, uri, creds)
			if err != nil {
				return nil, err
			}
			ttl := time.Duration(g.config.VerifiedFor)
			if v.refusal != nil {
				ttl = time.Duration(g.config.RefusedFor)
			}
			g.verdicts.SetWithTTL(key, v, 1, ttl)
			g.verdicts.Wait()
			return v, nil
		})
		if err != nil {
			verdictMetrics.WithLabelValues(g.namespace, outcomeFailed).Inc()
			return nil, err
		}
		v = result.(*verdict)
	}
	if v.refusal != nil {
		verdictMetrics.WithLabelValues(g.namespace, outcomeRefused).Inc()
		relay(w, v.refusal)
		return nil, nil
	}
	return WithCaller(r, v.caller), nil
}

// admitTrusted admits a request on which the authentication handler before
// this one named a user.
func (g *Gate) admitTrusted(w http.ResponseWriter, r *http.Request) (*http.Request, error) {
	user := g.trustedUser(r)
	if user == "" {
		verdictMetrics.WithLabelValues(g.namespace, outcomeRefused).Inc()
		g.logger.Warn("refused a request no authentication handler admitted: auth trust needs one before session_ids on every route",
			zap.String("placeholder", g.config.Trust), zap.String("uri", r.RequestURI))
		refusal := upstream.NewAnswer(http.StatusUnauthorized, http.Header{"Www-Authenticate": {`Basic realm="Secure Area"`}})
		relay(w, refusal)
		return nil, nil
	}
	caller, err := g.caller(r.Context(), "user:"+user)
	if err != nil {
		return nil, err
	}
	return WithCaller(r, caller), nil
}

// verify asks the upstream whether it serves creds, with the caller's own
// headers and tokens and nothing of its request else.
func (g *Gate) verify(r *http.Request, next caddyhttp.Handler, uri, creds string) (*verdict, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), verifyTimeout)
	defer cancel()
	sub := r.WithContext(ctx)
	sub.Header = r.Header.Clone()
	for _, name := range []string{"Upgrade", "Connection", "Sec-Websocket-Key", "Sec-Websocket-Version", "Sec-Websocket-Extensions",
		"Sec-Websocket-Protocol", "Last-Event-Id", "Idempotency-Key", "Expect", "If-None-Match", "If-Modified-Since", "Range"} {
		sub.Header.Del(name)
	}
	sub.Header.Set("Accept", "application/json")
	answer, _, err := upstream.AskWorker(sub, next, "", http.MethodGet, uri, "", nil)
	if err != nil {
		g.logger.Warn("could not verify a caller with the upstream", zap.String("uri", uri), zap.Error(err))
		return nil, err
	}
	switch {
	case answer.Status == http.StatusUnauthorized || answer.Status == http.StatusForbidden:
		verdictMetrics.WithLabelValues(g.namespace, outcomeVerifiedRefused).Inc()
		return &verdict{refusal: answer}, nil
	case answer.Status >= 500: // counted as failed by Admit, as every error is
		return nil, caddyhttp.Error(answer.Status, fmt.Errorf("verifying a caller: GET %s answered %d", uri, answer.Status))
	}
	caller, err := g.caller(ctx, creds)
	if err != nil {
		return nil, err
	}
	verdictMetrics.WithLabelValues(g.namespace, outcomeVerifiedServed).Inc()
	return &verdict{caller: caller}, nil
}

func (g *Gate) caller(ctx context.Context, creds string) (Caller, error) {
	secret, err := g.binding.get(ctx)
	if err != nil {
		g.logger.Error("could not read the namespace secret that names callers", zap.Error(err))
		return Caller{}, caddyhttp.Error(http.StatusServiceUnavailable, errors.New("the storage could not be read"))
	}
	return Caller{ID: hex.EncodeToString(g.mac(secret, creds)[:16])}, nil
}

// verdictKey is the cache key of a verdict: an HMAC under this process's
// secret of what the verdict depends on.
func (g *Gate) verdictKey(uri, origin, creds string) string {
	m := g.macs.Get().(hash.Hash)
	defer g.macs.Put(m)
	m.Reset()
	for _, part := range []string{uri, origin, creds} {
		m.Write([]byte(part))
		m.Write([]byte{0})
	}
	var sum [sha256.Size]byte
	return string(m.Sum(sum[:0]))
}

func (g *Gate) mac(secret []byte, creds string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(creds))
	return m.Sum(nil)
}

// relay writes the upstream's refusal: its status, headers and body.
func relay(w http.ResponseWriter, answer *upstream.Answer) {
	header := w.Header()
	for name, values := range answer.Header() {
		if name == "Content-Length" || name == "Date" || name == "Transfer-Encoding" {
			continue
		}
		header[name] = values
	}
	body := answer.Body.Bytes()
	header.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(answer.Status)
	_, _ = w.Write(body)
}

// tokens returns the auth_token values of r's query, parsing it only when
// it may hold one.
func tokens(r *http.Request) map[string][]string {
	if !strings.Contains(r.URL.RawQuery, TokenParam) {
		return nil
	}
	return r.URL.Query()
}

// binding is the namespace's secret, read from storage once it is first
// needed (a storage that is down at startup does not keep Caddy from
// starting) and kept once read.
type binding struct {
	load   func(context.Context) ([]byte, error)
	mu     sync.Mutex
	secret atomic.Pointer[[]byte]
}

func (b *binding) get(ctx context.Context) ([]byte, error) {
	if s := b.secret.Load(); s != nil {
		return *s, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if s := b.secret.Load(); s != nil {
		return *s, nil
	}
	secret, err := b.load(ctx)
	if err != nil {
		return nil, err
	}
	b.secret.Store(&secret)
	return secret, nil
}

// Name returns the caller r's credentials name, without asking the upstream
// whether it serves them (trust mode: the user the placeholder holds).
func (g *Gate) Name(r *http.Request) (Caller, error) {
	if g.config.Trust != "" {
		return g.caller(r.Context(), "user:"+g.trustedUser(r))
	}
	return g.caller(r.Context(), credentials(r.Header, tokens(r)))
}

// trustedUser is the user the trusted placeholder holds for r; "" for none.
func (g *Gate) trustedUser(r *http.Request) string {
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return ""
	}
	return repl.ReplaceAll(g.config.Trust, "")
}
