package upstream

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// Ask sends a request of the module's own through the rest of the route
// (the reverse_proxy), so it gets the same upstream selection, health
// checks, retries, timeouts and headers as the client's requests. It goes to
// the worker of r's route (the session r is about), if any. The client's
// headers (Authorization among them) come along; the body and its headers
// are replaced. A transport failure is returned as an error carrying the
// status the proxy chose (502, 503 or 504).
func Ask(r *http.Request, next caddyhttp.Handler, method, path, rawQuery string, body []byte) (*Answer, error) {
	sub, _ := WithRoute(r, "", true)
	return do(sub, next, method, path, rawQuery, body)
}

// AskWorker is Ask to one worker, or with worker "" to the one the policy's
// fallback chooses; the route tells which it was.
func AskWorker(r *http.Request, next caddyhttp.Handler, worker, method, path, rawQuery string, body []byte) (*Answer, *Route, error) {
	sub, rt := WithRoute(r, worker, false)
	answer, err := do(sub, next, method, path, rawQuery, body)
	return answer, rt, err
}

func do(sub *http.Request, next caddyhttp.Handler, method, path, rawQuery string, body []byte) (*Answer, error) {
	sub = sub.Clone(sub.Context())
	sub.Method = method
	sub.URL.Path, sub.URL.RawPath, sub.URL.RawQuery = path, "", withCredentials(rawQuery, sub.URL.RawQuery)
	sub.RequestURI = sub.URL.RequestURI()
	sub.Header.Del("Accept-Encoding")
	sub.Header.Del("Content-Encoding")
	sub.Header.Del("Transfer-Encoding")
	sub.TransferEncoding = nil
	if body == nil {
		sub.Body, sub.ContentLength, sub.GetBody = http.NoBody, 0, nil
		sub.Header.Del("Content-Type")
		sub.Header.Del("Content-Length")
	} else {
		SetBody(sub, body)
		sub.Header.Set("Content-Type", "application/json")
	}
	answer := NewAnswer(0, nil)
	err := ServeOwn(next, answer, sub)
	rt := RouteOf(sub)
	rt.Finish(sub)
	if err != nil {
		op := method + " " + path
		if rt != nil && rt.Worker != "" {
			op += " on worker " + rt.Worker
		}
		return nil, askError{op: op, err: err}
	}
	if answer.over {
		return nil, caddyhttp.Error(http.StatusBadGateway, fmt.Errorf("%s %s: upstream answer over %d bytes", method, path, MaxAnswer))
	}
	if answer.Status == 0 {
		answer.Status = http.StatusOK
	}
	return answer, nil
}

// credentialParam is where opencode takes credentials in a query (for
// clients that cannot set headers): the base64 of user:password.
const credentialParam = "auth_token"

// withCredentials is the query of a request of the module's own made for a
// client: rawQuery, with the client's auth_token (from clientQuery) when
// rawQuery has none, so that the upstream serves the module's request as it
// serves the client's, wherever the client put its credentials.
func withCredentials(rawQuery, clientQuery string) string {
	if !strings.Contains(clientQuery, credentialParam) {
		return rawQuery
	}
	if q, err := url.ParseQuery(rawQuery); err == nil && q.Has(credentialParam) {
		return rawQuery
	}
	client, _ := url.ParseQuery(clientQuery)
	tokens := client[credentialParam]
	if len(tokens) == 0 {
		return rawQuery
	}
	add := url.Values{credentialParam: tokens}.Encode()
	if rawQuery == "" {
		return add
	}
	return rawQuery + "&" + add
}

// WorkerAnswer is one worker's answer to a request sent to every worker.
type WorkerAnswer struct {
	Worker string
	Answer *Answer
	Err    error

	// Unavailable: the worker was not asked, because its health checks
	// have it down (Err says so too).
	Unavailable bool
}

// AskEach sends one request to every available worker of the pool at once,
// and returns their answers in pool order. An unavailable worker is not
// asked: its answer is an error.
func AskEach(r *http.Request, next caddyhttp.Handler, pool []*reverseproxy.Upstream, method, path, rawQuery string) []WorkerAnswer {
	answers := make([]WorkerAnswer, len(pool))
	var wg sync.WaitGroup
	for i, u := range pool {
		answers[i].Worker = u.Dial
		if !u.Available() {
			answers[i].Err = caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("worker %s is unavailable", u.Dial))
			answers[i].Unavailable = true
			continue
		}
		sub, _ := WithRoute(r, u.Dial, false)
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i].Answer, answers[i].Err = do(sub, next, method, path, rawQuery, nil)
		}()
	}
	wg.Wait()
	return answers
}

// AskWaiting sends one request to each of the workers at once, as AskEach,
// but asks unavailable ones too: reverse_proxy holds each request until its
// worker's health checks pass again or lb_try_duration runs out, as it holds
// a client's request for a session on that worker.
func AskWaiting(r *http.Request, next caddyhttp.Handler, workers []string, method, path, rawQuery string) []WorkerAnswer {
	answers := make([]WorkerAnswer, len(workers))
	var wg sync.WaitGroup
	for i, worker := range workers {
		answers[i].Worker = worker
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i].Answer, _, answers[i].Err = AskWorker(r, next, worker, method, path, rawQuery, nil)
		}()
	}
	wg.Wait()
	return answers
}

// ServeOwn sends a request of the module's own through next. reverse_proxy
// aborts a response that broke off mid-body by panicking with
// http.ErrAbortHandler, which net/http recovers for the client's request; on
// the module's own requests, some on goroutines of their own, that panic
// must end the request, not the process.
func ServeOwn(next caddyhttp.Handler, w http.ResponseWriter, r *http.Request) (err error) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				panic(v)
			}
			err = caddyhttp.Error(http.StatusBadGateway, errors.New("the upstream's response broke off"))
		}
	}()
	return next.ServeHTTP(w, r)
}

// SetBody replaces a request's body with b and keeps its length headers true.
func SetBody(r *http.Request, b []byte) {
	r.Body = io.NopCloser(bytes.NewReader(b))
	r.ContentLength = int64(len(b))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	r.Header.Set("Content-Length", strconv.Itoa(len(b)))
}
