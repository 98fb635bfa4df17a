package caddymodule

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/sessionid/caddy-sessionid/events"
	"github.com/sessionid/caddy-sessionid/internal/upstreamtest"
)

// BenchmarkFanOut is one event reaching every client of a stream, with
// 1, 100 and 1,000 clients, over real HTTP on loopback: with resumable
// streams (one upstream subscription shared by all) and with events off
// (each client its own subscription, rewritten as it flows). ns/op is the
// time from the upstream's write until the last client has read the event;
// the metrics are the latency of each delivery.
func BenchmarkFanOut(b *testing.B) {
	for _, off := range []bool{false, true} {
		for _, clients := range []int{1, 100, 1000} {
			name := fmt.Sprintf("events on, %d clients", clients)
			if off {
				name = fmt.Sprintf("events off, %d clients", clients)
			}
			b.Run(name, func(b *testing.B) { benchmarkFanOut(b, off, clients) })
		}
	}
}

func benchmarkFanOut(b *testing.B, off bool, clients int) {
	upstream := upstreamtest.NewFakeStream()
	_, url := eventsFront(b, ModeDirect, events.Config{Off: off}, upstream)
	transport := &http.Transport{MaxIdleConnsPerHost: clients, DisableCompression: true}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport}

	delivered := make(chan time.Duration, clients*64)
	var wg sync.WaitGroup
	var bodies []interface{ Close() error }
	for range clients {
		resp, err := client.Get(url + "/event")
		if err != nil {
			b.Fatal(err)
		}
		bodies = append(bodies, resp.Body)
		wg.Add(1)
		go func() {
			defer wg.Done()
			reader := bufio.NewReader(resp.Body)
			for {
				line, err := reader.ReadSlice('\n')
				if err != nil {
					return
				}
				if i := bytes.Index(line, []byte(`"sent":`)); i >= 0 {
					digits := line[i+7:]
					end := bytes.IndexByte(digits, '}')
					sent, _ := strconv.ParseInt(string(digits[:end]), 10, 64)
					delivered <- time.Duration(time.Now().UnixNano() - sent)
				}
			}
		}()
	}
	subscriptions := int64(1)
	if off {
		subscriptions = int64(clients)
	}
	upstreamtest.WaitFor(b, "every client subscribed", func() bool { return upstream.Open.Load() == subscriptions })

	var latencies []time.Duration
	for b.Loop() {
		upstream.Publish(`{"type":"n","properties":{"sent":%d}}`, time.Now().UnixNano())
		for range clients {
			latencies = append(latencies, <-delivered)
		}
	}
	b.StopTimer()
	for _, body := range bodies {
		body.Close()
	}
	wg.Wait()
	if upstream.Opened.Load() != subscriptions {
		b.Fatalf("%d clients made %d upstream subscriptions, want %d", clients, upstream.Opened.Load(), subscriptions)
	}
	slices.Sort(latencies)
	b.ReportMetric(float64(latencies[len(latencies)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(latencies[len(latencies)*99/100].Microseconds()), "p99-µs")
}
