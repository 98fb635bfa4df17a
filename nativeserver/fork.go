package nativeserver

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"

	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/forktitle"
)

// fork copies a session, as opencode does: a new session titled
// "<title> (fork #N)", without a parent, with the original's metadata and
// its messages before messageID (all of them without one), under new
// message ids. With an id in the body the fork is made under it, by the
// create's rules: the id grammar, and for an id that exists the duplicate
// policy, whose fields for a fork are the session forked (forkOf), the
// messageID and the location.
func (s *Server) fork(w http.ResponseWriter, r *http.Request) {
	var body map[string]json.RawMessage
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 16<<20))
	if len(bytes.TrimSpace(raw)) > 0 || err != nil {
		if err != nil || json.Unmarshal(raw, &body) != nil || body == nil {
			badRequest(w, "request body must be a JSON object", nil)
			return
		}
	}
	id, _, invalid := idmap.CreateID(body)
	if invalid != nil {
		badRequest(w, invalid.Error(), map[string]any{"field": "id", "rule": invalid.Rule})
		return
	}
	var messageID string
	if raw, ok := body["messageID"]; ok {
		if json.Unmarshal(raw, &messageID) != nil || !strings.HasPrefix(messageID, "msg") {
			badRequest(w, `messageID must be a string starting with "msg"`, map[string]any{"field": "messageID"})
			return
		}
	}
	parentID := r.PathValue("id")
	directory := r.URL.Query().Get("directory")
	if directory == "" {
		directory = r.Header.Get("X-Opencode-Directory")
	}
	fields := idmap.NewForkFields(parentID, body["messageID"], map[string]string{"directory": directory, "workspace": r.URL.Query().Get("workspace")})

	s.mu.Lock()
	defer s.mu.Unlock()
	parent, ok := s.store.get(parentID)
	if !ok {
		notFound(w, parentID)
		return
	}
	if id == "" {
		id = idmap.NewID("ses", true)
	} else if existing, ok := s.store.get(id); ok {
		s.answerDuplicate(w, id, existing, fields)
		return
	}
	if directory == "" {
		directory = parent.Session.Directory
	}
	t := now()
	session := Session{
		ID: id, Slug: slugFor(id), ProjectID: parent.Session.ProjectID, Directory: directory,
		Title: forktitle.Next(parent.Session.Title), Agent: parent.Session.Agent, Model: parent.Session.Model, Version: Version,
		Metadata: parent.Session.Metadata, Permission: parent.Session.Permission, WorkspaceID: parent.Session.WorkspaceID,
		Time: SessionTime{Created: t, Updated: t},
	}
	var messages []Message
	newIDs := map[string]string{}
	for _, m := range parent.Messages {
		if messageID != "" && m.Info.ID >= messageID {
			break
		}
		info := m.Info
		info.ID, info.SessionID = newMessageID(), id
		newIDs[m.Info.ID] = info.ID
		if info.ParentID != "" {
			info.ParentID = newIDs[info.ParentID]
		}
		parts := make([]Part, len(m.Parts))
		for i, p := range m.Parts {
			p.ID, p.SessionID, p.MessageID = newPartID(), id, info.ID
			parts[i] = p
		}
		messages = append(messages, Message{Info: info, Parts: parts})
	}
	if err := s.store.put(&record{Session: session, Fields: fields, Messages: messages}); err != nil {
		serverError(w, err)
		return
	}
	s.events.publish("session.created", map[string]any{"sessionID": id, "info": session})
	writeJSON(w, 200, session)
}
