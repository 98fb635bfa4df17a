// Command bench measures what the session_ids module costs, against the same
// Caddy binary running a plain reverse_proxy with the same settings
// (bench/Caddyfile.plain), in one run on one machine:
//
//   - throughput and latency (wrk) of pass-through requests for unmapped ids,
//     of requests for mapped ids, of creates with an id and of replays, in
//     front of the reference native server and a stock opencode;
//   - the latency an event gains through the event-stream rewriter, with a
//     synthetic upstream inside this program;
//   - Caddy's resident memory with 100,000 mappings in its storage, all of
//     them looked up once;
//   - the rewriter's single-core throughput (go test -bench ./idmap/);
//   - a fleet of workers behind one Caddy: GET /session/{client id} over
//     three native servers through lb_policy session_ids against plain
//     reverse_proxy balancing the same three, the latency of the merged
//     event stream of three workers, and the cost of routing with 1 to 64
//     workers and 100,000 mappings (go test -bench FleetRouting
//     ./caddymodule/).
//
// Configurations alternate within each repeat (A, B, C, A, B, C, …), and the
// table reports medians over the repeats and ratios to plain reverse_proxy
// measured in the same repeat, with the targets each is held to.
//
//	go run ./bench            # the full run; best on a quiet machine
//	go run ./bench -quick     # a short run that checks the harness works
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	m := NewMain()
	if err := m.ParseFlags(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := m.Run(ctx)
	stop()
	m.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
