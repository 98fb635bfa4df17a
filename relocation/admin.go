package relocation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/caddyserver/caddy/v2"

	"github.com/sessionid/caddy-sessionid/internal/moving"
	"github.com/sessionid/caddy-sessionid/move"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI is the session_ids part of Caddy's admin API:
//
//	POST /session_ids/move      {"session": id, "to": "host:port"}: move a session
//	POST /session_ids/drain     {"worker": "host:port"}: move every session off a worker
//	GET  /session_ids/drain?worker=host:port: the drain's progress
//	POST /session_ids/undrain   {"worker": "host:port"}: place new sessions on it again
//	GET  /session_ids/workers: each worker, healthy, draining, with its session count
//	POST /session_ids/rehome    {"worker": "host:port"}: make a lost worker's sessions again elsewhere, from their journals
//
// Each takes an optional "namespace" (in the body, or the query for GETs)
// when several session_ids handlers are configured.
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.session_ids",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes returns the admin routes.
func (adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/session_ids/move", Handler: caddy.AdminHandlerFunc(handleMove)},
		{Pattern: "/session_ids/drain", Handler: caddy.AdminHandlerFunc(handleDrain)},
		{Pattern: "/session_ids/undrain", Handler: caddy.AdminHandlerFunc(handleUndrain)},
		{Pattern: "/session_ids/workers", Handler: caddy.AdminHandlerFunc(handleWorkers)},
		{Pattern: "/session_ids/rehome", Handler: caddy.AdminHandlerFunc(handleRehome)},
	}
}

type request struct {
	Namespace string `json:"namespace"`
	Session   string `json:"session"`
	To        string `json:"to"`
	Worker    string `json:"worker"`
}

func decode(r *http.Request) (request, error) {
	var req request
	if err := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20)).Decode(&req); err != nil {
		return req, caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("the body must be a JSON object: %w", err)}
	}
	return req, nil
}

// apiError turns an error of this package into the admin API's: its own
// status, 502 for a worker that failed or could not be reached, 504 for a
// move out of time, 500 for the rest (the storage).
func apiError(err error) error {
	var e Error
	var refused move.StatusError
	var unreachable *url.Error
	switch {
	case errors.As(err, &e):
		return caddy.APIError{HTTPStatus: e.Status, Err: e}
	case errors.As(err, &refused), errors.As(err, &unreachable):
		return caddy.APIError{HTTPStatus: http.StatusBadGateway, Err: err}
	case errors.Is(err, context.DeadlineExceeded):
		return caddy.APIError{HTTPStatus: http.StatusGatewayTimeout, Err: err}
	}
	return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
}

func handleMove(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: errors.New("POST a move")}
	}
	req, err := decode(r)
	if err != nil {
		return err
	}
	if req.Session == "" || req.To == "" {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New(`a move needs "session" and "to"`)}
	}
	rl, err := current(req.Namespace)
	if err != nil {
		return apiError(err)
	}
	moved, err := rl.Move(r.Context(), req.Session, req.To, "")
	if err != nil {
		return apiError(err)
	}
	writeJSON(w, http.StatusOK, moved)
	return nil
}

func handleDrain(w http.ResponseWriter, r *http.Request) error {
	switch r.Method {
	case http.MethodGet:
		q := r.URL.Query()
		d, err := DrainOf(q.Get("namespace"), q.Get("worker"))
		if err != nil {
			return apiError(err)
		}
		w.Header().Set("Content-Type", "application/json")
		_, err = w.Write(d.Snapshot())
		return err
	case http.MethodPost:
		req, err := decode(r)
		if err != nil {
			return err
		}
		if req.Worker == "" {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New(`a drain needs "worker"`)}
		}
		d, err := StartDrain(r.Context(), req.Namespace, req.Worker)
		if err != nil {
			return apiError(err)
		}
		d.Wait(r.Context()) // the drain goes on if the caller leaves
		w.Header().Set("Content-Type", "application/json")
		_, err = w.Write(d.Snapshot())
		return err
	}
	return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: errors.New("GET or POST a drain")}
}

func handleUndrain(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: errors.New("POST an undrain")}
	}
	req, err := decode(r)
	if err != nil {
		return err
	}
	if req.Worker == "" {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New(`an undrain needs "worker"`)}
	}
	if err := Undrain(r.Context(), req.Namespace, req.Worker); err != nil {
		return apiError(err)
	}
	writeJSON(w, http.StatusOK, map[string]any{"worker": req.Worker, "draining": false})
	return nil
}

func handleRehome(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: errors.New("POST a re-home")}
	}
	req, err := decode(r)
	if err != nil {
		return err
	}
	if req.Worker == "" {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New(`a re-home needs "worker"`)}
	}
	rl, err := current(req.Namespace)
	if err != nil {
		return apiError(err)
	}
	rehomed, err := rl.Rehome(context.WithoutCancel(r.Context()), req.Worker) // not stopped by its caller leaving
	if err != nil {
		return apiError(err)
	}
	writeJSON(w, http.StatusOK, rehomed)
	return nil
}

// worker is a row of GET /session_ids/workers.
type worker struct {
	Worker   string `json:"worker"`
	Healthy  bool   `json:"healthy"`
	Draining bool   `json:"draining"`
	Sessions *int   `json:"sessions"` // null when the worker could not be asked
	// NotRehomable are the sessions on it whose journal passed its limit
	// (with journal on): if the worker is lost, they are lost with it.
	NotRehomable []string `json:"not_rehomable,omitempty"`
}

func handleWorkers(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: errors.New("GET the workers")}
	}
	rl, err := current(r.URL.Query().Get("namespace"))
	if err != nil {
		return apiError(err)
	}
	state := moving.Of(rl.Namespace)
	out := []worker{}
	for _, u := range rl.Fleet.Workers() {
		row := worker{Worker: u.Dial, Healthy: u.Available(), Draining: state.Draining(u.Dial)}
		if status, raw, err := rl.Workers.Do(r.Context(), u.Dial, http.MethodGet, "/experimental/session", url.Values{"archived": {"true"}, "limit": {"1000000"}}, nil); err == nil && status == http.StatusOK {
			var listed []json.RawMessage
			if json.Unmarshal(raw, &listed) == nil {
				n := len(listed)
				row.Sessions = &n
			}
		}
		if rl.Journal != nil {
			if ids, err := rl.Journal.Unrehomable(r.Context(), u.Dial); err == nil {
				for _, id := range ids {
					clientID, _ := rl.clientIDOf(r.Context(), id)
					row.NotRehomable = append(row.NotRehomable, clientID)
				}
			}
		}
		out = append(out, row)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// Interface guards
var _ caddy.AdminRouter = adminAPI{}
