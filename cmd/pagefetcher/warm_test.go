package main

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"

	"github.com/postcopy/postcopy/pkg/image"
	"github.com/postcopy/postcopy/pkg/server"
)

// --warm against a page server from before the Warm and Freeze calls (one
// in this process, Options.NoWarm): one warning, and pagefetcher goes on
// to wait for the VMM as for a plain post-copy migration (here until
// --handoff-timeout).
func TestWarmOldServer(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "mem.img")
	if err := os.WriteFile(path, bytes.Repeat([]byte{7}, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	img, err := image.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	srv, err := server.NewServer(server.Options{Image: img, NoWarm: true})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(srv.GRPCServerOptions()...)
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	defer g.Stop()
	cmd := exec.Command(bins.PageFetcher, "--server", lis.Addr().String(), "--warm",
		"--uffd-socket", filepath.Join(dir, "u.sock"), "--handoff-timeout", "300ms")
	cmd.Env = append(os.Environ(), "POSTCOPY_TOKEN=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if code := cmd.ProcessState.ExitCode(); code != exitForced {
		t.Errorf("exit %d (%v), want %d (--handoff-timeout); stderr:\n%s", code, err, exitForced, stderr.String())
	}
	if n := strings.Count(stderr.String(), "the server cannot warm a cache"); n != 1 {
		t.Errorf("warned %d times that the server cannot warm, want once; stderr:\n%s", n, stderr.String())
	}
	if strings.Contains(stdout.String(), `"event":"warm"`) {
		t.Errorf("a warm line from a server that cannot warm:\n%s", stdout.String())
	}
}
