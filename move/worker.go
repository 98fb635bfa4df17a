package move

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Workers asks workers directly, not through reverse_proxy: a move runs in
// the background, for the admin API, with no client request to carry. Its
// requests carry the module's own credentials.
type Workers struct {
	// Client sends the requests; when nil, a client whose requests time
	// out after requestTimeout.
	Client *http.Client
	// Authorization is the Authorization header of every request, if set
	// (the workers' password, as the health checks send it).
	Authorization string
	// Scheme is "http" or "https"; "http" when empty.
	Scheme string
}

// requestTimeout bounds one request to a worker: a worker that takes a
// connection and never answers must not hold a move, and with it the
// session's requests, for ever.
const requestTimeout = 2 * time.Minute

var defaultClient = &http.Client{Timeout: requestTimeout}

// maxAnswer bounds what a worker's answer may hold: a history is the
// largest, a session with thousands of messages a few MB.
const maxAnswer = 512 << 20

// Do sends one request to worker (its dial address, host:port) and returns
// the status and body of the answer.
func (ws Workers) Do(ctx context.Context, worker, method, path string, query url.Values, body []byte) (int, []byte, error) {
	scheme := ws.Scheme
	if scheme == "" {
		scheme = "http"
	}
	u := url.URL{Scheme: scheme, Host: worker, Path: path, RawQuery: query.Encode()}
	var reader io.Reader
	if body != nil {
		reader = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), reader)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if ws.Authorization != "" {
		req.Header.Set("Authorization", ws.Authorization)
	}
	client := ws.Client
	if client == nil {
		client = defaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s on %s: %w", method, path, worker, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s on %s: reading the answer: %w", method, path, worker, err)
	}
	if len(raw) > maxAnswer {
		return 0, nil, fmt.Errorf("%s %s on %s: the answer is over %d bytes", method, path, worker, maxAnswer)
	}
	return resp.StatusCode, raw, nil
}

// StatusError is a worker's answer a move cannot go on from.
type StatusError struct {
	Worker, Op string
	Status     int
	Body       string
}

func (e StatusError) Error() string {
	body := strings.TrimSpace(e.Body)
	if len(body) > 300 {
		body = body[:300] + "…"
	}
	return fmt.Sprintf("%s on %s answered %d %s", e.Op, e.Worker, e.Status, body)
}

// ask is Do that takes only a 2xx answer.
func (ws Workers) ask(ctx context.Context, worker, method, path string, query url.Values, body []byte) ([]byte, error) {
	status, raw, err := ws.Do(ctx, worker, method, path, query, body)
	if err != nil {
		return nil, err
	}
	if status < 200 || status > 299 {
		return nil, StatusError{Worker: worker, Op: method + " " + path, Status: status, Body: string(raw)}
	}
	return raw, nil
}
