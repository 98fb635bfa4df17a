package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/sessionid/caddy-sessionid/idmap"
)

// fixtures are the sessions the requests of one upstream name.
type fixtures struct {
	unmapped string              // made at the upstream without an id
	client   string              // made through the mapping configuration under this id
	real     string              // the upstream's id of client
	replay   map[string][]string // via -> ids made through it, for replays
}

// httpClient is for fixtures and checks, not for measurements.
var httpClient = &http.Client{Timeout: 30 * time.Second}

// postSession creates a session at base with body and returns its id.
func postSession(ctx context.Context, base string, body map[string]any) (string, error) {
	raw, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/session", bytes.NewReader(raw))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("POST %s/session %s: %s: %s", base, raw, resp.Status, answer)
	}
	var session struct{ ID string }
	if err := json.Unmarshal(answer, &session); err != nil || session.ID == "" {
		return "", fmt.Errorf("POST %s/session: no session id in %s", base, answer)
	}
	return session.ID, nil
}

// getOK checks that GET url answers 200 with want in the body.
func getOK(ctx context.Context, url, want string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(want)) {
		return fmt.Errorf("GET %s: %s, want 200 with %s: %.300s", url, resp.Status, want, body)
	}
	return nil
}

// makeFixtures creates the sessions u's measurements use: an unmapped one,
// a mapped one, and replays ids per module configuration, and checks each
// configuration answers for them.
func (m *Main) makeFixtures(ctx context.Context, u *upstream) (*fixtures, error) {
	f := &fixtures{replay: map[string][]string{}}
	var err error
	if f.unmapped, err = postSession(ctx, u.base[viaUpstream], map[string]any{"title": "bench unmapped"}); err != nil {
		return nil, err
	}
	if mapping, ok := u.caddys[viaMapping]; ok {
		f.client = m.newID("mapped")
		id, err := postSession(ctx, mapping.URL, map[string]any{"id": f.client, "title": "bench mapped"})
		if err != nil {
			return nil, err
		}
		if id != f.client {
			return nil, fmt.Errorf("create through %s answered id %s, want %s", viaMapping, id, f.client)
		}
		mp, err := idmap.NewStore(mapping.storage(), namespace).Load(ctx, f.client)
		if err != nil {
			return nil, fmt.Errorf("read the mapping of %s: %w", f.client, err)
		}
		f.real = mp.RealID
	}
	for _, via := range []string{viaMapping, viaDirect} {
		if _, ok := u.caddys[via]; !ok {
			continue
		}
		for range m.Config.Connections {
			id := m.newID("replay")
			if _, err := postSession(ctx, u.base[via], map[string]any{"id": id, "title": "bench"}); err != nil {
				return nil, err
			}
			f.replay[via] = append(f.replay[via], id)
		}
	}
	// Every configuration must answer for the ids it will be asked about.
	for _, via := range u.vias {
		if err := getOK(ctx, u.base[via]+"/session/"+f.unmapped, f.unmapped); err != nil {
			return nil, err
		}
	}
	if f.client != "" {
		if err := getOK(ctx, u.base[viaMapping]+"/session/"+f.client, f.client); err != nil {
			return nil, err
		}
		if err := getOK(ctx, u.base[viaPlain]+"/session/"+f.real, f.real); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// namespace is Caddyfile.example's default mapping namespace.
const namespace = "default"

// newID returns a client id unique to this run: ses_<run><kind><n>.
func (m *Main) newID(kind string) string {
	m.idSeq++
	return fmt.Sprintf("ses_%s_%s%d", m.nonce, kind, m.idSeq)
}

// newPrefix returns an id prefix unique to this run for one wrk run of
// create_id.lua, which adds _<thread>_<n>.
func (m *Main) newPrefix() string {
	m.idSeq++
	return fmt.Sprintf("%s_c%d", m.nonce, m.idSeq)
}
