package access

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkAdmitKnownCaller is what the gate adds to a request of a caller
// it verified already: an HMAC of the credentials and a cache lookup.
func BenchmarkAdmitKnownCaller(b *testing.B) {
	up := &passwordUpstream{password: "secret"}
	g := newGate(&testing.T{}, Config{})
	r := httptest.NewRequest(http.MethodPost, "/session/ses_x/prompt_async", nil)
	r.Header.Set("Authorization", basic("opencode", "secret"))
	w := httptest.NewRecorder()
	if admitted, _ := g.Admit(w, r, up); admitted == nil {
		b.Fatal("not admitted")
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if admitted, _ := g.Admit(w, r, up); admitted == nil {
			b.Fatal("not admitted")
		}
	}
}
