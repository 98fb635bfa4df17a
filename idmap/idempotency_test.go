package idmap

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestParseKey(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		key    string
		rule   string
	}{
		{"bare", []string{"8e03978e-40d5-43e8-bc93-6894a57f9324"}, "8e03978e-40d5-43e8-bc93-6894a57f9324", ""},
		{"the draft's quoted string", []string{`"abc"`}, "abc", ""},
		{"the longest", []string{strings.Repeat("k", MaxKeyLen)}, strings.Repeat("k", MaxKeyLen), ""},
		{"one too long", []string{strings.Repeat("k", MaxKeyLen+1)}, "", KeyRuleLength},
		{"empty", []string{""}, "", KeyRuleLength},
		{"a space", []string{"a b"}, "", KeyRuleCharset},
		{"a quote inside", []string{`a"b`}, "", KeyRuleCharset},
		{"control character", []string{"a\x01"}, "", KeyRuleCharset},
		{"twice", []string{"a", "b"}, "", KeyRuleRepeat},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, present, err := ParseKey(tt.values)
			if !present {
				t.Fatal("not present")
			}
			if tt.rule == "" {
				if err != nil || key != tt.key {
					t.Fatalf("%q, %v", key, err)
				}
				return
			}
			if e, ok := err.(*InvalidKeyError); !ok || e.Rule != tt.rule {
				t.Fatalf("error %v, want rule %s", err, tt.rule)
			}
		})
	}
	if _, present, _ := ParseKey(nil); present {
		t.Fatal("no header is present")
	}
}

func TestFingerprintsCompareJSONValues(t *testing.T) {
	a, _ := NewFingerprint("prompt_async", "", []byte(`{"parts":[{"type":"text","text":"hi"}],"agent":"build"}`))
	same, _ := NewFingerprint("prompt_async", "", []byte(`{ "agent":"build", "parts":[ {"text":"hi","type":"text"} ] }`))
	if d := a.Diff(same); len(d) != 0 {
		t.Fatalf("whitespace and key order made a difference: %v", d)
	}
	other, _ := NewFingerprint("message", "directory=/x", []byte(`{"parts":[{"type":"text","text":"hi"}],"model":{}}`))
	if d := strings.Join(a.Diff(other), ","); d != "body.agent,body.model,query,route" {
		t.Fatalf("differ: %s", d)
	}
	if _, err := NewFingerprint("x", "", []byte(`[1]`)); err == nil {
		t.Fatal("a body that is not an object was accepted")
	}
}

func TestMessageIDsSortWithOpencodesOwnAndDoNotRepeat(t *testing.T) {
	before := NewID("msg", false) // opencode's ascending shape
	id := NewMessageID(time.Now(), "ses_a", "k")
	after := NewID("msg", false)
	if !(before < id && id < after) {
		t.Fatalf("%s does not sort between %s and %s", id, before, after)
	}
	if len(id) != len(before) {
		t.Fatalf("%s is not opencode's length", id)
	}
	if again := NewMessageID(time.Now(), "ses_a", "k"); again == id {
		t.Fatal("two records of one key got one message id")
	}
}

func TestPromptRecordsRoundTripAndGoWithTheirSession(t *testing.T) {
	ctx := context.Background()
	index, _ := newTestIndex(t, 0)
	now := time.Now().UTC()
	for _, key := range []string{"a", "b/../c"} {
		if err := index.Store.SavePrompt(ctx, Prompt{SessionID: "ses_s", Key: key, MessageID: "msg_x", Expires: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	if p, err := index.Store.LoadPrompt(ctx, "ses_s", "", "b/../c"); err != nil || p.MessageID != "msg_x" {
		t.Fatalf("%+v %v", p, err)
	}
	if err := index.Store.RemovePrompts(ctx, "ses_s"); err != nil {
		t.Fatal(err)
	}
	if _, err := index.Store.LoadPrompt(ctx, "ses_s", "", "a"); err != ErrNotFound {
		t.Fatalf("after the session's removal: %v", err)
	}
}

func TestSweepDeletesOnlyExpiredRecords(t *testing.T) {
	ctx := context.Background()
	index, _ := newTestIndex(t, 0)
	now := time.Now()
	index.Store.SavePrompt(ctx, Prompt{SessionID: "ses_s", Key: "old", Expires: now.Add(-time.Second)})
	index.Store.SavePrompt(ctx, Prompt{SessionID: "ses_t", Key: "new", Expires: now.Add(time.Hour)})
	if n, err := index.Store.SweepPrompts(ctx, now); n != 1 || err != nil {
		t.Fatalf("swept %d, %v", n, err)
	}
	if _, err := index.Store.LoadPrompt(ctx, "ses_t", "", "new"); err != nil {
		t.Fatalf("a live record was swept: %v", err)
	}
}

func TestSweepLeavesNoFolderOfASessionWhoseRecordsAreGone(t *testing.T) {
	ctx := context.Background()
	index, storage := newTestIndex(t, 0)
	now := time.Now()
	index.Store.SavePrompt(ctx, Prompt{SessionID: "ses_gone", Key: "old", Expires: now.Add(-time.Second)})
	index.Store.SavePrompt(ctx, Prompt{SessionID: "ses_live", Key: "old", Expires: now.Add(-time.Second)})
	index.Store.SavePrompt(ctx, Prompt{SessionID: "ses_live", Key: "new", Expires: now.Add(time.Hour)})
	if _, err := index.Store.SweepPrompts(ctx, now); err != nil {
		t.Fatal(err)
	}
	folders, _ := storage.List(ctx, "session_ids/test/idempotency", false)
	if len(folders) != 1 || !strings.HasSuffix(folders[0], "ses_live") {
		t.Fatalf("folders left: %q, want only ses_live's", folders)
	}
	if _, err := index.Store.LoadPrompt(ctx, "ses_live", "", "new"); err != nil {
		t.Fatalf("the live record went with the sweep: %v", err)
	}
	// A record written into a folder the sweep removed is stored anew.
	if err := index.Store.SavePrompt(ctx, Prompt{SessionID: "ses_gone", Key: "again", Expires: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
}
