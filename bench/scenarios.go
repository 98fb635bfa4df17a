package main

import (
	"context"
	"fmt"
	"time"
)

// target is one wrk measurement of a scenario: one request, one way through.
type target struct {
	via     string
	request string          // what is sent, for the report
	url     string          // what wrk requests (its path too, unless the script sets one)
	script  string          // a script of lua/ by name
	args    func() []string // the script's arguments, asked anew for every wrk run
	goal    float64         // the least acceptable ratio to the baseline; 0 for none
	admin   string          // the Caddy's admin endpoint, for profiles; "" for none

	samples []wrkResult // one per repeat
	ratios  []float64   // req/s over the baseline's in the same repeat
}

// scenario is a group of targets measured one after the other in each repeat
// and compared with one of them, the baseline (plain reverse_proxy).
type scenario struct {
	upstream string
	title    string
	targets  []*target
	baseline *target
}

// Ratio targets, from the design: pass-through of ids the module does not
// know should cost at most 3 %, requests whose id is rewritten at most 10 %.
const (
	goalUnmapped = 0.97
	goalMapped   = 0.90
)

// getScenarios are GET /session/{id} for an unmapped id through every
// configuration, and for a mapped one: by its real id directly and through
// plain reverse_proxy, by its client id through the module.
func getScenarios(u *upstream, f *fixtures) []*scenario {
	unmapped := &scenario{upstream: u.name, title: "GET /session/{id}, id not mapped (pass-through)"}
	for _, via := range u.vias {
		t := &target{via: via, request: "GET /session/{unmapped}", url: u.base[via] + "/session/" + f.unmapped, script: "report", admin: u.admin(via)}
		if via == viaMapping || via == viaDirect {
			t.goal = goalUnmapped
		}
		unmapped.add(t)
	}
	scs := []*scenario{unmapped}
	if f.client != "" {
		mapped := &scenario{upstream: u.name, title: "GET /session/{id}, id mapped (rewritten both ways)"}
		mapped.add(&target{via: viaUpstream, request: "GET /session/{real id}", url: u.base[viaUpstream] + "/session/" + f.real, script: "report"})
		mapped.add(&target{via: viaPlain, request: "GET /session/{real id}", url: u.base[viaPlain] + "/session/" + f.real, script: "report",
			admin: u.admin(viaPlain)})
		mapped.add(&target{via: viaMapping, request: "GET /session/{client id}", url: u.base[viaMapping] + "/session/" + f.client, script: "report",
			goal: goalMapped, admin: u.admin(viaMapping)})
		scs = append(scs, mapped)
	}
	return scs
}

// createScenario is the upstream's own create (no id) directly and through
// plain reverse_proxy, against creates with a new id each and replays of
// existing ids through each module configuration.
func (m *Main) createScenario(u *upstream, f *fixtures) *scenario {
	sc := &scenario{upstream: u.name, title: "POST /session: the upstream's create vs create with id and replay"}
	for _, via := range []string{viaUpstream, viaPlain} {
		sc.add(&target{via: via, request: "POST /session (no id)", url: u.base[via] + "/session", script: "create_anon", admin: u.admin(via)})
	}
	for _, via := range []string{viaMapping, viaDirect} {
		if _, ok := u.caddys[via]; !ok {
			continue
		}
		admin := u.admin(via)
		sc.add(&target{via: via, request: "POST /session {new id}", url: u.base[via] + "/session", script: "create_id",
			args: func() []string { return []string{m.newPrefix()} }, admin: admin})
		ids := f.replay[via]
		sc.add(&target{via: via, request: "POST /session {existing id} (replay)", url: u.base[via] + "/session", script: "replay",
			args: func() []string { return ids }, admin: admin})
	}
	return sc
}

func (sc *scenario) add(t *target) {
	sc.targets = append(sc.targets, t)
	if t.via == viaPlain && sc.baseline == nil {
		sc.baseline = t
	}
}

// warmUp runs every target once, unrecorded: connection pools, caches and
// opencode's JIT start warm in the first repeat.
func (m *Main) warmUp(ctx context.Context, scs []*scenario) error {
	if m.Config.Warmup == 0 {
		return nil
	}
	for _, sc := range scs {
		for _, t := range sc.targets {
			if _, err := m.runTarget(ctx, t, m.Config.Warmup); err != nil {
				return err
			}
		}
	}
	return nil
}

// measure runs each scenario's targets once, in order, and records them.
func (m *Main) measure(ctx context.Context, scs []*scenario, run int) error {
	for _, sc := range scs {
		for _, t := range sc.targets {
			profiled := m.profile(ctx, t.admin, fmt.Sprintf("%s-%s-%s-run%d", sc.upstream, t.request, shortName(t.via), run))
			r, err := m.runTarget(ctx, t, m.Config.Duration)
			if perr := profiled(); err == nil && perr != nil {
				err = perr
			}
			if err != nil {
				return err
			}
			t.samples = append(t.samples, r)
			logf("run %d/%d  %-8s %-40s %-20s %8.0f req/s  p50 %6.2f ms  p99 %6.2f ms  errors %d",
				run, m.Config.Runs, sc.upstream, t.request, t.via, r.RPS(), r.P50US/1000, r.P99US/1000, r.Errors())
		}
		if sc.baseline == nil {
			continue
		}
		base := sc.baseline.samples[len(sc.baseline.samples)-1].RPS()
		for _, t := range sc.targets {
			if base > 0 {
				t.ratios = append(t.ratios, t.samples[len(t.samples)-1].RPS()/base)
			}
		}
	}
	return nil
}

func (m *Main) runTarget(ctx context.Context, t *target, d time.Duration) (wrkResult, error) {
	var args []string
	if t.args != nil {
		args = t.args()
	}
	r, err := m.runWrk(ctx, t.url, t.script, args, d)
	if err != nil {
		return r, err
	}
	if r.Requests == 0 {
		return r, fmt.Errorf("wrk %s %s: no request completed", t.request, t.url)
	}
	return r, nil
}
