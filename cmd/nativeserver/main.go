// Command nativeserver runs the reference native session server: the OpenCode
// v1 session API with client-chosen ids, stored under -data.
//
//	go run ./cmd/nativeserver -addr 127.0.0.1:4096 -data ./native-data
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/nativeserver"
)

func main() {
	m := &Main{}
	if err := m.ParseFlags(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := m.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// Main is the program: flags, then Run until the context ends.
type Main struct {
	Addr   string
	Config nativeserver.Config
}

// ParseFlags reads the command line.
func (m *Main) ParseFlags(args []string) error {
	fs := flag.NewFlagSet("nativeserver", flag.ContinueOnError)
	wd, _ := os.Getwd()
	fs.StringVar(&m.Addr, "addr", "127.0.0.1:4096", "listen address")
	fs.StringVar(&m.Config.DataDir, "data", "native-data", "data folder (created if missing)")
	fs.StringVar(&m.Config.Directory, "directory", wd, "project directory of sessions created without one")
	duplicates := fs.String("duplicates", "match", "duplicate policy: match, return or reject")
	if err := fs.Parse(args); err != nil {
		return err
	}
	policy, err := idmap.ParseDuplicatePolicy(*duplicates)
	m.Config.Duplicates = policy
	return err
}

// Run serves until ctx ends, then shuts down gracefully (open event streams
// are cut after 5 s).
func (m *Main) Run(ctx context.Context) error {
	srv, err := nativeserver.New(m.Config)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", m.Addr)
	if err != nil {
		return err
	}
	httpServer := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	slog.Info("native session server listening", "url", "http://"+ln.Addr().String(), "data", m.Config.DataDir)
	errc := make(chan error, 1)
	go func() { errc <- httpServer.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := httpServer.Shutdown(shutdown); err != nil {
		return httpServer.Close()
	}
	return nil
}
