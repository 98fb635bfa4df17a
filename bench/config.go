package main

import (
	"flag"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Config is what the command line sets.
type Config struct {
	Runs        int           // repeats of every measurement
	Duration    time.Duration // one wrk measurement
	Warmup      time.Duration // one unrecorded wrk run per target before the first repeat
	Threads     int           // wrk threads
	Connections int           // wrk connections
	Timeout     time.Duration // wrk's per-request timeout

	SSEEvents   int           // events per stream and configuration
	SSEInterval time.Duration // pause between two events

	Mappings int // mappings in storage for the memory measurement

	BenchTime string // go test -benchtime of the rewriter benchmarks

	Skip    map[string]bool // sections left out: opencode, native, get, create, sse, rss, gobench, fleet, move, journal
	Out     string          // also write the report here
	Keep    bool            // keep the work folder (logs, data)
	Profile string          // folder for CPU profiles of each proxied wrk measurement
}

// sections are the parts of a run that -skip can leave out.
var sections = []string{"opencode", "native", "get", "create", "sse", "rss", "gobench", "fleet", "move", "journal"}

// ParseFlags reads the command line. -quick changes the defaults of the flags
// that are not given explicitly.
func (m *Main) ParseFlags(args []string) error {
	c := &m.Config
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	quick := fs.Bool("quick", false, "a short run that checks the harness: -runs 1 -duration 2s -warmup 1s -benchtime 200ms")
	fs.IntVar(&c.Runs, "runs", 5, "repeats of every measurement; the report gives medians")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "length of one wrk measurement")
	fs.DurationVar(&c.Warmup, "warmup", 2*time.Second, "unrecorded wrk run per target before the first repeat (0: none)")
	fs.IntVar(&c.Threads, "threads", 2, "wrk threads")
	fs.IntVar(&c.Connections, "connections", 32, "wrk connections (also the number of ids replays cycle through)")
	fs.DurationVar(&c.Timeout, "timeout", 10*time.Second, "wrk's request timeout; slower requests count as errors")
	fs.IntVar(&c.SSEEvents, "sse-events", 10_000, "events per event stream and configuration")
	fs.DurationVar(&c.SSEInterval, "sse-interval", 200*time.Microsecond, "pause between two events of the synthetic upstream")
	fs.IntVar(&c.Mappings, "mappings", 100_000, "mappings in Caddy's storage for the memory measurement")
	fs.StringVar(&c.BenchTime, "benchtime", "2s", "go test -benchtime of the rewriter benchmarks")
	skip := fs.String("skip", "", "comma-separated sections to leave out: "+strings.Join(sections, ", "))
	fs.StringVar(&c.Out, "out", "", "also write the report to this file")
	fs.BoolVar(&c.Keep, "keep", false, "keep the work folder with every process's log and data")
	fs.StringVar(&c.Profile, "profile", "", "write a CPU profile of the Caddy (module or plain) during each of its wrk measurements into this folder")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if *quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		quickDefaults := map[string]string{"runs": "1", "duration": "2s", "warmup": "1s", "benchtime": "200ms"}
		for name, value := range quickDefaults {
			if !set[name] {
				if err := fs.Set(name, value); err != nil {
					return err
				}
			}
		}
	}
	c.Skip = map[string]bool{}
	for _, s := range strings.Split(*skip, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		if !slices.Contains(sections, s) {
			return fmt.Errorf("-skip %q: want some of %s", s, strings.Join(sections, ", "))
		}
		c.Skip[s] = true
	}
	switch {
	case c.Runs < 1 || c.Runs > 100:
		return fmt.Errorf("-runs %d: want 1 to 100", c.Runs)
	case c.Duration < time.Second || c.Duration > 10*time.Minute || c.Duration%time.Second != 0:
		return fmt.Errorf("-duration %v: want whole seconds from 1s to 10m (wrk counts in seconds)", c.Duration)
	case c.Warmup < 0 || c.Warmup > 10*time.Minute || c.Warmup%time.Second != 0:
		return fmt.Errorf("-warmup %v: want whole seconds from 0 to 10m", c.Warmup)
	case c.Threads < 1 || c.Connections < c.Threads || c.Connections > 4096:
		return fmt.Errorf("-threads %d -connections %d: want 1 <= threads <= connections <= 4096", c.Threads, c.Connections)
	case c.SSEEvents < 1 || c.SSEEvents > 10_000_000:
		return fmt.Errorf("-sse-events %d: want 1 to 10,000,000", c.SSEEvents)
	case c.SSEInterval < 0 || c.SSEInterval > time.Second:
		return fmt.Errorf("-sse-interval %v: want 0 to 1s", c.SSEInterval)
	case c.Mappings < 1 || c.Mappings > 10_000_000:
		return fmt.Errorf("-mappings %d: want 1 to 10,000,000", c.Mappings)
	}
	return nil
}
