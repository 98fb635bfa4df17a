package nativeserver

import "encoding/json"

// Session is OpenCode's v1 session object, with the fields this server
// maintains.
type Session struct {
	ID          string          `json:"id"`
	Slug        string          `json:"slug"`
	ProjectID   string          `json:"projectID"`
	WorkspaceID string          `json:"workspaceID,omitempty"`
	Directory   string          `json:"directory"`
	Path        string          `json:"path"`
	ParentID    string          `json:"parentID,omitempty"`
	Cost        float64         `json:"cost"`
	Tokens      Tokens          `json:"tokens"`
	Title       string          `json:"title"`
	Agent       string          `json:"agent,omitempty"`
	Model       json.RawMessage `json:"model,omitempty"`
	Version     string          `json:"version"`
	Metadata    json.RawMessage `json:"metadata,omitempty"`
	Permission  json.RawMessage `json:"permission,omitempty"`
	Time        SessionTime     `json:"time"`
}

// Tokens counts a session's token use; this server uses none.
type Tokens struct {
	Input     int        `json:"input"`
	Output    int        `json:"output"`
	Reasoning int        `json:"reasoning"`
	Cache     TokenCache `json:"cache"`
}

// TokenCache is the cache part of Tokens.
type TokenCache struct {
	Read  int `json:"read"`
	Write int `json:"write"`
}

// SessionTime holds millisecond timestamps.
type SessionTime struct {
	Created  int64 `json:"created"`
	Updated  int64 `json:"updated"`
	Archived int64 `json:"archived,omitempty"`
}

// Message is one entry of GET /session/{id}/message: the message and its parts.
type Message struct {
	Info  MessageInfo `json:"info"`
	Parts []Part      `json:"parts"`
}

// MessageInfo is a user or assistant message.
type MessageInfo struct {
	ID        string      `json:"id"`
	SessionID string      `json:"sessionID"`
	Role      string      `json:"role"`
	Time      MessageTime `json:"time"`
	ParentID  string      `json:"parentID,omitempty"`
	Agent     string      `json:"agent,omitempty"`
	Finish    string      `json:"finish,omitempty"`
}

// MessageTime holds millisecond timestamps.
type MessageTime struct {
	Created   int64 `json:"created"`
	Completed int64 `json:"completed,omitempty"`
}

// Part is a piece of a message; this server makes text parts only.
type Part struct {
	ID        string `json:"id"`
	SessionID string `json:"sessionID"`
	MessageID string `json:"messageID"`
	Type      string `json:"type"`
	Text      string `json:"text"`
}

// record is what the server stores of a session: the session, its messages,
// and the create fields the duplicate policy compares.
type record struct {
	Session  Session      `json:"session"`
	Fields   fieldsRecord `json:"fields"`
	Messages []Message    `json:"messages"`
	// The record's history positions (sync.go): Seq is the last,
	// SessionSeq the last change of Session (0: as created), MessageSeqs
	// those of Messages.
	Seq         int64   `json:"seq,omitempty"`
	SessionSeq  int64   `json:"session_seq,omitempty"`
	MessageSeqs []int64 `json:"message_seqs,omitempty"`
}

type fieldsRecord = map[string]json.RawMessage
