package access

import (
	"context"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// passwordUpstream answers like opencode with OPENCODE_SERVER_PASSWORD:
// every route refuses 401 with an empty body and its WWW-Authenticate
// unless the request carries the password, in the header or as auth_token.
type passwordUpstream struct {
	password string
	asked    atomic.Int64 // verifications
	status   int          // when set, every answer (a failing upstream)
}

func (u *passwordUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	u.asked.Add(1)
	if u.status != 0 {
		w.WriteHeader(u.status)
		return nil
	}
	good := "Basic " + base64.StdEncoding.EncodeToString([]byte("opencode:"+u.password))
	if r.Header.Get("Authorization") != good && "Basic "+r.URL.Query().Get("auth_token") != good {
		w.Header().Set("Www-Authenticate", `Basic realm="Secure Area"`)
		w.WriteHeader(http.StatusUnauthorized)
		return nil
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"healthy":true}`))
	return nil
}

func newGate(t testing.TB, config Config) *Gate {
	t.Helper()
	if err := config.Provision(); err != nil {
		t.Fatal(err)
	}
	secret := []byte("0123456789abcdef0123456789abcdef")
	g, err := New(config, "test", func(context.Context) ([]byte, error) { return secret, nil }, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	return g
}

func basic(user, password string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

func request(authorization, query string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/session?"+query, nil)
	if authorization != "" {
		r.Header.Set("Authorization", authorization)
	}
	return r
}

func admit(g *Gate, r *http.Request, next caddyhttp.Handler) (*httptest.ResponseRecorder, *http.Request, error) {
	w := httptest.NewRecorder()
	admitted, err := g.Admit(w, r, next)
	return w, admitted, err
}

func TestACallerTheUpstreamRefusesGetsItsRefusalAndNothingElse(t *testing.T) {
	up := &passwordUpstream{password: "secret"}
	g := newGate(t, Config{})
	for _, auth := range []string{"", basic("opencode", "wrong"), basic("someone", "secret"), "Bearer secret"} {
		w, admitted, err := admit(g, request(auth, ""), up)
		if err != nil || admitted != nil {
			t.Fatalf("%q: admitted=%v err=%v", auth, admitted != nil, err)
		}
		if w.Code != 401 || w.Header().Get("Www-Authenticate") != `Basic realm="Secure Area"` || w.Body.Len() != 0 {
			t.Fatalf("%q: %d %v %q, want opencode's 401", auth, w.Code, w.Header(), w.Body)
		}
	}
}

func TestAServedCallerIsAdmittedWhereverItPutsItsPassword(t *testing.T) {
	up := &passwordUpstream{password: "secret"}
	g := newGate(t, Config{})
	token := base64.StdEncoding.EncodeToString([]byte("opencode:secret"))
	var ids []string
	for _, r := range []*http.Request{
		request(basic("opencode", "secret"), ""),
		request("", "auth_token="+url.QueryEscape(token)),
		request("", "directory=/x&auth_token="+url.QueryEscape(token)),
	} {
		_, admitted, err := admit(g, r, up)
		if err != nil || admitted == nil {
			t.Fatalf("%v %q: not admitted (%v)", r.Header, r.URL.RawQuery, err)
		}
		caller, ok := CallerOf(admitted)
		if !ok || caller.ID == "" {
			t.Fatal("an admitted request carries no caller")
		}
		ids = append(ids, caller.ID)
	}
	for _, id := range ids[1:] {
		if id != ids[0] {
			t.Fatalf("one password in the header and in auth_token are different callers: %q", ids)
		}
	}
}

func TestVerdictsAreRememberedGoodAndRefusedAlike(t *testing.T) {
	up := &passwordUpstream{password: "secret"}
	g := newGate(t, Config{})
	for i := 0; i < 5; i++ {
		admit(g, request(basic("opencode", "secret"), ""), up)
		admit(g, request(basic("opencode", "wrong"), ""), up)
	}
	if n := up.asked.Load(); n != 2 {
		t.Fatalf("10 requests of 2 callers asked the upstream %d times, want 2", n)
	}
}

func TestARefusalIsForgottenAfterRefusedFor(t *testing.T) {
	up := &passwordUpstream{password: "secret"}
	g := newGate(t, Config{RefusedFor: caddy.Duration(50 * time.Millisecond)})
	admit(g, request(basic("opencode", "wrong"), ""), up)
	time.Sleep(120 * time.Millisecond)
	up.password = "wrong" // the operator changed the password to the one the caller had
	if _, admitted, _ := admit(g, request(basic("opencode", "wrong"), ""), up); admitted == nil {
		t.Fatal("a caller refused before is still refused after refused_for")
	}
}

func TestCallersArrivingTogetherAreVerifiedOnce(t *testing.T) {
	up := &passwordUpstream{password: "secret"}
	slow := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		time.Sleep(50 * time.Millisecond)
		return up.ServeHTTP(w, r)
	})
	g := newGate(t, Config{})
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			admit(g, request(basic("opencode", "wrong"), ""), slow)
		}()
	}
	wg.Wait()
	if n := up.asked.Load(); n != 1 {
		t.Fatalf("50 concurrent requests with one bad password asked the upstream %d times, want 1", n)
	}
}

func TestAnUpstreamThatCannotSayIsNotTakenForAVerdict(t *testing.T) {
	up := &passwordUpstream{password: "secret", status: http.StatusBadGateway}
	g := newGate(t, Config{})
	if _, admitted, err := admit(g, request(basic("opencode", "secret"), ""), up); admitted != nil || err == nil {
		t.Fatalf("a 502 admitted=%v err=%v, want an error for Caddy to answer", admitted != nil, err)
	}
	up.status = 0
	if _, admitted, _ := admit(g, request(basic("opencode", "secret"), ""), up); admitted == nil {
		t.Fatal("the failure was remembered as a refusal")
	}
}

func TestTheVerificationCarriesTheCallersCredentialsAndNothingOfItsRequest(t *testing.T) {
	var got *http.Request
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		got = r
		return nil
	})
	g := newGate(t, Config{})
	r := request(basic("opencode", "secret"), "directory=/x&auth_token=abc&ses=ses_x")
	r.Header.Set("Upgrade", "websocket")
	r.Header.Set("Idempotency-Key", "k")
	admit(g, r, next)
	if got.Method != "GET" || got.URL.Path != "/global/health" || got.URL.RawQuery != "auth_token=abc" {
		t.Fatalf("verified with %s %s?%s", got.Method, got.URL.Path, got.URL.RawQuery)
	}
	if got.Header.Get("Authorization") != basic("opencode", "secret") || got.Header.Get("Upgrade") != "" || got.Header.Get("Idempotency-Key") != "" {
		t.Fatalf("verification headers %v", got.Header)
	}
}

func TestTrustAdmitsTheUserAnAuthHandlerNamedAndRefusesTheRest(t *testing.T) {
	g := newGate(t, Config{Trust: "{http.auth.user.id}"})
	withUser := func(user string) *http.Request {
		r := httptest.NewRequest("GET", "/session", nil)
		repl := caddy.NewReplacer()
		if user != "" {
			repl.Set("http.auth.user.id", user)
		}
		return r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
	}
	never := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		t.Fatal("trust asked the upstream")
		return nil
	})
	_, alice, _ := admit(g, withUser("alice"), never)
	_, bob, _ := admit(g, withUser("bob"), never)
	if alice == nil || bob == nil {
		t.Fatal("a named user was refused")
	}
	a, _ := CallerOf(alice)
	b, _ := CallerOf(bob)
	if a.ID == b.ID {
		t.Fatal("two users are one caller")
	}
	w, nobody, _ := admit(g, withUser(""), never)
	if nobody != nil || w.Code != 401 {
		t.Fatalf("no user: admitted=%v %d, want 401", nobody != nil, w.Code)
	}
}

func TestCallerIDsDependOnTheSecretNotOnlyOnTheCredentials(t *testing.T) {
	up := &passwordUpstream{password: "secret"}
	a, b := newGate(t, Config{}), newGate(t, Config{})
	_, ra, _ := admit(a, request(basic("opencode", "secret"), ""), up)
	_, rb, _ := admit(b, request(basic("opencode", "secret"), ""), up)
	ca, _ := CallerOf(ra)
	cb, _ := CallerOf(rb)
	if ca.ID != cb.ID {
		t.Fatal("two instances with one secret name one caller differently: records would not follow it")
	}
	sum := base64.StdEncoding.EncodeToString([]byte("opencode:secret"))
	if ca.ID == sum || len(ca.ID) != 32 {
		t.Fatalf("caller id %q", ca.ID)
	}
}
