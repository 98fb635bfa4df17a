package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// rssResult is the memory of the module's Caddy with many mappings, each
// looked up once through it, and of plain Caddy after as many requests.
type rssResult struct {
	mappings           int
	seedTook, fillTook time.Duration
	moduleIdle, module memory
	plainIdle, plain   memory
}

// measureRSS seeds the mappings into a fresh storage, starts the module
// (mapping mode) on it and plain reverse_proxy in front of the stub, asks
// each for every mapped session once (GET /session/{client id} through the
// module, which looks up and caches both directions; GET /session/{real id}
// through plain), and reads both processes' VmRSS.
func (m *Main) measureRSS(ctx context.Context, st *stub) (*rssResult, error) {
	n := m.Config.Mappings
	res := &rssResult{mappings: n}
	start := time.Now()
	pairs, err := m.seedMappings(ctx, filepath.Join(m.caddyData("rss-mapping"), "caddy"), n)
	if err != nil {
		return nil, fmt.Errorf("seed mappings: %w", err)
	}
	res.seedTook = time.Since(start)
	logf("seeded %d mappings in %v", n, res.seedTook.Round(time.Millisecond))

	module, err := m.startCaddy(ctx, "rss-mapping", viaMapping, st.Addr)
	if err != nil {
		return nil, err
	}
	defer module.stop()
	plain, err := m.startCaddy(ctx, "rss-plain", viaPlain, st.Addr)
	if err != nil {
		return nil, err
	}
	defer plain.stop()
	if res.moduleIdle, err = readMemory(module.pid()); err != nil {
		return nil, err
	}
	if res.plainIdle, err = readMemory(plain.pid()); err != nil {
		return nil, err
	}

	start = time.Now()
	if err := fill(ctx, n, func(i int) (string, string) { return module.URL + "/session/" + pairs[i].client, pairs[i].client }); err != nil {
		return nil, fmt.Errorf("through %s: %w", viaMapping, err)
	}
	res.fillTook = time.Since(start)
	logf("looked up %d mapped ids through the module in %v", n, res.fillTook.Round(time.Millisecond))
	if err := fill(ctx, n, func(i int) (string, string) { return plain.URL + "/session/" + pairs[i].real, pairs[i].real }); err != nil {
		return nil, fmt.Errorf("through %s: %w", viaPlain, err)
	}
	if res.module, err = readMemory(module.pid()); err != nil {
		return nil, err
	}
	if res.plain, err = readMemory(plain.pid()); err != nil {
		return nil, err
	}
	// After reading VmRSS: the heap profile forces a GC.
	if err := m.heapProfile(ctx, module.Admin, "rss-heap-mapping"); err != nil {
		return nil, err
	}
	if err := m.heapProfile(ctx, plain.Admin, "rss-heap-plain"); err != nil {
		return nil, err
	}
	logf("VmRSS: module %.1f MiB (idle %.1f), plain %.1f MiB (idle %.1f)",
		mebi(res.module.RSS), mebi(res.moduleIdle.RSS), mebi(res.plain.RSS), mebi(res.plainIdle.RSS))
	return res, nil
}

// fill GETs request(i)'s URL for every i < n with a few concurrent clients,
// and checks each answer is 200 and names request(i)'s id.
func fill(ctx context.Context, n int, request func(i int) (url, want string)) error {
	const workers = 16
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: workers, DisableCompression: true}}
	var next atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				url, want := request(i)
				if err := getID(ctx, client, url, want); err != nil {
					once.Do(func() { first = err; cancel() })
					return
				}
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

func getID(ctx context.Context, client *http.Client, url, want string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"id":"`+want+`"`)) {
		return fmt.Errorf("GET %s: %s, want 200 with id %s: %.300s", url, resp.Status, want, body)
	}
	return nil
}
