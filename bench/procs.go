package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// process is a child in its own process group, its output in a log file of
// the work folder. Stopping it signals the whole group, so that what it
// started itself goes too.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// start runs bin in dir with the environment plus env, and registers it for
// Close.
func (m *Main) start(name, dir string, env []string, bin string, args ...string) (*process, error) {
	logPath := filepath.Join(m.dir, "logs", name+".log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, err
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child has its own descriptor
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Pdeathsig is a last resort if this program is killed without Close.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	m.procs = append(m.procs, p)
	return p, nil
}

// pid is the child's process id (Caddy and the native server are started
// directly, so this is the server itself).
func (p *process) pid() int { return p.cmd.Process.Pid }

// stop sends SIGTERM to the process group, then SIGKILL after 5 s (opencode
// once ignored SIGTERM).
func (p *process) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
		<-p.done
	}
}

// exited describes a child that is gone, with the end of its log.
func (p *process) exited() error {
	raw, _ := os.ReadFile(p.log)
	if len(raw) > 2048 {
		raw = raw[len(raw)-2048:]
	}
	return fmt.Errorf("%s exited: %v\n%s", p.name, p.cmd.ProcessState, raw)
}

// freePort returns a loopback port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitHealthy polls url with short timeouts (opencode hangs requests for a
// while after it starts listening) until it answers 200, p exits or the
// budget runs out.
func waitHealthy(ctx context.Context, url string, p *process, budget time.Duration) error {
	client := &http.Client{Timeout: 500 * time.Millisecond}
	deadline := time.Now().Add(budget)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.done:
			return p.exited()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s: %s not healthy within %v (log: %s)", p.name, url, budget, p.log)
}

// memory is a process's resident memory, from /proc/<pid>/status.
type memory struct {
	RSS, HWM   int64 // bytes: VmRSS now, VmHWM the peak
	Anon, File int64 // bytes: RssAnon (heap, stacks) and RssFile (mostly the binary's pages)
}

func readMemory(pid int) (memory, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}, err
	}
	var mem memory
	for _, line := range strings.Split(string(raw), "\n") {
		name, value, ok := strings.Cut(line, ":")
		field := map[string]*int64{"VmRSS": &mem.RSS, "VmHWM": &mem.HWM, "RssAnon": &mem.Anon, "RssFile": &mem.File}[name]
		if !ok || field == nil {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			return memory{}, fmt.Errorf("parse %s of %d: %w", name, pid, err)
		}
		*field = kb << 10
	}
	if mem.RSS == 0 {
		return memory{}, fmt.Errorf("no VmRSS for process %d", pid)
	}
	return mem, nil
}

// command is exec.CommandContext for a short-lived tool, in its own process
// group: when ctx ends, the group gets SIGTERM and, 5 s later, SIGKILL, so
// that what the tool started (go test's test binary) ends with it.
func command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}
