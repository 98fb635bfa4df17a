package caddymodule

import (
	"bytes"
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// fleetReads are the routes that name no session but read every session:
// with several workers each is answered from all of them, as if one
// opencode held every session.
var fleetReads = map[string]func(h *Handler, w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error{
	"/session":        (*Handler).serveSessionList,
	"/session/status": (*Handler).serveStatusMerge,
	"/permission":     (*Handler).serveListConcat,
	"/question":       (*Handler).serveListConcat,
	"/event":          (*Handler).serveMergedEvents,
	"/global/event":   (*Handler).serveMergedEvents,
}

// MissingWorkersHeader lists, on a fleet-wide read, the workers whose part
// is missing because they were unavailable or failed.
const MissingWorkersHeader = "Session-Ids-Missing-Workers"

// gather asks every worker and returns the bodies of those that answered
// 2xx. When a worker answered with a client error (a bad query, say), that
// answer is relayed instead, as a lone opencode would have given it, and ok
// is false. Workers that could not answer are named in MissingWorkersHeader
// and logged: the read is partial, never silently.
func (h *Handler) gather(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) (bodies [][]byte, header http.Header, ok bool) {
	answers := askEach(r, next, h.fleet.workers(), http.MethodGet, r.URL.Path, r.URL.RawQuery)
	var missing []string
	for _, a := range answers {
		switch {
		case a.err != nil || a.answer.status >= 500:
			missing = append(missing, a.worker)
		case !a.answer.ok():
			h.relay(w, r, a.answer, false)
			return nil, nil, false
		default:
			bodies = append(bodies, a.answer.body.Bytes())
			header = a.answer.header
		}
	}
	if len(missing) > 0 {
		h.logger.Warn("fleet-wide read is missing unavailable workers", zap.String("uri", r.RequestURI), zap.Strings("workers", missing))
		w.Header().Set(MissingWorkersHeader, strings.Join(missing, ", "))
	}
	if header == nil {
		upstreamFailed(w, http.StatusServiceUnavailable, "no worker could answer: "+strings.Join(missing, ", "))
		return nil, nil, false
	}
	return bodies, header, true
}

// answerMerged relays a body merged from the workers' answers.
func (h *Handler) answerMerged(w http.ResponseWriter, r *http.Request, header http.Header, body []byte) error {
	answer := &upstreamAnswer{status: http.StatusOK, header: header}
	answer.body.Write(body)
	h.relay(w, r, answer, false)
	return nil
}

// listedForOrder is what ordering a merged session list reads of a session.
type listedForOrder struct {
	ID   string `json:"id"`
	Time struct {
		Updated float64 `json:"updated"`
	} `json:"time"`
}

// defaultListLimit is opencode's own limit on GET /session without one.
const defaultListLimit = 100

// serveSessionList answers GET /session with the sessions of every worker,
// ordered as opencode orders them (most recently updated first) and cut to
// the request's limit (opencode's default, 100, without one): each worker
// returns up to the limit, so the merged first `limit` are exact.
func (h *Handler) serveSessionList(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	bodies, header, ok := h.gather(w, r, next)
	if !ok {
		return nil
	}
	type listed struct {
		order listedForOrder
		raw   json.RawMessage
	}
	var all []listed
	for _, body := range bodies {
		var items []json.RawMessage
		if err := json.Unmarshal(body, &items); err != nil {
			upstreamFailed(w, http.StatusBadGateway, "a worker's session list is not a JSON array: "+err.Error())
			return nil
		}
		for _, raw := range items {
			item := listed{raw: raw}
			_ = json.Unmarshal(raw, &item.order)
			all = append(all, item)
		}
	}
	sort.SliceStable(all, func(i, j int) bool {
		a, b := all[i].order, all[j].order
		if a.Time.Updated != b.Time.Updated {
			return a.Time.Updated > b.Time.Updated
		}
		return a.ID > b.ID
	})
	limit := defaultListLimit
	if v, err := strconv.ParseFloat(r.URL.Query().Get("limit"), 64); err == nil && v >= 0 {
		limit = int(v)
	}
	if len(all) > limit {
		all = all[:limit]
	}
	out := make([]json.RawMessage, len(all))
	for i, item := range all {
		out[i] = item.raw
	}
	body, _ := json.Marshal(out)
	return h.answerMerged(w, r, header, body)
}

// serveStatusMerge answers GET /session/status with the union of every
// worker's map of session id to status.
func (h *Handler) serveStatusMerge(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	bodies, header, ok := h.gather(w, r, next)
	if !ok {
		return nil
	}
	merged := map[string]json.RawMessage{}
	for _, body := range bodies {
		var part map[string]json.RawMessage
		if err := json.Unmarshal(body, &part); err != nil {
			upstreamFailed(w, http.StatusBadGateway, "a worker's session status is not a JSON object: "+err.Error())
			return nil
		}
		for id, status := range part {
			merged[id] = status
		}
	}
	body, _ := json.Marshal(merged)
	return h.answerMerged(w, r, header, body)
}

// serveListConcat answers the pending permission and question requests of
// every worker as one list, worker by worker.
func (h *Handler) serveListConcat(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	bodies, header, ok := h.gather(w, r, next)
	if !ok {
		return nil
	}
	var merged bytes.Buffer
	merged.WriteByte('[')
	n := 0
	for _, body := range bodies {
		var items []json.RawMessage
		if err := json.Unmarshal(body, &items); err != nil {
			upstreamFailed(w, http.StatusBadGateway, "a worker's list is not a JSON array: "+err.Error())
			return nil
		}
		for _, item := range items {
			if n > 0 {
				merged.WriteByte(',')
			}
			merged.Write(item)
			n++
		}
	}
	merged.WriteByte(']')
	return h.answerMerged(w, r, header, merged.Bytes())
}
