package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/sessionid/caddy-sessionid/idmap"
)

// sseSetup is the synthetic upstream with the configurations in front of it
// whose event latency is compared: directly, plain reverse_proxy, and the
// module with the events' session id mapped.
type sseSetup struct {
	stub   *stub
	u      *upstream
	client string // the mapped session's client id
	real   string // and its real id, which the events carry

	// fleet is the module (mapping mode, lb_policy session_ids) in front of
	// fleetSize stubs that each send their share of the events, so that the
	// merged stream's client gets the same events at the same cadence as
	// through one stub; nil when the fleet is skipped.
	fleet *upstream

	samples map[string][]sseSample // via (or sseFleet) -> one per repeat
}

// sseFleet names the merged stream's samples.
var sseFleet = fmt.Sprintf("%s, %d workers (merged)", viaMapping, fleetSize)

// goalFleetAddedP50 is the most an event may gain through the merged stream
// of a fleet over plain reverse_proxy streaming from one worker.
const goalFleetAddedP50 = 500 * time.Microsecond

// sseSample is the latency distribution of one stream.
type sseSample struct {
	p50, p90, p99, max time.Duration
	events             int
}

// startSSE starts Caddy configurations in front of the stub, the mapping one
// on a storage that already maps client to real.
func (m *Main) startSSE(ctx context.Context, st *stub) (*sseSetup, error) {
	s := &sseSetup{stub: st, client: m.newID("sse"), real: idmap.NewID("ses", true), samples: map[string][]sseSample{}}
	s.u = &upstream{name: "stub", addr: st.Addr}
	data := filepath.Join(m.caddyData(caddyName(s.u.name, viaMapping)), "caddy")
	store := idmap.NewStore(&certmagic.FileStorage{Path: data}, namespace)
	if err := store.Save(ctx, idmap.Mapping{ClientID: s.client, RealID: s.real, Created: time.Now().UTC()}); err != nil {
		return nil, err
	}
	data = filepath.Join(m.caddyData(caddyName(s.u.name, viaEventsOff)), "caddy")
	store = idmap.NewStore(&certmagic.FileStorage{Path: data}, namespace)
	if err := store.Save(ctx, idmap.Mapping{ClientID: s.client, RealID: s.real, Created: time.Now().UTC()}); err != nil {
		return nil, err
	}
	if err := m.withCaddys(ctx, s.u, viaPlain, viaEventsOff, viaMapping); err != nil {
		return nil, err
	}
	if m.Skip["fleet"] {
		return s, nil
	}
	var workers []string
	for i := range fleetSize {
		w, err := startStubOf(st.epoch, fleetSize, i)
		if err != nil {
			return nil, err
		}
		m.stubs = append(m.stubs, w)
		workers = append(workers, w.Addr)
	}
	s.fleet = &upstream{name: fmt.Sprintf("stub×%d", fleetSize), addr: strings.Join(workers, " "), fleet: true}
	data = filepath.Join(m.caddyData(caddyName(s.fleet.name, viaMapping)), "caddy")
	store = idmap.NewStore(&certmagic.FileStorage{Path: data}, namespace)
	if err := store.Save(ctx, idmap.Mapping{ClientID: s.client, RealID: s.real, Created: time.Now().UTC()}); err != nil {
		return nil, err
	}
	if err := m.withCaddys(ctx, s.fleet, viaMapping); err != nil {
		return nil, err
	}
	return s, nil
}

// measureSSE reads one stream through each configuration, in order.
func (m *Main) measureSSE(ctx context.Context, s *sseSetup, run int) error {
	for _, via := range s.u.vias {
		want, not := s.real, ""
		if via == viaMapping || via == viaEventsOff {
			want, not = s.client, s.real
		}
		lat, err := m.readStream(ctx, s, s.u.base[via], want, not)
		if err != nil {
			return fmt.Errorf("event stream via %s: %w", via, err)
		}
		sample := sseSample{events: len(lat), p50: percentile(lat, 50), p90: percentile(lat, 90), p99: percentile(lat, 99), max: percentile(lat, 100)}
		s.samples[via] = append(s.samples[via], sample)
		logf("run %d/%d  stub     GET /event (%d events)                   %-20s p50 %6.3f ms  p90 %6.3f ms  p99 %6.3f ms",
			run, m.Config.Runs, sample.events, via, ms(sample.p50), ms(sample.p90), ms(sample.p99))
	}
	if s.fleet == nil {
		return nil
	}
	lat, err := m.readStream(ctx, s, s.fleet.base[viaMapping], s.client, s.real)
	if err != nil {
		return fmt.Errorf("event stream via %s: %w", sseFleet, err)
	}
	sample := sseSample{events: len(lat), p50: percentile(lat, 50), p90: percentile(lat, 90), p99: percentile(lat, 99), max: percentile(lat, 100)}
	s.samples[sseFleet] = append(s.samples[sseFleet], sample)
	logf("run %d/%d  %s GET /event (%d events)                   %s p50 %6.3f ms  p90 %6.3f ms  p99 %6.3f ms",
		run, m.Config.Runs, s.fleet.name, sample.events, sseFleet, ms(sample.p50), ms(sample.p90), ms(sample.p99))
	return nil
}

// readStream asks the stub, at base, for m.Config.SSEEvents events about the
// real id and returns each event's latency: the stub's clock when its line
// was read minus the time the stub stamped into it before writing it. Every
// event must name want and not name not (the real id, once rewritten).
func (m *Main) readStream(ctx context.Context, s *sseSetup, base, want, not string) ([]time.Duration, error) {
	n, interval := m.Config.SSEEvents, m.Config.SSEInterval
	ctx, cancel := context.WithTimeout(ctx, streamStart+time.Duration(n)*interval+time.Duration(n)*time.Millisecond+30*time.Second)
	defer cancel()
	// Every worker of a fleet starts the schedule at the same moment.
	start := s.stub.since() + int64(streamStart)
	q := url.Values{"n": {strconv.Itoa(n)}, "interval": {interval.String()}, "id": {s.real}, "start": {strconv.FormatInt(start, 10)}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/event?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	// No Accept-Encoding: every configuration gets the same identity stream.
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s", resp.Status)
	}
	sentKey, wantB, notB := []byte(`"sent":`), []byte(want), []byte(not)
	lat := make([]time.Duration, 0, n)
	br := bufio.NewReaderSize(resp.Body, 64<<10)
	for len(lat) < n {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return nil, fmt.Errorf("after %d events: %w", len(lat), err)
		}
		now := s.stub.since()
		i := bytes.Index(line, sentKey)
		if i < 0 {
			continue // server.connected, blank lines
		}
		digits := line[i+len(sentKey):]
		end := bytes.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' })
		sent, err := strconv.ParseInt(string(digits[:max(end, 0)]), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("event without a send time: %q", line)
		}
		if !bytes.Contains(line, wantB) || len(notB) > 0 && bytes.Contains(line, notB) {
			return nil, fmt.Errorf("event %d does not carry %s (only): %q", len(lat), want, line)
		}
		lat = append(lat, time.Duration(now-sent))
	}
	return lat, nil
}
