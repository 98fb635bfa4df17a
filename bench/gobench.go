package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
)

// goBench is one benchmark of go test -bench, over -count runs.
type goBench struct {
	name    string
	mbps    []float64 // MB/s, for benchmarks that SetBytes
	nsPerOp []float64
	hitPct  []float64 // the share of mapping lookups the cache answered, where reported
}

// runGoBench runs the rewriter and index benchmarks of package idmap on one
// core (-cpu 1), m.Config.Runs times each.
func (m *Main) runGoBench(ctx context.Context) ([]*goBench, error) {
	return m.goTestBench(ctx, "./idmap/", ".", m.Config.Runs)
}

// runFleetBench runs caddymodule's BenchmarkFleetRouting (1 to 64 workers,
// 100,000 mappings) on one core, once: it seeds 100,000 mappings into file
// storage for each pool size, which takes longer than the measurements.
func (m *Main) runFleetBench(ctx context.Context) ([]*goBench, error) {
	return m.goTestBench(ctx, "./caddymodule/", "^BenchmarkFleetRouting$", 1)
}

// goTestBench runs the benchmarks of pkg that match pattern on one core,
// count times each, and parses their results.
func (m *Main) goTestBench(ctx context.Context, pkg, pattern string, count int) ([]*goBench, error) {
	cmd := command(ctx, "go", "test", "-run", "^$", "-bench", pattern, "-benchmem", "-cpu", "1",
		"-count", strconv.Itoa(count), "-benchtime", m.Config.BenchTime, pkg)
	cmd.Dir = m.bin.root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("go test -bench %s: %v\n%s", pkg, err, out)
	}
	var benches []*goBench
	byName := map[string]*goBench{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || !strings.HasPrefix(fields[0], "Benchmark") {
			continue
		}
		b := byName[fields[0]]
		if b == nil {
			b = &goBench{name: strings.TrimPrefix(fields[0], "Benchmark")}
			byName[fields[0]] = b
			benches = append(benches, b)
		}
		for i := 1; i+1 < len(fields); i++ {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				continue
			}
			switch fields[i+1] {
			case "MB/s":
				b.mbps = append(b.mbps, v)
			case "ns/op":
				b.nsPerOp = append(b.nsPerOp, v)
			case "hit%":
				b.hitPct = append(b.hitPct, v)
			}
		}
	}
	if len(benches) == 0 {
		return nil, fmt.Errorf("go test -bench %s printed no benchmark:\n%s", pkg, out)
	}
	for _, b := range benches {
		logf("go bench %-40s %10.1f ns/op  %s", b.name, median(b.nsPerOp), mbpsText(b.mbps))
	}
	return benches, nil
}

func mbpsText(mbps []float64) string {
	if len(mbps) == 0 {
		return ""
	}
	return fmt.Sprintf("%.1f MB/s", median(mbps))
}
