package fleet

import (
	"bytes"
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/internal/apierror"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// reads are the routes that name no session but read every session: with
// several workers each is answered from all of them, as if one opencode held
// every session. Each merges the bodies of the workers that answered 2xx.
// A merge takes each worker's answer body, with the worker that gave it.
type merge func(f *Fleet, w http.ResponseWriter, r *http.Request, bodies [][]byte, workers []string) ([]byte, bool)

var reads = map[string]merge{
	"/session":        mergeSessionLists,
	"/session/status": mergeStatus,
	"/permission":     concatLists,
	"/question":       concatLists,
}

// IsRead reports whether a GET of path is a fleet-wide read.
func IsRead(path string) bool { return reads[path] != nil }

// MissingWorkersHeader lists, on a fleet-wide read, the workers whose part
// is missing because they were unavailable or failed.
const MissingWorkersHeader = "Session-Ids-Missing-Workers"

// Read answers a fleet-wide read (IsRead) from every worker. It returns the
// answer to relay to the client, ids as the workers wrote them: the merged
// one, or a worker's client error (a bad query, say) as a lone opencode
// would have given it. It answers the client itself, returning false, when
// no worker could answer or an answer could not be merged. Workers that
// could not answer are named in MissingWorkersHeader and logged: the read
// is partial, never silently.
func (f *Fleet) Read(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) (*upstream.Answer, bool) {
	var bodies [][]byte
	var answered []string
	var header http.Header
	var missing []string
	for _, a := range upstream.AskEach(r, next, f.Workers(), http.MethodGet, r.URL.Path, r.URL.RawQuery) {
		switch {
		case a.Err != nil || a.Answer.Status >= 500:
			missing = append(missing, a.Worker)
		case !a.Answer.OK():
			return a.Answer, true
		default:
			bodies = append(bodies, a.Answer.Body.Bytes())
			answered = append(answered, a.Worker)
			header = a.Answer.Header()
		}
	}
	if len(missing) > 0 {
		f.logger.Warn("fleet-wide read is missing unavailable workers", zap.String("uri", r.RequestURI), zap.Strings("workers", missing))
		w.Header().Set(MissingWorkersHeader, strings.Join(missing, ", "))
	}
	if header == nil {
		apierror.Upstream(w, http.StatusServiceUnavailable, "no worker could answer: "+strings.Join(missing, ", "))
		return nil, false
	}
	body, ok := reads[r.URL.Path](f, w, r, bodies, answered)
	if !ok {
		return nil, false
	}
	merged := upstream.NewAnswer(http.StatusOK, header)
	merged.Body.Write(body)
	return merged, true
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

// mergeSessionLists answers GET /session with the sessions of every worker,
// ordered as opencode orders them (most recently updated first) and cut to
// the request's limit (opencode's default, 100, without one): each worker
// returns up to the limit, so the merged first `limit` are exact.
//
// A session two workers list (a move's copy not deleted yet, a re-homed
// session's stale copy on a worker that came back) is listed once: the
// copy of the worker the index has it on.
func mergeSessionLists(f *Fleet, w http.ResponseWriter, r *http.Request, bodies [][]byte, workers []string) ([]byte, bool) {
	type listed struct {
		order  listedForOrder
		raw    json.RawMessage
		worker string
	}
	var all []listed
	seen := map[string]int{} // id → how many workers list it
	for i, body := range bodies {
		var items []json.RawMessage
		if err := json.Unmarshal(body, &items); err != nil {
			apierror.Upstream(w, http.StatusBadGateway, "a worker's session list is not a JSON array: "+err.Error())
			return nil, false
		}
		for _, raw := range items {
			item := listed{raw: raw, worker: workers[i]}
			_ = json.Unmarshal(raw, &item.order)
			all = append(all, item)
			seen[item.order.ID]++
		}
	}
	if len(seen) < len(all) {
		// The copy to keep of each session listed more than once: the
		// recorded worker's if it lists it, else the first.
		keep := map[string]string{}
		for _, item := range all {
			id := item.order.ID
			if seen[id] < 2 {
				continue
			}
			if _, chosen := keep[id]; !chosen {
				keep[id] = item.worker
			}
			if f.index.RecordedWorker(r.Context(), id) == item.worker {
				keep[id] = item.worker
			}
		}
		kept := all[:0]
		done := map[string]bool{}
		for _, item := range all {
			id := item.order.ID
			if worker, duplicated := keep[id]; duplicated {
				if worker != item.worker || done[id] {
					continue
				}
				done[id] = true
			}
			kept = append(kept, item)
		}
		all = kept
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
	return body, true
}

// mergeStatus answers GET /session/status with the union of every worker's
// map of session id to status.
func mergeStatus(_ *Fleet, w http.ResponseWriter, _ *http.Request, bodies [][]byte, _ []string) ([]byte, bool) {
	merged := map[string]json.RawMessage{}
	for _, body := range bodies {
		var part map[string]json.RawMessage
		if err := json.Unmarshal(body, &part); err != nil {
			apierror.Upstream(w, http.StatusBadGateway, "a worker's session status is not a JSON object: "+err.Error())
			return nil, false
		}
		for id, status := range part {
			merged[id] = status
		}
	}
	body, _ := json.Marshal(merged)
	return body, true
}

// concatLists answers the pending permission and question requests of
// every worker as one list, worker by worker.
func concatLists(_ *Fleet, w http.ResponseWriter, _ *http.Request, bodies [][]byte, _ []string) ([]byte, bool) {
	var merged bytes.Buffer
	merged.WriteByte('[')
	n := 0
	for _, body := range bodies {
		var items []json.RawMessage
		if err := json.Unmarshal(body, &items); err != nil {
			apierror.Upstream(w, http.StatusBadGateway, "a worker's list is not a JSON array: "+err.Error())
			return nil, false
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
	return merged.Bytes(), true
}
