package caddymodule

import (
	"fmt"
	"net/http"

	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/idmap"
)

// relay answers the client with a response the handler fetched itself, its
// ids rewritten like any proxied response.
func (h *Handler) relay(w http.ResponseWriter, r *http.Request, answer *upstreamAnswer, replayed bool) {
	body := answer.body.Bytes()
	lookup := &lookupFunc{resolve: h.index.ClientOf, ctx: r.Context()}
	if h.Mode == ModeMapping {
		body, _ = idmap.Replace(body, lookup.lookup)
	}
	if lookup.err != nil {
		h.logger.Error("mapping lookup failed while rewriting a response", zap.Error(lookup.err))
	}
	header := w.Header()
	for _, name := range []string{"Content-Type", "Vary", "Cache-Control"} {
		if v := answer.header.Values(name); len(v) > 0 {
			header[name] = v
		}
	}
	if replayed {
		header.Set(ReplayHeader, "true")
	}
	header.Set("Content-Length", fmt.Sprint(len(body)))
	w.WriteHeader(answer.status)
	_, _ = w.Write(body)
}
