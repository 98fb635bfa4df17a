package idcommand

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestSessionIDCommandDerives(t *testing.T) {
	var out bytes.Buffer
	status, err := runSessionID(&out, "6ba7b810-9dad-11d1-80b4-00c04fd430c8", false, false, []string{"worker-1", "worker-2"})
	if err != nil || status != 0 {
		t.Fatal(status, err)
	}
	// Vectors from docs/derivation.md.
	if out.String() != "ses_60f4a89a537d1utGJrRDnDzRLT\nses_9762d1444d011teIsEFpftSar9\n" {
		t.Fatalf("got %q", out.String())
	}
	out.Reset()
	runSessionID(&out, "dns:example.com", true, false, []string{"café"})
	var derived []derivedID
	if err := json.Unmarshal(out.Bytes(), &derived); err != nil || len(derived) != 1 || derived[0].ID != "ses_cfee6b2db5c0273bjRPnAUFeeC" {
		t.Fatalf("json: %s", out.String())
	}
}

func TestSessionIDCommandValidates(t *testing.T) {
	var out bytes.Buffer
	status, err := runSessionID(&out, "", false, true, []string{"ses_ok", "ses_../x"})
	if err == nil || status != 1 {
		t.Fatalf("status %d, err %v: an invalid id must fail the command", status, err)
	}
	if !strings.Contains(out.String(), "ses_ok: valid") || !strings.Contains(out.String(), "not one of [A-Za-z0-9_-] (rule charset)") {
		t.Fatalf("got %q", out.String())
	}
	out.Reset()
	runSessionID(&out, "", true, true, []string{"sesX"})
	var checked []checkedID
	if err := json.Unmarshal(out.Bytes(), &checked); err != nil || checked[0].Valid || checked[0].Rule != "prefix" {
		t.Fatalf("json: %s", out.String())
	}
}

func TestSessionIDCommandNeedsANamespace(t *testing.T) {
	if _, err := runSessionID(&bytes.Buffer{}, "", false, false, []string{"a"}); err == nil {
		t.Fatal("derived without a namespace")
	}
	if _, err := runSessionID(&bytes.Buffer{}, "not-a-namespace", false, false, []string{"a"}); err == nil {
		t.Fatal("accepted a bad namespace")
	}
}
