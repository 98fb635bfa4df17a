package upstream

import (
	"net/http"
	"strings"
	"testing"
)

func TestAnEventStreamAnswerPassesWholeEventsOnly(t *testing.T) {
	var got []string
	a := NewAnswer(0, nil)
	a.Events = func(ev []byte) error { got = append(got, string(ev)); return nil }
	for _, part := range []string{"data: {\"a\"", ":1}\n", "\ndata: {\"b\":2}\n\ndata: {\"c\"", ":3}\n\n"} {
		_, _ = a.Write([]byte(part))
	}
	if strings.Join(got, "|") != "data: {\"a\":1}\n\n|data: {\"b\":2}\n\n|data: {\"c\":3}\n\n" {
		t.Fatalf("%q", got)
	}
	if !a.Opened() || a.Refusal() != nil {
		t.Fatalf("opened %v, refusal %v", a.Opened(), a.Refusal())
	}
}

func TestAStreamThatIsRefusedIsCapturedAsTheRefusal(t *testing.T) {
	a := NewAnswer(0, nil)
	a.Events = func([]byte) error { t.Fatal("a refusal is not an event stream"); return nil }
	a.Header().Set("WWW-Authenticate", `Basic realm="Secure Area"`)
	a.WriteHeader(http.StatusUnauthorized)
	_, _ = a.Write([]byte("Unauthorized"))
	refusal := a.Refusal()
	if a.Opened() || refusal == nil || refusal.Status != 401 || refusal.Body.String() != "Unauthorized" || refusal.Header().Get("WWW-Authenticate") == "" {
		t.Fatalf("refusal %+v", refusal)
	}
}
