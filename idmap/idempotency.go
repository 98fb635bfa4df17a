package idmap

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"
)

// MaxKeyLen is the longest Idempotency-Key accepted, Stripe's limit. A UUID
// (36 characters) or a hash in hex (64) fits with room to spare.
const MaxKeyLen = 255

// Rules named by InvalidKeyError.
const (
	KeyRuleLength  = "length"  // empty, or longer than MaxKeyLen
	KeyRuleCharset = "charset" // a character outside visible ASCII
	KeyRuleRepeat  = "repeat"  // the header was sent more than once
)

// InvalidKeyError says why an Idempotency-Key was refused.
type InvalidKeyError struct {
	Rule   string // one of the KeyRule constants
	Detail string
}

func (e *InvalidKeyError) Error() string { return "invalid Idempotency-Key: " + e.Detail }

// ParseKey reads the values of an Idempotency-Key header. The IETF draft
// (draft-ietf-httpapi-idempotency-key-header) makes the value a structured
// field string, `"8e03978e-40d5-43e8-bc93-6894a57f9324"`; most clients (and
// Stripe's) send it bare. Both are accepted and name the same key. A key is 1
// to MaxKeyLen characters of visible ASCII (0x21–0x7E): it is compared byte
// for byte, so a space or a non-ASCII character, which proxies and client
// libraries rewrite in ways nobody notices, is refused rather than half-kept.
// present is false when the header is absent.
func ParseKey(values []string) (key string, present bool, err error) {
	switch len(values) {
	case 0:
		return "", false, nil
	case 1:
	default:
		return "", true, &InvalidKeyError{Rule: KeyRuleRepeat, Detail: "the header must be sent once"}
	}
	key = strings.TrimSpace(values[0])
	if len(key) >= 2 && key[0] == '"' && key[len(key)-1] == '"' {
		key = key[1 : len(key)-1]
	}
	if len(key) == 0 || len(key) > MaxKeyLen {
		return "", true, &InvalidKeyError{Rule: KeyRuleLength, Detail: fmt.Sprintf("must be 1 to %d characters", MaxKeyLen)}
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return "", true, &InvalidKeyError{Rule: KeyRuleCharset, Detail: fmt.Sprintf("character %q at %d is not visible ASCII (quotes and backslashes are not allowed inside the key)", c, i)}
		}
	}
	return key, true, nil
}

// Fingerprint identifies what a keyed request asked for: its route, its
// query and each top-level field of its JSON body, each by a digest, so that
// a reused key with another request can be refused naming what differs
// without keeping the request itself.
type Fingerprint map[string]string

// NewFingerprint digests a request. Bodies are compared as JSON values:
// whitespace and the order of object keys do not matter, numbers and strings
// must be equal as written. body must be a JSON object (or empty).
func NewFingerprint(route, query string, body []byte) (Fingerprint, error) {
	f := Fingerprint{"route": digest([]byte(route)), "query": digest([]byte(query))}
	if len(bytes.TrimSpace(body)) == 0 {
		return f, nil
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil || fields == nil {
		return nil, errors.New("request body must be a JSON object")
	}
	for name, raw := range fields {
		var v any
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		canonical, err := json.Marshal(v) // maps marshal with sorted keys
		if err != nil {
			return nil, err
		}
		f["body."+name] = digest(canonical)
	}
	return f, nil
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12])
}

// Diff names what differs between two fingerprints, sorted: "route", "query"
// or "body.<field>".
func (f Fingerprint) Diff(other Fingerprint) []string {
	var differ []string
	for name, d := range f {
		if other[name] != d {
			differ = append(differ, name)
		}
	}
	for name := range other {
		if _, ok := f[name]; !ok {
			differ = append(differ, name)
		}
	}
	sort.Strings(differ)
	return differ
}

// Prompt is what the handler keeps of one keyed prompt: written pending
// before the prompt is sent upstream, with the message id it is sent under,
// and completed with the upstream's answer. A pending record found later
// means the prompt may or may not have reached the upstream; the message id
// lets the upstream say which.
type Prompt struct {
	SessionID string `json:"session_id"` // the client's session id
	// Caller names who sent the prompt (access.Caller: an HMAC of its
	// credentials): the record is theirs alone. Another caller's prompt
	// with the same key is another prompt with a record of its own.
	Caller      string      `json:"caller,omitempty"`
	Key         string      `json:"key"`
	Fingerprint Fingerprint `json:"fingerprint"`
	// SessionCreated is when the session's mapping (or direct-mode record)
	// was made: a session deleted and created again under the same id is
	// another session, and the prompts of the old one are not replayed on it.
	SessionCreated time.Time `json:"session_created"`
	// MessageID is the user message id the prompt is sent under, chosen
	// before it is sent (or given by the client) and never changed.
	MessageID string    `json:"message_id"`
	Started   time.Time `json:"started"`
	Expires   time.Time `json:"expires"`
	Done      bool      `json:"done"`
	// The answer, once Done. Body is the upstream's, with real ids: it is
	// rewritten on its way out like any answer. An answer too large to keep
	// has no Body but, on the synchronous routes, the id of the assistant
	// message it was (ReplyID), which is read back from the upstream.
	Status      int    `json:"status,omitempty"`
	ContentType string `json:"content_type,omitempty"`
	Body        []byte `json:"body,omitempty"`
	ReplyID     string `json:"reply_id,omitempty"`
}

// Expired reports whether the record is past its expiry at now.
func (p Prompt) Expired(now time.Time) bool { return !p.Expires.IsZero() && now.After(p.Expires) }

// PromptLockName is the name under which Index.Lock serialises the requests
// of one caller's key on one session.
func PromptLockName(sessionID, caller, key string) string {
	return "idempotency/" + sessionID + "/" + keyDigest(caller, key)
}

// keyDigest names a caller's key in storage keys: keys may hold characters
// ("/", "..") that storage backends treat specially.
func keyDigest(caller, key string) string {
	if caller != "" {
		key = caller + "\x00" + key
	}
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// The records of keyed prompts live beside the mappings:
//
//	<root>/<namespace>/idempotency/<session id>/<sha256 of caller and key>
func (s *Store) promptKey(sessionID, caller, key string) string {
	return s.prefix + "/idempotency/" + sessionID + "/" + keyDigest(caller, key)
}

// LoadPrompt returns the record of a caller's key on a session.
func (s *Store) LoadPrompt(ctx context.Context, sessionID, caller, key string) (Prompt, error) {
	var p Prompt
	if !storable(sessionID) {
		return p, ErrNotFound
	}
	err := s.loadJSON(ctx, s.promptKey(sessionID, caller, key), &p)
	if err == nil && (p.Key != key || p.Caller != caller) {
		return Prompt{}, ErrNotFound // a digest collision: never replay another key's answer
	}
	return p, err
}

// SavePrompt stores a record durably.
func (s *Store) SavePrompt(ctx context.Context, p Prompt) error {
	if !storable(p.SessionID) {
		return fmt.Errorf("prompt record of %q: %w", p.SessionID, errUnstorable)
	}
	raw, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if err := s.put(ctx, s.promptKey(p.SessionID, p.Caller, p.Key), raw); err != nil {
		return fmt.Errorf("store prompt record of %q: %w", p.SessionID, err)
	}
	return nil
}

// RemovePrompt deletes the record of a caller's key on a session, if any.
func (s *Store) RemovePrompt(ctx context.Context, sessionID, caller, key string) error {
	return s.delete(ctx, s.promptKey(sessionID, caller, key))
}

// RemovePrompts deletes every record of a session: certmagic storages delete
// a key's whole subtree.
func (s *Store) RemovePrompts(ctx context.Context, sessionID string) error {
	return s.delete(ctx, s.prefix+"/idempotency/"+sessionID)
}

// Lister is the listing part of certmagic.Storage, which sweeping needs.
type Lister interface {
	List(ctx context.Context, path string, recursive bool) ([]string, error)
}

// SweepPrompts deletes the records that expired before now and returns how
// many it deleted. It needs a storage that can list (every certmagic storage
// can); with another it deletes nothing, and expired records are only
// ignored when they are read.
func (s *Store) SweepPrompts(ctx context.Context, now time.Time) (int, error) {
	lister, ok := s.storage.(Lister)
	if !ok {
		return 0, nil
	}
	keys, err := lister.List(ctx, s.prefix+"/idempotency", true)
	if err != nil {
		return 0, nil // nothing stored yet (file storage: no such folder)
	}
	deleted := 0
	for _, key := range keys {
		if ctx.Err() != nil {
			return deleted, ctx.Err()
		}
		var p Prompt
		if err := s.loadJSON(ctx, key, &p); err != nil || p.Key == "" {
			continue // a folder, or gone meanwhile
		}
		if p.Expired(now) {
			if err := s.delete(ctx, key); err != nil {
				return deleted, err
			}
			deleted++
		}
	}
	s.removeEmptyFolders(ctx, lister, s.prefix+"/idempotency")
	return deleted, nil
}

// fileNamer is the part of certmagic.FileStorage that tells where a key is
// on disk. Only a storage of files has folders a key leaves behind when it
// is deleted; others (Redis) hold keys alone.
type fileNamer interface{ Filename(key string) string }

// removeEmptyFolders removes, from a file storage, the session folders of
// records that are all gone, so that folders do not pile up one per session
// that ever had a keyed prompt. A folder is removed with rmdir, which the
// file system refuses for a folder that is not empty: a record written
// meanwhile is never lost (a write racing the rmdir fails, before its
// prompt is sent, and is answered as a storage error).
func (s *Store) removeEmptyFolders(ctx context.Context, lister Lister, root string) {
	files, ok := s.storage.(fileNamer)
	if !ok {
		return
	}
	folders, err := lister.List(ctx, root, false)
	if err != nil {
		return
	}
	for _, folder := range folders {
		_ = os.Remove(files.Filename(folder)) // ENOTEMPTY for a folder in use
	}
}
