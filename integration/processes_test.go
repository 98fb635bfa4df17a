package integration

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// OpencodeVersion is the stock opencode these tests run, from npm.
const OpencodeVersion = "1.18.33"

// LegacyOpencodeVersion has no id-accepting route at all; mapping mode must
// work in front of it anyway.
const LegacyOpencodeVersion = "1.15.4"

var (
	repoRoot, _ = filepath.Abs("..")
	caddyBin    string // set by TestMain: the binary users build
	// faultyCaddyBin is caddyBin with the test-only fault hooks compiled in
	// (build tag sessionids_faults); set by TestMain.
	faultyCaddyBin string
	opencodeBin    string // set by TestMain
	nativeBin      string // set by TestMain
)

// findOrInstallOpencode returns opencode-ai@version installed from npm under
// .cache/ in the repository (installed on first use); for OpencodeVersion,
// $OPENCODE_BIN wins.
func findOrInstallOpencode(version string) (string, error) {
	if bin := os.Getenv("OPENCODE_BIN"); bin != "" && version == OpencodeVersion {
		return bin, nil
	}
	prefix := filepath.Join(repoRoot, ".cache", "opencode-ai-"+version)
	bin := filepath.Join(prefix, "node_modules", ".bin", "opencode")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	cmd := exec.Command("npm", "install", "--no-audit", "--no-fund", "--prefix", prefix, "opencode-ai@"+version)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("npm install opencode-ai@%s: %v\n%s", version, err, out)
	}
	return bin, nil
}

// findOrBuildCaddy returns $CADDY_BIN (CI sets it to the xcaddy build), or
// builds ./cmd/caddy, the same module set, into dir.
func findOrBuildCaddy(dir string) (string, error) {
	if bin := os.Getenv("CADDY_BIN"); bin != "" {
		return filepath.Abs(bin)
	}
	return build(dir, "caddy")
}

// findOrBuildFaultyCaddy returns $CADDY_FAULTS_BIN (CI sets it to the
// xcaddy build with the build tag sessionids_faults), or builds ./cmd/caddy
// with that tag into dir: the one binary whose test-only fault hooks
// (SESSION_IDS_TEST_FAULT) are compiled in.
func findOrBuildFaultyCaddy(dir string) (string, error) {
	if bin := os.Getenv("CADDY_FAULTS_BIN"); bin != "" {
		return filepath.Abs(bin)
	}
	return build(dir, "caddy", "-tags", "sessionids_faults")
}

// build compiles ./cmd/<name> into dir (named after the flags' tags, if
// any), with flags.
func build(dir, name string, flags ...string) (string, error) {
	bin := filepath.Join(dir, name+strings.Join(flags, ""))
	cmd := exec.Command("go", append(append([]string{"build"}, flags...), "-o", bin, "./cmd/"+name)...)
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build %s: %v\n%s", name, err, out)
	}
	return bin, nil
}

func freePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// process is a child process whose output is kept for failure reports.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startProcess(tb testing.TB, name, dir string, env []string, bin string, args ...string) *process {
	tb.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &process{name: name, cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", name, err)
	}
	go func() { _ = cmd.Wait(); close(p.done) }()
	tb.Cleanup(func() {
		p.stop()
		if tb.Failed() {
			// Short, so that CI's excerpt of a failed run keeps the
			// failure's own message, printed before these.
			tb.Logf("--- %s output (last 1.5 KB) ---\n%s", name, tail(p.out.String(), 1536))
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// stop sends SIGTERM to the process group and SIGKILL if it is still there
// after 5 s (opencode once ignored SIGTERM).
func (p *process) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.kill()
	}
}

// kill is kill -9 of the process group: no chance to clean up.
func (p *process) kill() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// opencode is a stock `opencode serve` with isolated XDG folders and a fresh
// git repository as its working directory.
type opencode struct {
	*process
	URL, Dir, Password string
	Env                []string // the isolated XDG folders, for CLI clients

	bin  string
	port int
	tb   testing.TB
}

func startOpencode(tb testing.TB, model *fakeModel, password string) *opencode {
	tb.Helper()
	return startOpencodeBin(tb, opencodeBin, model, password)
}

func startOpencodeBin(tb testing.TB, bin string, model *fakeModel, password string) *opencode {
	tb.Helper()
	root := tb.TempDir()
	dirs := map[string]string{}
	for _, d := range []string{"home", "data", "config", "state", "cache", "work"} {
		dirs[d] = filepath.Join(root, d)
		if err := os.MkdirAll(dirs[d], 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dirs["config"], "opencode"), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dirs["config"], "opencode", "opencode.json"), model.opencodeConfig(), 0o644); err != nil {
		tb.Fatal(err)
	}
	git := exec.Command("sh", "-c", "git init -q . && git -c user.email=t@t -c user.name=t commit -q --allow-empty -m init")
	git.Dir = dirs["work"]
	if out, err := git.CombinedOutput(); err != nil {
		tb.Fatalf("git init: %v %s", err, out)
	}
	port := freePort(tb)
	env := []string{
		"HOME=" + dirs["home"], "XDG_DATA_HOME=" + dirs["data"], "XDG_CONFIG_HOME=" + dirs["config"],
		"XDG_STATE_HOME=" + dirs["state"], "XDG_CACHE_HOME=" + dirs["cache"],
	}
	if password != "" {
		env = append(env, "OPENCODE_SERVER_PASSWORD="+password)
	}
	oc := &opencode{URL: fmt.Sprintf("http://127.0.0.1:%d", port), Dir: dirs["work"], Password: password, Env: env,
		bin: bin, port: port, tb: tb}
	oc.start()
	return oc
}

func (oc *opencode) start() {
	oc.process = startProcess(oc.tb, "opencode", oc.Dir, oc.Env, oc.bin,
		"serve", "--hostname", "127.0.0.1", "--port", fmt.Sprint(oc.port), "--print-logs")
}

// restart starts opencode again on the same port and data after it stopped
// (or was killed).
func (oc *opencode) restart() {
	oc.tb.Helper()
	oc.stop()
	oc.start()
}

// caddy is a Caddy binary serving a Caddyfile of the repository (by default
// Caddyfile.example) in front of an upstream.
type caddy struct {
	*process
	URL, DataDir string
	bin, config  string
	env          []string
	tb           testing.TB
}

func startCaddy(tb testing.TB, upstream *opencode, extraEnv ...string) *caddy {
	tb.Helper()
	return startCaddyFor(tb, upstream.URL, extraEnv...)
}

func startCaddyFor(tb testing.TB, upstreamURL string, extraEnv ...string) *caddy {
	tb.Helper()
	return startCaddyWith(tb, caddyBin, "Caddyfile.example", upstreamURL, extraEnv...)
}

// startCaddyWith runs bin with config (a path relative to the repository) on
// a free port, with its own admin port and data folder.
func startCaddyWith(tb testing.TB, bin, config, upstreamURL string, extraEnv ...string) *caddy {
	tb.Helper()
	data := tb.TempDir()
	port := freePort(tb)
	env := []string{
		fmt.Sprintf("LISTEN=:%d", port),
		"UPSTREAM=" + strings.TrimPrefix(upstreamURL, "http://"),
		fmt.Sprintf("ADMIN=localhost:%d", freePort(tb)),
		"XDG_DATA_HOME=" + data, "XDG_CONFIG_HOME=" + data, "HOME=" + data,
	}
	c := &caddy{URL: fmt.Sprintf("http://127.0.0.1:%d", port), DataDir: data, bin: bin, config: config, env: append(env, extraEnv...), tb: tb}
	c.start()
	return c
}

func (c *caddy) start() {
	c.tb.Helper()
	c.process = startProcess(c.tb, "caddy", repoRoot, c.env, c.bin, "run", "--config", c.config)
	waitListening(c.tb, c.URL, c.process)
}

// restart stops Caddy (gracefully, or with kill -9) and starts it again on
// the same port and storage.
func (c *caddy) restart(hard bool) {
	c.tb.Helper()
	if hard {
		c.kill()
	} else {
		c.stop()
	}
	c.start()
}

// waitListening waits for Caddy's own socket only: the upstream behind it
// may still be starting, which is the point of the readiness settings.
func waitListening(tb testing.TB, url string, p *process) {
	tb.Helper()
	addr := strings.TrimPrefix(url, "http://")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			conn.Close()
			return
		}
		select {
		case <-p.done:
			tb.Fatalf("%s exited while starting:\n%s", p.name, p.out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	tb.Fatalf("%s did not listen on %s", p.name, addr)
}

// native is the reference native server, restartable on its port and data.
type native struct {
	*process
	URL, data string
	port      int
	tb        testing.TB
}

func startNative(tb testing.TB) *native {
	tb.Helper()
	n := &native{data: tb.TempDir(), port: freePort(tb), tb: tb}
	n.URL = fmt.Sprintf("http://127.0.0.1:%d", n.port)
	n.start()
	return n
}

func (n *native) start() {
	n.tb.Helper()
	n.process = startProcess(n.tb, "nativeserver", n.data, nil, nativeBin,
		"-addr", fmt.Sprintf("127.0.0.1:%d", n.port), "-data", n.data)
	waitListening(n.tb, n.URL, n.process)
}

func (n *native) restart() {
	n.tb.Helper()
	n.stop()
	n.start()
}

// waitHealthy polls /global/health with short timeouts (opencode hangs
// requests for a while after it starts listening) until it answers 200.
// Tests that talk to the upstream directly wait for it; requests through
// Caddy need not.
func (oc *opencode) waitHealthy(tb testing.TB) {
	tb.Helper()
	client := &http.Client{Timeout: 500 * time.Millisecond}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequest("GET", oc.URL+"/global/health", nil)
		if oc.Password != "" {
			req.SetBasicAuth("opencode", oc.Password)
		}
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	tb.Fatalf("opencode at %s not healthy within 60 s:\n%s", oc.URL, tail(oc.out.String(), 4096))
}
