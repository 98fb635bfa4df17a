package fleet

import (
	"strings"
	"testing"
)

func TestAnswersToPendingRequestsAreRecognised(t *testing.T) {
	for path, want := range map[string]string{
		"/permission/per_1/reply": "/permission per_1",
		"/question/que_2/reply":   "/question que_2",
		"/question/que_2/reject":  "/question que_2",
		"/permission":             "",
		"/permission/per_1":       "",
		"/session/ses_1/reply":    "",
	} {
		list, id, ok := pendingRequestPath(path)
		if got := strings.TrimSpace(list + " " + id); ok != (want != "") || got != want {
			t.Errorf("%s: %q %v, want %q", path, got, ok, want)
		}
	}
}
