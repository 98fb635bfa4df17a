package main

import (
	"bufio"
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// lua holds wrk's scripts; report.lua is appended to each.
//
//go:embed lua/*.lua
var lua embed.FS

// wrkScripts writes every script, with the report appended, into dir and
// returns their paths by name ("create_id" for lua/create_id.lua, "report"
// for the report alone).
func wrkScripts(dir string) (map[string]string, error) {
	report, err := lua.ReadFile("lua/report.lua")
	if err != nil {
		return nil, err
	}
	entries, err := lua.ReadDir("lua")
	if err != nil {
		return nil, err
	}
	paths := map[string]string{}
	for _, e := range entries {
		name := strings.TrimSuffix(e.Name(), ".lua")
		script := report
		if name != "report" {
			body, err := lua.ReadFile("lua/" + e.Name())
			if err != nil {
				return nil, err
			}
			script = append(append(body, '\n'), report...)
		}
		path := filepath.Join(dir, e.Name())
		if err := os.WriteFile(path, script, 0o644); err != nil {
			return nil, err
		}
		paths[name] = path
	}
	return paths, nil
}

// wrkResult is what report.lua prints: counts, and latencies in µs.
type wrkResult struct {
	Requests   int64   `json:"requests"`
	DurationUS int64   `json:"duration_us"`
	Bytes      int64   `json:"bytes"`
	Connect    int64   `json:"connect"`
	Read       int64   `json:"read"`
	Write      int64   `json:"write"`
	Status     int64   `json:"status"` // answers of 400 and above
	Timeout    int64   `json:"timeout"`
	P50US      float64 `json:"p50_us"`
	P90US      float64 `json:"p90_us"`
	P99US      float64 `json:"p99_us"`
	MeanUS     float64 `json:"mean_us"`
	MaxUS      float64 `json:"max_us"`
}

// RPS is requests per second.
func (r wrkResult) RPS() float64 {
	if r.DurationUS == 0 {
		return 0
	}
	return float64(r.Requests) / (float64(r.DurationUS) / 1e6)
}

// Errors counts failed requests of every kind.
func (r wrkResult) Errors() int64 { return r.Connect + r.Read + r.Write + r.Status + r.Timeout }

// runWrk measures url for d with script and its arguments.
func (m *Main) runWrk(ctx context.Context, url, script string, args []string, d time.Duration) (wrkResult, error) {
	c := m.Config
	cmdArgs := []string{
		"-t", fmt.Sprint(c.Threads), "-c", fmt.Sprint(c.Connections), "-d", fmt.Sprintf("%ds", int(d.Seconds())),
		"--timeout", fmt.Sprintf("%ds", int(c.Timeout.Seconds())), "--latency", "-s", m.scripts[script], url,
	}
	if len(args) > 0 {
		cmdArgs = append(append(cmdArgs, "--"), args...)
	}
	// wrk ends by itself after d; the deadline only guards against a hang.
	ctx, cancel := context.WithTimeout(ctx, d+c.Timeout+30*time.Second)
	defer cancel()
	cmd := command(ctx, m.bin.wrk, cmdArgs...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk %s: %v\n%s%s", url, err, out, stderr.Bytes())
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), "BENCH "); ok {
			var r wrkResult
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				return wrkResult{}, fmt.Errorf("wrk %s: %v in %q", url, err, line)
			}
			return r, nil
		}
	}
	return wrkResult{}, fmt.Errorf("wrk %s printed no result:\n%s%s", url, out, stderr.Bytes())
}
