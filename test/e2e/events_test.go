package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/postcopy/postcopy/pkg/events"
	"github.com/postcopy/postcopy/test/harness"
)

// An orchestrator's --id is echoed in every JSON line (ready, progress,
// summary) and every log line of both binaries, with logs as JSON and as
// text; every line is one docs/events.schema.json documents.
func TestIDInEveryLine(t *testing.T) {
	const id = "mig-42/vm.7"
	for _, logJSON := range []bool{true, false} {
		t.Run(fmt.Sprintf("log-json=%v", logJSON), func(t *testing.T) {
			args := []string{"--id", id, "--log-level", "debug"}
			if logJSON {
				args = append(args, "--log-json")
			}
			e, _, _ := migrate(t, migration{
				imageSize: 16 << 20, image: defaultImage,
				regions:     "4k:0x0:16M",
				pages:       16 << 8,
				serverArgs:  args,
				fetcherArgs: append([]string{"--progress", "--progress-interval", "1ms"}, args...),
			})
			for _, p := range []struct {
				proc   *harness.Proc
				events []string // each printed at least once
			}{{e.server, []string{"ready", "summary"}}, {e.fetcher, []string{"ready", "progress", "summary"}}} {
				lines := p.proc.Lines()
				for _, bad := range harness.CheckEvents(eventSchema, p.proc.Name, id, lines) {
					t.Error(bad)
				}
				seen := map[string]int{}
				for _, l := range lines {
					var h events.Header
					if json.Unmarshal([]byte(l), &h) == nil {
						seen[h.Event]++
					}
				}
				for _, ev := range p.events {
					if seen[ev] == 0 {
						t.Errorf("%s printed no %q line: %v", p.proc.Name, ev, seen)
					}
				}
				logs := strings.Split(strings.TrimSuffix(p.proc.Stderr(), "\n"), "\n")
				if len(logs) < 2 {
					t.Errorf("%s logged %d lines, want its log at debug level", p.proc.Name, len(logs))
				}
				for _, l := range logs {
					if !logHasID(l, id, logJSON) {
						t.Errorf("%s: a log line without id=%s: %q", p.proc.Name, id, l)
					}
				}
			}
		})
	}
}

// logHasID says whether the hclog line l (JSON or text) carries id.
func logHasID(l, id string, logJSON bool) bool {
	if !logJSON {
		return strings.Contains(l, " id="+id+" ") || strings.HasSuffix(l, " id="+id)
	}
	var m map[string]any
	return json.Unmarshal([]byte(l), &m) == nil && m["id"] == id
}
