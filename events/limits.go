package events

import (
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/sessionid/caddy-sessionid/internal/apierror"
)

// What the streams of a namespace may hold at once. Every client stream
// holds a place (max_clients) and a place of its client IP
// (max_clients_per_ip); every scope with a hub holds one of max_streams,
// and the retained events of all hubs share one budget (retain_total,
// eventlog.Budget). A client beyond a bound is answered 429 in opencode's
// error shape, with Retry-After, before anything is asked of the upstream:
// the one answer an authorized caller gets that the upstream would not have
// given (docs/events.md, "Limits").

// retryAfter is what a refused client is told to wait: places free up as
// other clients leave, or as streams without clients end.
const retryAfter = 5 * time.Second

// Why a client stream was refused: the bound it met, as the refusals
// metric names it.
const (
	refusedStreams      = "max_streams"
	refusedClients      = "max_clients"
	refusedClientsPerIP = "max_clients_per_ip"
)

// refusalMessages say why, in words.
var refusalMessages = map[string]string{
	refusedStreams:      "too many event streams at once: every stream this server holds has clients; retry later",
	refusedClients:      "too many event stream clients at once; retry later",
	refusedClientsPerIP: "too many event stream clients at once from this address; retry later",
}

// refuse answers a client stream refused for reason: 429 with Retry-After,
// in opencode's error shape.
func (s *Streams) refuse(w http.ResponseWriter, reason string) {
	eventMetrics.refusals.WithLabelValues(s.namespace, reason).Inc()
	w.Header().Set("Retry-After", strconv.Itoa(int(retryAfter/time.Second)))
	apierror.Write(w, http.StatusTooManyRequests, "TooManyStreamsError", refusalMessages[reason], nil)
}

// admission counts the client streams of a namespace, in all and by client
// address.
type admission struct {
	namespace string

	mu    sync.Mutex
	total int
	perIP map[string]int
}

func newAdmission(namespace string) *admission {
	return &admission{namespace: namespace, perIP: map[string]int{}}
}

// admit takes a place for a client stream of r within the bounds of
// config; it returns the function that gives it back, or why there was
// none.
func (a *admission) admit(r *http.Request, config *Config) (release func(), refused string) {
	ip := clientAddress(r)
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.total >= config.MaxClients:
		return nil, refusedClients
	case a.perIP[ip] >= config.MaxClientsPerIP:
		return nil, refusedClientsPerIP
	}
	a.total++
	a.perIP[ip]++
	eventMetrics.clients.WithLabelValues(a.namespace).Set(float64(a.total))
	var once sync.Once
	return func() { once.Do(func() { a.leave(ip) }) }, ""
}

func (a *admission) leave(ip string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.total--
	if a.perIP[ip]--; a.perIP[ip] <= 0 {
		delete(a.perIP, ip)
	}
	eventMetrics.clients.WithLabelValues(a.namespace).Set(float64(a.total))
}

// clientAddress is what max_clients_per_ip counts by: Caddy's client IP
// (the client_ip variable, which honours the server's trusted_proxies), or
// the connection's remote address without one. An IPv6 address counts by
// its /64, the least a single host is usually given.
func clientAddress(r *http.Request) string {
	ip, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	if ip == "" {
		ip = r.RemoteAddr
		if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
			ip = host
		}
	}
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	addr = addr.Unmap()
	if addr.Is6() {
		if prefix, err := addr.Prefix(64); err == nil {
			return prefix.String()
		}
	}
	return addr.String()
}
