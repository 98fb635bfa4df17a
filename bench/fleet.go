package main

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/sessionid/caddy-sessionid/idmap"
)

// fleetSize is how many workers the fleet measurements put behind one Caddy.
const fleetSize = 3

// goalFleetMapped is the least req/s of GET /session/{client id} through
// lb_policy session_ids over the fleet, as a share of plain reverse_proxy's
// over the same workers.
const goalFleetMapped = 0.95

// fleetFixtures are the sessions the fleet's requests name, by
// configuration. Each session was created through the module (so it lives on
// the worker the fallback chose, and its worker is recorded), and then under
// the same upstream id on every other worker directly, so that plain
// reverse_proxy, which sends each request to any worker, finds it wherever
// the request lands and gets the same answer.
type fleetFixtures struct {
	ids    map[string][]string // via -> the ids its requests name
	spread map[string][]int    // via -> sessions per worker (the module's placement), in worker order
}

// startFleet starts fleetSize native servers and the Caddy configurations in
// front of all of them: plain reverse_proxy (bench/Caddyfile.plain, random
// balancing) and the module with lb_policy session_ids (Caddyfile.example)
// in mapping and direct mode.
func (m *Main) startFleet(ctx context.Context) (*upstream, []string, error) {
	var workers []string
	for i := range fleetSize {
		w, err := m.startNativeNamed(ctx, fmt.Sprintf("native-w%d", i+1))
		if err != nil {
			return nil, nil, err
		}
		workers = append(workers, w.addr)
	}
	u := &upstream{name: fmt.Sprintf("native×%d", fleetSize), addr: strings.Join(workers, " "), fleet: true}
	if err := m.withCaddys(ctx, u, viaPlain, viaMapping, viaDirect); err != nil {
		return nil, nil, err
	}
	return u, workers, nil
}

// makeFleetFixtures creates m.Config.Connections sessions through each
// module configuration (mapping: client ids, whose upstream ids plain
// reverse_proxy asks for; direct: ids the workers take as they are), copies
// each to every worker that does not hold it, and checks every
// configuration answers 200 for each of its ids.
func (m *Main) makeFleetFixtures(ctx context.Context, u *upstream, workers []string) (*fleetFixtures, error) {
	f := &fleetFixtures{ids: map[string][]string{}, spread: map[string][]int{}}
	const title = "bench fleet"
	for _, via := range []string{viaMapping, viaDirect} {
		f.spread[via] = make([]int, len(workers))
		for range m.Config.Connections {
			client := m.newID("fleet")
			id, err := postSession(ctx, u.base[via], map[string]any{"id": client, "title": title})
			if err != nil {
				return nil, err
			}
			if id != client {
				return nil, fmt.Errorf("create through %s answered id %s, want %s", via, id, client)
			}
			upstreamID := client
			if via == viaMapping {
				mp, err := idmapStore(u.caddys[via]).Load(ctx, client)
				if err != nil {
					return nil, fmt.Errorf("read the mapping of %s: %w", client, err)
				}
				upstreamID = mp.RealID
				f.ids[viaPlain] = append(f.ids[viaPlain], upstreamID)
			}
			holder := -1
			for i, w := range workers {
				if status, err := getStatus(ctx, "http://"+w+"/session/"+upstreamID); err != nil {
					return nil, err
				} else if status == http.StatusOK {
					holder = i
				}
			}
			if holder < 0 {
				return nil, fmt.Errorf("session %s (%s) is on no worker", client, upstreamID)
			}
			f.spread[via][holder]++
			// The same session on the other workers: a create with the
			// holder's id and title (the native server takes ids).
			for i, w := range workers {
				if i == holder {
					continue
				}
				if id, err := postSession(ctx, "http://"+w, map[string]any{"id": upstreamID, "title": title}); err != nil {
					return nil, err
				} else if id != upstreamID {
					return nil, fmt.Errorf("worker %s made %s, want %s", w, id, upstreamID)
				}
			}
			f.ids[via] = append(f.ids[via], client)
		}
	}
	for _, via := range u.vias {
		for _, id := range f.ids[via] {
			if err := getOK(ctx, u.base[via]+"/session/"+id, id); err != nil {
				return nil, err
			}
		}
	}
	return f, nil
}

// getStatus is the status of GET url.
func getStatus(ctx context.Context, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// fleetScenario is GET /session/{id} over the fleet's ids: plain
// reverse_proxy (each request to a random worker, all of which hold the
// session) against the module routing each request to the session's worker.
func fleetScenario(u *upstream, f *fleetFixtures) *scenario {
	sc := &scenario{upstream: u.name, title: "GET /session/{id} over a fleet: plain balancing vs lb_policy session_ids"}
	n := len(f.ids[viaPlain])
	requests := map[string]string{
		viaPlain:   fmt.Sprintf("GET /session/{real id} (%d ids, each on every worker)", n),
		viaMapping: fmt.Sprintf("GET /session/{client id} (%d ids)", n),
		viaDirect:  fmt.Sprintf("GET /session/{id} (%d ids)", n),
	}
	for _, via := range u.vias {
		ids := slices.Clone(f.ids[via])
		t := &target{via: via, request: requests[via], url: u.base[via], script: "get_ids",
			args: func() []string { return ids }, admin: u.admin(via)}
		if via == viaMapping {
			t.goal = goalFleetMapped
		}
		sc.add(t)
	}
	return sc
}

// spreadText describes how a module configuration's sessions are spread
// over the workers, e.g. "11/10/11".
func spreadText(counts []int) string {
	parts := make([]string, len(counts))
	for i, c := range counts {
		parts[i] = fmt.Sprint(c)
	}
	return strings.Join(parts, "/")
}

// idmapStore is the module's mapping store in a Caddy's storage.
func idmapStore(c *caddyServer) *idmap.Store { return idmap.NewStore(c.storage(), namespace) }
