package caddymodule

import (
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"sync"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// capability is how a direct-mode upstream creates a session under a chosen id.
type capability int

const (
	// capNative: v1 POST /session honours "id" (the reference native server).
	capNative capability = iota + 1
	// capOpencodeV2: v2 POST /api/session honours "id" and POST /sync/replay
	// exists for children (stock opencode from 1.17.9).
	capOpencodeV2
)

func (c capability) String() string {
	switch c {
	case capNative:
		return "v1 POST /session with id"
	case capOpencodeV2:
		return "v2 POST /api/session with id"
	}
	return "none"
}

// capabilityProbe detects, once, what one upstream offers, from its OpenAPI
// document (GET /doc). A failed fetch is not remembered, so an upstream that
// is still starting is asked again.
type capabilityProbe struct {
	mu       sync.Mutex
	features features
	detected bool
}

// features is what the probe learns of an upstream.
type features struct {
	idRoute  capability // how it creates under a chosen id, if it can
	replay   bool       // POST /sync/replay exists: children can get a chosen id
	forkID   bool       // POST /session/{sessionID}/fork takes an id
	metadata bool       // POST /session keeps metadata, so sessions can be tagged
	refusal  error      // why direct mode cannot work with it
}

// errNoIDRoute is the refusal for an upstream without an id-accepting create.
type errNoIDRoute struct{ reason string }

func (e errNoIDRoute) Error() string {
	return "mode direct needs an upstream that creates sessions under a chosen id (the native server, or opencode 1.17.9 or later), but " +
		e.reason + "; use mode mapping for this upstream"
}

// features returns what the worker of r's route offers. Workers are probed
// one by one: they may run different versions.
func (h *Handler) features(r *http.Request, next caddyhttp.Handler) (features, error) {
	worker := ""
	if rt := upstream.RouteOf(r); rt != nil {
		worker = rt.Worker
	}
	probe, _ := h.probes.LoadOrStore(worker, new(capabilityProbe))
	return probe.(*capabilityProbe).detect(r, next)
}

func (p *capabilityProbe) detect(r *http.Request, next caddyhttp.Handler) (features, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.detected {
		return p.features, nil
	}
	answer, err := upstream.Ask(r, next, http.MethodGet, "/doc", "", nil)
	if err != nil {
		return features{}, err
	}
	p.features = featuresOf(answer)
	p.detected = true
	return p.features, nil
}

// featuresOf reads an OpenAPI document. opencode 1.15 answers unknown
// routes with its web UI's HTML and a 200, so only a JSON document that
// declares "id" on a create body counts.
func featuresOf(answer *upstream.Answer) features {
	media, _, _ := mime.ParseMediaType(answer.Header().Get("Content-Type"))
	if !answer.OK() || media != "application/json" {
		return features{refusal: errNoIDRoute{fmt.Sprintf("its GET /doc answered %d %q, not an OpenAPI document", answer.Status, media)}}
	}
	var doc struct {
		Paths map[string]map[string]struct {
			RequestBody struct {
				Content map[string]struct {
					Schema struct {
						Properties map[string]json.RawMessage `json:"properties"`
					} `json:"schema"`
				} `json:"content"`
			} `json:"requestBody"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(answer.Body.Bytes(), &doc); err != nil {
		return features{refusal: errNoIDRoute{"its GET /doc is not valid JSON"}}
	}
	takes := func(path, field string) bool {
		_, ok := doc.Paths[path]["post"].RequestBody.Content["application/json"].Schema.Properties[field]
		return ok
	}
	f := features{metadata: takes("/session", "metadata"), forkID: takes("/session/{sessionID}/fork", "id")}
	_, f.replay = doc.Paths["/sync/replay"]["post"]
	switch {
	case takes("/session", "id"):
		f.idRoute, f.replay = capNative, true
	case takes("/api/session", "id"):
		f.idRoute = capOpencodeV2
	default:
		f.refusal = errNoIDRoute{"its GET /doc declares no id on POST /session or POST /api/session"}
	}
	return f
}
