// Package nativeserver is the reference native server: the OpenCode v1
// session API as it should behave with client-chosen ids. POST /session
// honours "id" with the same grammar and duplicate policy as the Caddy
// module, and everything it acknowledges is on disk first.
//
// It is a reference for the session API, not an agent: a prompt gets a
// deterministic assistant reply (see Reply), with the messages, parts and
// events an opencode client expects.
package nativeserver

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sessionid/caddy-sessionid/idmap"
)

// Version is reported by GET /global/health and in every session.
const Version = "native-1"

// Config sets up a Server.
type Config struct {
	DataDir    string                // where sessions are stored
	Directory  string                // the project directory of sessions created without one
	Duplicates idmap.DuplicatePolicy // how a create of an existing id is answered
}

// Server serves the session API. All handlers are safe for concurrent use:
// one lock orders every change, and a change is written to disk before it is
// visible or answered.
type Server struct {
	cfg    Config
	mu     sync.Mutex
	store  *store
	events *broker
	mux    *http.ServeMux
	busy   map[string]int // sessions answering a prompt (under mu)
}

// New opens the data folder and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Duplicates == "" {
		cfg.Duplicates = idmap.DuplicatesMatch
	}
	st, err := openStore(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, store: st, events: newBroker(), mux: http.NewServeMux(), busy: map[string]int{}}
	s.routes()
	return s, nil
}

func (s *Server) routes() {
	s.mux.HandleFunc("GET /global/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"healthy": true, "version": Version})
	})
	s.mux.HandleFunc("GET /doc", s.serveDoc)
	s.mux.HandleFunc("GET /event", s.serveEvents)
	s.mux.HandleFunc("POST /session", s.create)
	s.mux.HandleFunc("GET /session", s.list)
	s.mux.HandleFunc("GET /session/{id}", s.get)
	s.mux.HandleFunc("PATCH /session/{id}", s.patch)
	s.mux.HandleFunc("DELETE /session/{id}", s.delete)
	s.mux.HandleFunc("GET /session/{id}/children", s.children)
	s.mux.HandleFunc("POST /session/{id}/fork", s.fork)
	s.mux.HandleFunc("GET /session/{id}/message", s.messages)
	s.mux.HandleFunc("POST /session/{id}/message", s.prompt(true))
	s.mux.HandleFunc("POST /session/{id}/prompt_async", s.prompt(false))
	s.mux.HandleFunc("GET /session/status", s.status)
	s.mux.HandleFunc("POST /sync/history", s.syncHistory)
	s.mux.HandleFunc("POST /sync/replay", s.syncReplay)
	s.mux.HandleFunc("GET /path", s.path)
	s.mux.HandleFunc("GET /project/current", s.currentProject)
}

// ServeHTTP serves the API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

func now() int64 { return time.Now().UnixMilli() }

func (s *Server) create(w http.ResponseWriter, r *http.Request) {
	var body map[string]json.RawMessage
	if r.ContentLength != 0 {
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<20)).Decode(&body); err != nil || body == nil {
			badRequest(w, "request body must be a JSON object", nil)
			return
		}
	}
	id, _, invalid := idmap.CreateID(body)
	if invalid != nil {
		badRequest(w, invalid.Error(), map[string]any{"field": "id", "rule": invalid.Rule})
		return
	}
	delete(body, "id")
	var in struct {
		ParentID    string          `json:"parentID"`
		Title       string          `json:"title"`
		Agent       string          `json:"agent"`
		Model       json.RawMessage `json:"model"`
		Metadata    json.RawMessage `json:"metadata"`
		Permission  json.RawMessage `json:"permission"`
		WorkspaceID string          `json:"workspaceID"`
	}
	raw, _ := json.Marshal(body)
	if err := json.Unmarshal(raw, &in); err != nil {
		badRequest(w, "invalid create body: "+err.Error(), nil)
		return
	}
	if len(in.Metadata) > 0 && in.Metadata[0] != '{' {
		badRequest(w, "metadata must be a JSON object", map[string]any{"field": "metadata"})
		return
	}
	directory := r.URL.Query().Get("directory")
	if directory == "" {
		directory = r.Header.Get("X-Opencode-Directory")
	}
	fields := idmap.NewFields(body, map[string]string{"directory": directory, "workspace": r.URL.Query().Get("workspace")})
	if directory == "" {
		directory = s.cfg.Directory
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if id == "" {
		id = idmap.NewID("ses", true)
	} else if existing, ok := s.store.get(id); ok {
		s.answerDuplicate(w, id, existing, fields)
		return
	}
	if in.ParentID != "" {
		if _, ok := s.store.get(in.ParentID); !ok {
			notFound(w, in.ParentID)
			return
		}
	}
	t := now()
	session := Session{
		ID: id, Slug: slugFor(id), ProjectID: "global", Directory: directory, ParentID: in.ParentID,
		Title: in.Title, Agent: in.Agent, Model: in.Model, Version: Version, Metadata: in.Metadata,
		Permission: in.Permission, WorkspaceID: in.WorkspaceID, Time: SessionTime{Created: t, Updated: t},
	}
	if session.Title == "" {
		kind := "New session"
		if in.ParentID != "" {
			kind = "Child session"
		}
		session.Title = fmt.Sprintf("%s - %s", kind, time.UnixMilli(t).UTC().Format("2006-01-02T15:04:05.000Z"))
	}
	if err := s.store.put(&record{Session: session, Fields: fields}); err != nil {
		serverError(w, err)
		return
	}
	s.events.publish("session.created", map[string]any{"sessionID": id, "info": session})
	writeJSON(w, 200, session)
}

// answerDuplicate answers a create or fork of an id that exists, by the
// duplicate policy: the existing session, marked as a replay, or 409 naming
// the fields that differ.
func (s *Server) answerDuplicate(w http.ResponseWriter, id string, existing *record, fields fieldsRecord) {
	decision := s.cfg.Duplicates.Decide(existing.Fields, fields)
	switch {
	case decision.Replay:
		w.Header().Set("Idempotent-Replayed", "true")
		writeJSON(w, 200, existing.Session)
	case len(decision.Differ) > 0:
		conflict(w, id, fmt.Sprintf("session %s exists with a different %s", id, strings.Join(decision.Differ, ", ")), decision.Differ)
	default:
		conflict(w, id, fmt.Sprintf("session %s already exists", id), nil)
	}
}

// slugFor is a stable, readable handle derived from the id.
func slugFor(id string) string {
	words := []string{"amber", "brisk", "calm", "deft", "eager", "fond", "glad", "keen"}
	animals := []string{"otter", "heron", "lynx", "panda", "raven", "seal", "wren", "yak"}
	sum := 0
	for _, c := range id {
		sum = sum*31 + int(c)
	}
	if sum < 0 {
		sum = -sum
	}
	return words[sum%len(words)] + "-" + animals[(sum/len(words))%len(animals)]
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	s.mu.Lock()
	out := []Session{}
	for _, rec := range s.store.records {
		if d := q.Get("directory"); d != "" && rec.Session.Directory != d {
			continue
		}
		if q.Get("roots") == "true" && rec.Session.ParentID != "" {
			continue
		}
		out = append(out, rec.Session)
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Time.Updated > out[j].Time.Updated })
	writeJSON(w, 200, out)
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	rec, ok := s.store.get(r.PathValue("id"))
	s.mu.Unlock()
	if !ok {
		notFound(w, r.PathValue("id"))
		return
	}
	writeJSON(w, 200, rec.Session)
}

func (s *Server) patch(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Title      *string         `json:"title"`
		Metadata   json.RawMessage `json:"metadata"`
		Permission json.RawMessage `json:"permission"`
		Time       *struct {
			Archived int64 `json:"archived"`
		} `json:"time"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<20)).Decode(&in); err != nil {
		badRequest(w, "request body must be a JSON object", nil)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.store.get(r.PathValue("id"))
	if !ok {
		notFound(w, r.PathValue("id"))
		return
	}
	next := *rec
	if in.Title != nil {
		next.Session.Title = *in.Title
	}
	if in.Metadata != nil {
		next.Session.Metadata = in.Metadata
	}
	if in.Permission != nil {
		next.Session.Permission = in.Permission
	}
	if in.Time != nil {
		next.Session.Time.Archived = in.Time.Archived
	}
	next.Session.Time.Updated = now()
	if err := s.store.put(&next); err != nil {
		serverError(w, err)
		return
	}
	s.events.publish("session.updated", map[string]any{"sessionID": next.Session.ID, "info": next.Session})
	writeJSON(w, 200, next.Session)
}

// delete removes a session and, like opencode, its children.
func (s *Server) delete(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := r.PathValue("id")
	if _, ok := s.store.get(id); !ok {
		notFound(w, id)
		return
	}
	if err := s.deleteTree(id); err != nil {
		serverError(w, err)
		return
	}
	writeJSON(w, 200, true)
}

func (s *Server) deleteTree(id string) error {
	for childID, rec := range s.store.records {
		if rec.Session.ParentID == id {
			if err := s.deleteTree(childID); err != nil {
				return err
			}
		}
	}
	rec, _ := s.store.get(id)
	if err := s.store.remove(id); err != nil {
		return err
	}
	s.events.publish("session.deleted", map[string]any{"sessionID": id, "info": rec.Session})
	return nil
}

func (s *Server) children(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := r.PathValue("id")
	if _, ok := s.store.get(id); !ok {
		notFound(w, id)
		return
	}
	out := []Session{}
	for _, rec := range s.store.records {
		if rec.Session.ParentID == id {
			out = append(out, rec.Session)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Time.Created < out[j].Time.Created })
	writeJSON(w, 200, out)
}

func (s *Server) messages(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.store.get(r.PathValue("id"))
	if !ok {
		notFound(w, r.PathValue("id"))
		return
	}
	out := rec.Messages
	if out == nil {
		out = []Message{}
	}
	writeJSON(w, 200, out)
}
