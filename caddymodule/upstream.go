package caddymodule

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// maxUpstreamAnswer bounds what the handler buffers of its own calls upstream.
const maxUpstreamAnswer = 64 << 20

// upstreamAnswer is a response the handler asked for itself, in full.
type upstreamAnswer struct {
	status int
	header http.Header
	body   bytes.Buffer
	over   bool
}

func (a *upstreamAnswer) Header() http.Header { return a.header }

func (a *upstreamAnswer) WriteHeader(status int) {
	if a.status == 0 && status >= 200 {
		a.status = status
	}
}

func (a *upstreamAnswer) Write(p []byte) (int, error) {
	if a.status == 0 {
		a.status = http.StatusOK
	}
	if a.body.Len()+len(p) > maxUpstreamAnswer {
		a.over = true
		return 0, errors.New("upstream answer too large")
	}
	return a.body.Write(p)
}

// FlushError lets the proxy flush; there is nothing to flush to.
func (a *upstreamAnswer) FlushError() error { return nil }

func (a *upstreamAnswer) ok() bool { return a.status >= 200 && a.status < 300 }

// askUpstream sends a request of the handler's own through the rest of the
// route (the reverse_proxy), so it gets the same upstream selection, health
// checks, retries, timeouts and headers as the client's requests. It goes to
// the worker of r's route (the session r is about), if any. The client's
// headers (Authorization among them) come along; the body and its headers are
// replaced. A transport failure is returned as an error carrying the status
// the proxy chose (502, 503 or 504).
func askUpstream(r *http.Request, next caddyhttp.Handler, method, path, rawQuery string, body []byte) (*upstreamAnswer, error) {
	sub, _ := withRoute(r, "", true)
	return ask(sub, next, method, path, rawQuery, body)
}

// askWorker is askUpstream to one worker, or with worker "" to the one the
// policy's fallback chooses; the route tells which it was.
func askWorker(r *http.Request, next caddyhttp.Handler, worker, method, path, rawQuery string, body []byte) (*upstreamAnswer, *route, error) {
	sub, rt := withRoute(r, worker, false)
	answer, err := ask(sub, next, method, path, rawQuery, body)
	return answer, rt, err
}

func ask(sub *http.Request, next caddyhttp.Handler, method, path, rawQuery string, body []byte) (*upstreamAnswer, error) {
	sub = sub.Clone(sub.Context())
	sub.Method = method
	sub.URL.Path, sub.URL.RawPath, sub.URL.RawQuery = path, "", rawQuery
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
		setBody(sub, body)
		sub.Header.Set("Content-Type", "application/json")
	}
	answer := &upstreamAnswer{header: http.Header{}}
	err := serveOwn(next, answer, sub)
	rt := routeOf(sub)
	rt.done(sub)
	if err != nil {
		op := method + " " + path
		if rt != nil && rt.worker != "" {
			op += " on worker " + rt.worker
		}
		return nil, askError{op: op, err: err}
	}
	if answer.over {
		return nil, caddyhttp.Error(http.StatusBadGateway, fmt.Errorf("%s %s: upstream answer over %d bytes", method, path, maxUpstreamAnswer))
	}
	if answer.status == 0 {
		answer.status = http.StatusOK
	}
	return answer, nil
}

// workerAnswer is one worker's answer to a request sent to every worker.
type workerAnswer struct {
	worker string
	answer *upstreamAnswer
	err    error
}

// askEach sends one request to every available worker of the pool at once,
// and returns their answers in pool order. An unavailable worker is not
// asked: its answer is an error.
func askEach(r *http.Request, next caddyhttp.Handler, pool []*reverseproxy.Upstream, method, path, rawQuery string) []workerAnswer {
	answers := make([]workerAnswer, len(pool))
	var wg sync.WaitGroup
	for i, u := range pool {
		answers[i].worker = u.Dial
		if !u.Available() {
			answers[i].err = caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("worker %s is unavailable", u.Dial))
			continue
		}
		sub, _ := withRoute(r, u.Dial, false)
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i].answer, answers[i].err = ask(sub, next, method, path, rawQuery, nil)
		}()
	}
	wg.Wait()
	return answers
}

// serveOwn sends a request of the handler's own through next. reverse_proxy
// aborts a response that broke off mid-body by panicking with
// http.ErrAbortHandler, which net/http recovers for the client's request; on
// the handler's own requests, some on goroutines of their own, that panic
// must end the request, not the process.
func serveOwn(next caddyhttp.Handler, w http.ResponseWriter, r *http.Request) (err error) {
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

// askError is a request of the handler's own that failed; it keeps the
// proxy's status for failureStatus and reads without Caddy's error ids.
type askError struct {
	op  string
	err error
}

func (e askError) Error() string { return e.op + ": " + cause(e.err) }
func (e askError) Unwrap() error { return e.err }

// cause is what went wrong, in words: a Caddy handler error without its
// request id and trace.
func cause(err error) string {
	var he caddyhttp.HandlerError
	if errors.As(err, &he) {
		if he.Err != nil {
			return he.Err.Error()
		}
		return http.StatusText(he.StatusCode)
	}
	return err.Error()
}

// setBody replaces a request's body with b and keeps its length headers true.
func setBody(r *http.Request, b []byte) {
	r.Body = io.NopCloser(bytes.NewReader(b))
	r.ContentLength = int64(len(b))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	r.Header.Set("Content-Length", strconv.Itoa(len(b)))
}

// failureStatus is the status to answer with when askUpstream failed.
func failureStatus(err error) int {
	var he caddyhttp.HandlerError
	if errors.As(err, &he) && he.StatusCode >= 400 {
		return he.StatusCode
	}
	return http.StatusBadGateway
}
