package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"strings"
	"time"
)

// Main is one run of the bench: ParseFlags, Run, Close.
type Main struct {
	Config

	dir     string            // the work folder: binaries, data, logs
	bin     *binaries         // the programs it runs
	scripts map[string]string // wrk's scripts by name
	nonce   string            // makes this run's ids unique
	idSeq   int
	procs   []*process // every child, stopped by Close
	stub    *stub
	stubs   []*stub // the fleet's, sharing stub's clock

	results results
}

// results is what the report is made of.
type results struct {
	machine    string
	goBench    []*goBench
	fleetBench []*goBench // BenchmarkFleetRouting
	scenarios  []*scenario
	fleet      *fleetFixtures // the fleet's sessions, for the report
	sse        *sseSetup
	rss        *rssResult
	moves      []*moveResult
	journal    *journalResult
	took       time.Duration
}

// NewMain returns a Main with its defaults; ParseFlags sets them.
func NewMain() *Main { return &Main{} }

// Run measures everything not skipped and prints the report on stdout.
func (m *Main) Run(ctx context.Context) error {
	var err error
	if m.dir, err = os.MkdirTemp("", "sessionid-bench-"); err != nil {
		return err
	}
	m.nonce = strings.ToLower(rand.Text()[:6])
	m.results.machine = machine()
	logf("work folder %s; %s", m.dir, m.results.machine)
	if m.bin, err = findBinaries(ctx, m.dir, m.Config.Skip); err != nil {
		return err
	}
	if m.scripts, err = wrkScripts(m.dir); err != nil {
		return err
	}
	if m.Config.Profile != "" {
		if err := os.MkdirAll(m.Config.Profile, 0o755); err != nil {
			return err
		}
	}
	logf("caddy: %s", m.bin.caddyWas)

	// The single-core benchmarks first, while nothing else of the run is up.
	if !m.Skip["gobench"] {
		if m.results.goBench, err = m.runGoBench(ctx); err != nil {
			return err
		}
		if !m.Skip["fleet"] {
			if m.results.fleetBench, err = m.runFleetBench(ctx); err != nil {
				return err
			}
		}
	}
	if m.stub, err = startStub(); err != nil {
		return err
	}
	if err := m.setUpRequests(ctx); err != nil {
		return err
	}
	if !m.Skip["sse"] {
		if m.results.sse, err = m.startSSE(ctx, m.stub); err != nil {
			return err
		}
	}

	logf("measuring; expect about %v more", m.estimate().Round(time.Minute/6))
	if err := m.warmUp(ctx, m.results.scenarios); err != nil {
		return err
	}
	for run := 1; run <= m.Config.Runs; run++ {
		if err := m.measure(ctx, m.results.scenarios, run); err != nil {
			return err
		}
		if m.results.sse != nil {
			if err := m.measureSSE(ctx, m.results.sse, run); err != nil {
				return err
			}
		}
	}
	if !m.Skip["rss"] {
		if m.results.rss, err = m.measureRSS(ctx, m.stub); err != nil {
			return err
		}
	}
	if !m.Skip["move"] {
		if m.results.moves, err = m.measureMoves(ctx); err != nil {
			return err
		}
	}
	if !m.Skip["journal"] {
		if m.results.journal, err = m.measureJournal(ctx); err != nil {
			return err
		}
	}
	m.results.took = time.Since(started)

	report := m.report()
	fmt.Print(report)
	if m.Config.Out != "" {
		return os.WriteFile(m.Config.Out, []byte(report), 0o644)
	}
	return nil
}

// setUpRequests starts the upstreams of the wrk measurements with their Caddy
// configurations, makes their fixtures and lists the scenarios.
func (m *Main) setUpRequests(ctx context.Context) error {
	if m.Skip["get"] && m.Skip["create"] {
		return nil
	}
	type start struct {
		name  string
		run   func(context.Context) (*upstream, error)
		confs []string
	}
	var starts []start
	if !m.Skip["native"] {
		starts = append(starts, start{"native", m.startNative, []string{viaPlain, viaMapping, viaDirect}})
	}
	if !m.Skip["opencode"] {
		starts = append(starts, start{"opencode", m.startOpencode, []string{viaPlain, viaMapping}})
	}
	var gets, creates []*scenario
	for _, s := range starts {
		u, err := s.run(ctx)
		if err != nil {
			return err
		}
		if err := m.withCaddys(ctx, u, s.confs...); err != nil {
			return err
		}
		f, err := m.makeFixtures(ctx, u)
		if err != nil {
			return fmt.Errorf("%s fixtures: %w", u.name, err)
		}
		logf("%s at %s: fixtures made (unmapped %s, mapped %s -> %s)", u.name, u.addr, f.unmapped, f.client, f.real)
		if !m.Skip["get"] {
			gets = append(gets, getScenarios(u, f)...)
		}
		if !m.Skip["create"] {
			creates = append(creates, m.createScenario(u, f))
		}
	}
	if !m.Skip["get"] && !m.Skip["native"] && !m.Skip["fleet"] {
		u, workers, err := m.startFleet(ctx)
		if err != nil {
			return err
		}
		f, err := m.makeFleetFixtures(ctx, u, workers)
		if err != nil {
			return fmt.Errorf("fleet fixtures: %w", err)
		}
		logf("%s at %s: fixtures made (sessions per worker: mapping %s, direct %s)", u.name, u.addr,
			spreadText(f.spread[viaMapping]), spreadText(f.spread[viaDirect]))
		m.results.fleet = f
		gets = append(gets, fleetScenario(u, f))
	}
	// Creates last in each repeat: they grow the upstreams' data.
	m.results.scenarios = append(gets, creates...)
	return nil
}

// Close stops every child, newest first, and removes the work folder unless
// asked to keep it.
func (m *Main) Close() {
	for i := len(m.procs) - 1; i >= 0; i-- {
		m.procs[i].stop()
	}
	if m.stub != nil {
		m.stub.close()
	}
	for _, s := range m.stubs {
		s.close()
	}
	if m.dir == "" {
		return
	}
	if m.Config.Keep {
		logf("kept the work folder %s", m.dir)
		return
	}
	_ = os.RemoveAll(m.dir)
}

// estimate is how long the measurements take from here, roughly.
func (m *Main) estimate() time.Duration {
	c := m.Config
	var targets int
	for _, sc := range m.results.scenarios {
		targets += len(sc.targets)
	}
	const perWrk = 100 * time.Millisecond // start and end of a wrk run
	d := time.Duration(targets) * (c.Warmup + perWrk)
	d += time.Duration(c.Runs*targets) * (c.Duration + perWrk)
	if m.results.sse != nil {
		stream := streamStart + time.Duration(c.SSEEvents)*c.SSEInterval*11/10
		streams := len(m.results.sse.u.vias)
		if m.results.sse.fleet != nil {
			streams++
		}
		d += time.Duration(c.Runs*streams) * stream
	}
	if !m.Skip["rss"] {
		// Seeding, then a lookup of every mapping through each Caddy.
		d += time.Duration(c.Mappings) * 600 * time.Microsecond
	}
	return d
}

// machine describes where the run happens, for the report.
func machine() string {
	load, _ := os.ReadFile("/proc/loadavg")
	fields := strings.Fields(string(load))
	if len(fields) > 3 {
		fields = fields[:3]
	}
	return fmt.Sprintf("%d CPUs, load average %s at start", numCPU(), strings.Join(fields, " "))
}
