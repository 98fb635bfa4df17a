package main

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Targets that are not ratios of req/s.
const (
	goalRewriteMBps = 500.0                  // rewriter throughput on one core
	goalAddedP50    = 200 * time.Microsecond // latency an event gains through the module
	goalRSS         = 50 << 20               // the module's Caddy with 100,000 mappings
)

// goalMappings is how many mappings goalRSS is stated for.
const goalMappings = 100_000

func numCPU() int { return runtime.NumCPU() }

// verdict tallies the targets as the report checks them.
type verdict struct{ met, missed []string }

func (v *verdict) check(name string, ok bool) string {
	if ok {
		v.met = append(v.met, name)
		return "met"
	}
	v.missed = append(v.missed, name)
	return "**missed**"
}

// report renders the results as markdown.
func (m *Main) report() string {
	var b strings.Builder
	var v verdict
	c, r := m.Config, m.results
	fmt.Fprintf(&b, "\n# session_ids benchmark\n\n")
	fmt.Fprintf(&b, "%s; %d repeat(s), medians over them; run took %v.\n", r.machine, c.Runs, r.took.Round(time.Second))
	fmt.Fprintf(&b, "One Caddy binary (%s) for every configuration: `session_ids` with Caddyfile.example, "+
		"plain `reverse_proxy` with bench/Caddyfile.plain (the same reverse_proxy settings).\n", m.bin.caddyWas)

	if len(r.goBench) > 0 {
		fmt.Fprintf(&b, "\n## Rewriter, one core (`go test -bench . -cpu 1 -benchtime %s ./idmap/`)\n\n", c.BenchTime)
		b.WriteString("| benchmark | MB/s | ns/op | target | result |\n|---|---:|---:|---|---|\n")
		for _, g := range r.goBench {
			mbps, target, result := "", "", ""
			if len(g.mbps) > 0 {
				mbps = fmt.Sprintf("%.0f", median(g.mbps))
			}
			// The target is for the rewriter itself; the Index variants add the
			// module's cache lookups and are shown for information.
			if (g.name == "RewriteJSON" || g.name == "RewriteSSE") && len(g.mbps) > 0 {
				target = fmt.Sprintf("≥ %.0f MB/s", goalRewriteMBps)
				result = v.check("rewriter "+g.name, median(g.mbps) >= goalRewriteMBps)
			}
			fmt.Fprintf(&b, "| %s | %s | %.0f | %s | %s |\n", g.name, mbps, median(g.nsPerOp), target, result)
		}
	}

	if len(r.fleetBench) > 0 {
		m.reportFleetBench(&b, &v)
	}

	if len(r.scenarios) > 0 {
		fmt.Fprintf(&b, "\n## Requests (`wrk -t%d -c%d -d%ds --latency`)\n\n", c.Threads, c.Connections, int(c.Duration.Seconds()))
		b.WriteString("Ratios are req/s over plain reverse_proxy's in the same repeat: the median of the repeats' ratios, " +
			"their range in brackets; configurations alternate within each repeat. Errors are failed requests " +
			"(status ≥ 400, socket errors, timeouts) over all repeats.\n\n")
		b.WriteString("| upstream | request | through | req/s | p50 ms | p99 ms | errors | vs plain | target | result |\n")
		b.WriteString("|---|---|---|---:|---:|---:|---:|---:|---|---|\n")
		for _, sc := range r.scenarios {
			for _, t := range sc.targets {
				var errs int64
				for _, s := range t.samples {
					errs += s.Errors()
				}
				ratio, target, result := "", "", ""
				if len(t.ratios) > 0 {
					ratio = fmt.Sprintf("%.2fx", median(t.ratios))
				}
				if len(t.ratios) > 1 && t != sc.baseline {
					ratio += fmt.Sprintf(" (%.2f–%.2f)", slices.Min(t.ratios), slices.Max(t.ratios))
				}
				if t.goal > 0 {
					target = fmt.Sprintf("≥ %.2fx", t.goal)
					result = v.check(fmt.Sprintf("%s %s via %s", sc.upstream, t.request, t.via), median(t.ratios) >= t.goal && errs == 0)
				}
				fmt.Fprintf(&b, "| %s | %s | %s | %.0f | %.2f | %.2f | %d | %s | %s | %s |\n", sc.upstream, t.request, t.via,
					medianOf(t.samples, wrkResult.RPS),
					medianOf(t.samples, func(s wrkResult) float64 { return s.P50US / 1000 }),
					medianOf(t.samples, func(s wrkResult) float64 { return s.P99US / 1000 }),
					errs, ratio, target, result)
			}
		}
		if f := r.fleet; f != nil {
			fmt.Fprintf(&b, "\nThe %s rows are %d native servers behind one Caddy. Each of the %d sessions was created through the module, "+
				"which placed it (random fallback; sessions per worker: mapping %s, direct %s), and then under the same upstream id on the other workers, "+
				"so that plain reverse_proxy (random balancing, no session_ids) gets the same 200 answer from whichever worker it picks. "+
				"Both spread the requests over the three workers; the ratio is what routing each request to its session's worker costs over Caddy's own balancing.\n",
				fmt.Sprintf("native×%d", fleetSize), fleetSize, len(f.ids[viaPlain]), spreadText(f.spread[viaMapping]), spreadText(f.spread[viaDirect]))
		}
		b.WriteString("\nBoth Caddyfiles set `flush_interval -1`: plain reverse_proxy flushes each response's headers and body " +
			"separately, while mapping mode rewrites a JSON response whole and writes it at once, which can make it faster than plain " +
			"on small, fast answers. Direct mode wraps nothing: its ratio is the plainer measure of the pass-through cost.\n")
	}

	if s := r.sse; s != nil && len(s.samples[viaMapping]) > 0 {
		fmt.Fprintf(&b, "\n## Event streams (%d events per stream, one every %v, each flushed alone; synthetic upstream in the bench)\n\n",
			c.SSEEvents, c.SSEInterval)
		b.WriteString("Latency is from the upstream's write of an event to the client's read of it. Added latency is the module's p50 " +
			"minus plain reverse_proxy's (or the upstream's) in the same repeat, median over repeats.\n\n")
		b.WriteString("| through | p50 ms | p90 ms | p99 ms | added p50 ms | target | result |\n|---|---:|---:|---:|---:|---|---|\n")
		for _, via := range s.u.vias {
			samples := s.samples[via]
			added, target, result := "", "", ""
			switch via {
			case viaMapping:
				vsPlain := addedP50(samples, s.samples[viaPlain])
				vsUpstream := addedP50(samples, s.samples[viaUpstream])
				vsOff := addedP50(samples, s.samples[viaEventsOff])
				added = fmt.Sprintf("%.3f vs plain, %.3f vs upstream, %.3f vs events off (p99 %+.3f)", ms(vsPlain), ms(vsUpstream), ms(vsOff),
					ms(addedP99(samples, s.samples[viaEventsOff])))
				target = fmt.Sprintf("< %.1f ms vs plain", ms(goalAddedP50))
				result = v.check("event stream added p50", vsPlain < goalAddedP50)
			case viaEventsOff:
				added = fmt.Sprintf("%.3f vs plain", ms(addedP50(samples, s.samples[viaPlain])))
			}
			fmt.Fprintf(&b, "| %s | %.3f | %.3f | %.3f | %s | %s | %s |\n", via,
				medianOf(samples, func(x sseSample) float64 { return ms(x.p50) }),
				medianOf(samples, func(x sseSample) float64 { return ms(x.p90) }),
				medianOf(samples, func(x sseSample) float64 { return ms(x.p99) }),
				added, target, result)
		}
		if samples := s.samples[sseFleet]; len(samples) > 0 {
			vsPlain := addedP50(samples, s.samples[viaPlain])
			fmt.Fprintf(&b, "| %s | %.3f | %.3f | %.3f | %.3f vs plain (one worker) | < %.1f ms vs plain | %s |\n", sseFleet,
				medianOf(samples, func(x sseSample) float64 { return ms(x.p50) }),
				medianOf(samples, func(x sseSample) float64 { return ms(x.p90) }),
				medianOf(samples, func(x sseSample) float64 { return ms(x.p99) }),
				ms(vsPlain), ms(goalFleetAddedP50), v.check("fleet event stream added p50", vsPlain < goalFleetAddedP50))
			fmt.Fprintf(&b, "\nThe merged stream's Caddy has %d stubs as workers (lb_policy session_ids); the client's GET /event becomes one "+
				"subscription per worker, and each worker sends one event in %d of the same schedule, so the client reads the same events at "+
				"the same cadence as through plain reverse_proxy from one stub.\n", fleetSize, fleetSize)
		}
	}

	if rss := r.rss; rss != nil {
		fmt.Fprintf(&b, "\n## Memory (%d mappings in storage, each looked up once through the module: GET /session/{client id})\n\n", rss.mappings)
		b.WriteString("RssFile is mostly the Caddy binary's own pages; RssAnon is heap and stacks.\n\n")
		b.WriteString("| Caddy | VmRSS MiB | RssAnon MiB | RssFile MiB | VmHWM MiB | VmRSS at start MiB | target | result |\n")
		b.WriteString("|---|---:|---:|---:|---:|---:|---|---|\n")
		target, result := fmt.Sprintf("VmRSS < %d MB at %d mappings", goalRSS>>20, goalMappings), ""
		if rss.mappings >= goalMappings {
			result = v.check("memory with 100,000 mappings", rss.module.RSS < goalRSS)
		} else {
			result = "not measured at the target's size"
		}
		row := func(name string, now, start memory, target, result string) {
			fmt.Fprintf(&b, "| %s | %.1f | %.1f | %.1f | %.1f | %.1f | %s | %s |\n", name, mebi(now.RSS), mebi(now.Anon),
				mebi(now.File), mebi(now.HWM), mebi(start.RSS), target, result)
		}
		row(viaMapping, rss.module, rss.moduleIdle, target, result)
		row(viaPlain+" (as many requests)", rss.plain, rss.plainIdle, "", "")
		fmt.Fprintf(&b, "\nThe module adds %.1f MiB of VmRSS (%.1f MiB anonymous) over plain reverse_proxy. "+
			"Seeding took %v; the lookups through the module %v.\n",
			mebi(rss.module.RSS-rss.plain.RSS), mebi(rss.module.Anon-rss.plain.Anon),
			rss.seedTook.Round(time.Millisecond), rss.fillTook.Round(time.Millisecond))
	}

	if len(r.moves) > 0 {
		reportMoves(&b, &v, r.moves)
	}
	if r.journal != nil {
		reportJournal(&b, &v, r.journal)
	}

	fmt.Fprintf(&b, "\n**Targets: %d met, %d missed.**", len(v.met), len(v.missed))
	if len(v.missed) > 0 {
		fmt.Fprintf(&b, " Missed: %s.", strings.Join(v.missed, "; "))
	}
	if c.Runs < 3 {
		b.WriteString("\n\nWith fewer than 3 repeats the verdicts are indicative only: opencode's own throughput varies by ±25 % between short runs.")
	}
	b.WriteString("\n")
	return b.String()
}

func mebi(bytes int64) float64 { return float64(bytes) / (1 << 20) }

// addedP50 is the median over repeats of a's p50 minus b's in the same repeat.
func addedP50(a, b []sseSample) time.Duration {
	return added(a, b, func(x sseSample) time.Duration { return x.p50 })
}

// addedP99 is addedP50 for the p99.
func addedP99(a, b []sseSample) time.Duration {
	return added(a, b, func(x sseSample) time.Duration { return x.p99 })
}

func added(a, b []sseSample, of func(sseSample) time.Duration) time.Duration {
	var diffs []float64
	for i := range min(len(a), len(b)) {
		diffs = append(diffs, float64(of(a[i])-of(b[i])))
	}
	return time.Duration(median(diffs))
}

// goalFleetFlat is the most routing may cost with 64 workers, as a multiple
// of its cost with one (BenchmarkFleetRouting, same request mix).
const goalFleetFlat = 1.25

// reportFleetBench renders BenchmarkFleetRouting: ns/op by pool size and
// request mix, each against the same mix with one worker.
func (m *Main) reportFleetBench(b *strings.Builder, v *verdict) {
	fmt.Fprintf(b, "\n## Routing with many workers, one core (`go test -run '^$' -bench FleetRouting -benchmem -cpu 1 -benchtime %s ./caddymodule/`)\n\n",
		m.Config.BenchTime)
	b.WriteString("One op routes GET /session/{client id}: the handler's lookup of the session's worker in the index (file storage, " +
		"the module's default cache) and its membership of the pool, lb_policy session_ids selecting it, the handler learning from the route. " +
		"100,000 mappings, each on a worker drawn at random; `sessions` asks for all of them in a random order, `hot` cycles through 1,000.\n\n")
	b.WriteString("| workers | requests | ns/op | cache hit % | vs 1 worker | target | result |\n|---:|---|---:|---:|---:|---|---|\n")
	one := map[string]float64{}
	type row struct {
		workers    int
		mix        string
		ns, hitPct float64
	}
	var rows []row
	for _, g := range m.results.fleetBench {
		var workers int
		var mix string
		for _, part := range strings.Split(g.name, "/") {
			if n, ok := strings.CutPrefix(part, "workers="); ok {
				fmt.Sscan(n, &workers)
			} else if strings.Contains(part, "=") && !strings.HasPrefix(part, "FleetRouting") {
				mix = part
			}
		}
		rw := row{workers, mix, median(g.nsPerOp), median(g.hitPct)}
		if workers == 1 {
			one[mix] = rw.ns
		}
		rows = append(rows, rw)
	}
	for _, rw := range rows {
		ratio, target, result := "", "", ""
		if base := one[rw.mix]; base > 0 {
			ratio = fmt.Sprintf("%.2fx", rw.ns/base)
			if rw.workers == 64 {
				target = fmt.Sprintf("≤ %.2fx", goalFleetFlat)
				result = v.check(fmt.Sprintf("routing with 64 workers (%s)", rw.mix), rw.ns/base <= goalFleetFlat)
			}
		}
		fmt.Fprintf(b, "| %d | %s | %.0f | %.1f | %s | %s | %s |\n", rw.workers, rw.mix, rw.ns, rw.hitPct, ratio, target, result)
	}
}
