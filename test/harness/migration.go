package harness

import (
	"time"

	"github.com/postcopy/postcopy/pkg/events"
)

// ReadyTimeout is how long StartServer and StartFetcher wait for a ready
// line: generous, for race-enabled binaries on a loaded machine.
var ReadyTimeout = 60 * time.Second

// StartServer starts pageserver on 127.0.0.1:0 serving the image file with
// the token in tokenFile (none if empty), plus extra flags, and waits for its
// ready line. The Proc is returned even on error (nil only if it could not
// start), so that the caller can show its stderr and stop it.
func StartServer(b Bins, image, tokenFile string, extra []string, o StartOptions) (*Proc, events.ServerReady, error) {
	var ready events.ServerReady
	args := []string{"--listen", "127.0.0.1:0", "--source", "file:" + image}
	if tokenFile != "" {
		args = append(args, "--token-file", tokenFile)
	}
	args = append(args, extra...)
	p, err := Start("pageserver", b.PageServer, args, o)
	if err != nil {
		return nil, ready, err
	}
	return p, ready, p.WaitEvent("ready", ReadyTimeout, &ready)
}

// StartFetcher starts pagefetcher against the server at addr, listening for
// the VMM on socket, with the token in tokenFile (none if empty) plus extra
// flags, and waits for its ready line. The Proc is returned even on error, as
// by StartServer.
func StartFetcher(b Bins, addr, socket, tokenFile string, extra []string, o StartOptions) (*Proc, events.FetcherReady, error) {
	var ready events.FetcherReady
	args := []string{"--server", addr, "--uffd-socket", socket}
	if tokenFile != "" {
		args = append(args, "--token-file", tokenFile)
	}
	args = append(args, extra...)
	p, err := Start("pagefetcher", b.PageFetcher, args, o)
	if err != nil {
		return nil, ready, err
	}
	return p, ready, p.WaitEvent("ready", ReadyTimeout, &ready)
}
