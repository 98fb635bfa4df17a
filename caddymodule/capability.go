package caddymodule

import (
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"sync"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
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

// capabilityProbe detects, once, what the upstream offers, from its OpenAPI
// document (GET /doc). A failed fetch is not remembered, so an upstream that
// is still starting is asked again.
type capabilityProbe struct {
	mu       sync.Mutex
	known    capability
	replay   bool // POST /sync/replay exists: children can get a chosen id
	refusal  error
	detected bool
}

// errNoIDRoute is the refusal for an upstream without an id-accepting create.
type errNoIDRoute struct{ reason string }

func (e errNoIDRoute) Error() string {
	return "mode direct needs an upstream that creates sessions under a chosen id (the native server, or opencode 1.17.9 or later), but " +
		e.reason + "; use mode mapping for this upstream"
}

func (p *capabilityProbe) detect(r *http.Request, next caddyhttp.Handler) (capability, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.detected {
		return p.known, p.replay, p.refusal
	}
	answer, err := askUpstream(r, next, http.MethodGet, "/doc", "", nil)
	if err != nil {
		return 0, false, err
	}
	p.known, p.replay, p.refusal = capabilityOf(answer)
	p.detected = true
	return p.known, p.replay, p.refusal
}

// capabilityOf reads an OpenAPI document. opencode 1.15 answers unknown
// routes with its web UI's HTML and a 200, so only a JSON document that
// declares "id" on a create body counts.
func capabilityOf(answer *upstreamAnswer) (capability, bool, error) {
	media, _, _ := mime.ParseMediaType(answer.header.Get("Content-Type"))
	if !answer.ok() || media != "application/json" {
		return 0, false, errNoIDRoute{fmt.Sprintf("its GET /doc answered %d %q, not an OpenAPI document", answer.status, media)}
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
	if err := json.Unmarshal(answer.body.Bytes(), &doc); err != nil {
		return 0, false, errNoIDRoute{"its GET /doc is not valid JSON"}
	}
	takesID := func(path string) bool {
		_, ok := doc.Paths[path]["post"].RequestBody.Content["application/json"].Schema.Properties["id"]
		return ok
	}
	_, replay := doc.Paths["/sync/replay"]["post"]
	switch {
	case takesID("/session"):
		return capNative, true, nil
	case takesID("/api/session"):
		return capOpencodeV2, replay, nil
	}
	return 0, false, errNoIDRoute{"its GET /doc declares no id on POST /session or POST /api/session"}
}
