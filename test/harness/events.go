package harness

import (
	"encoding/json"
	"fmt"
	"path/filepath"

	"github.com/postcopy/postcopy/internal/testutil/jsonschema"
	"github.com/postcopy/postcopy/internal/testutil/vmm"
	"github.com/postcopy/postcopy/pkg/events"
)

// The lines of pageserver and pagefetcher are pkg/events' types; the
// test VMM's lines are declared here.

// CheckSummary returns the inconsistencies of a successful migration's
// summary of totalPages pages: every page accounted for exactly once,
// faults at least the demand pages, no checksum errors.
func CheckSummary(s *events.Migration, totalPages uint64) []string {
	var bad []string
	p := s.Pages
	if p.Total != totalPages {
		bad = append(bad, fmt.Sprintf("pages.total %d, want %d", p.Total, totalPages))
	}
	if a := p.Accounted(); a != p.Total {
		bad = append(bad, fmt.Sprintf("demand %d + bulk %d + zero %d + removed %d + unmapped %d + confirmed %d = %d, want pages.total %d",
			p.Demand, p.Bulk, p.Zero, p.Removed, p.Unmapped, p.Confirmed, a, p.Total))
	}
	if s.Faults < p.Demand {
		bad = append(bad, fmt.Sprintf("%d faults but %d pages on demand", s.Faults, p.Demand))
	}
	if s.ChecksumErrors != 0 {
		bad = append(bad, fmt.Sprintf("%d checksum errors", s.ChecksumErrors))
	}
	if s.TotalS <= 0 {
		bad = append(bad, fmt.Sprintf("total_s %v", s.TotalS))
	}
	return bad
}

// EventSchema loads docs/events.schema.json from the module at root.
func EventSchema(root string) (*jsonschema.Schema, error) {
	return jsonschema.Load(filepath.Join(root, "docs", "events.schema.json"))
}

// CheckEvents returns what is wrong with the stdout lines of binary
// (events.PageServer or events.PageFetcher) against the schema: a line
// that is not a JSON object with an event the binary prints, or one
// invalid against its definition or the schema's root; and, with id not
// empty, a line without that "id".
func CheckEvents(schema *jsonschema.Schema, binary, id string, lines []string) []string {
	var bad []string
	for _, l := range lines {
		var head events.Header
		if err := json.Unmarshal([]byte(l), &head); err != nil {
			bad = append(bad, fmt.Sprintf("%s printed a line that is no JSON object: %q", binary, l))
			continue
		}
		line, ok := events.Lookup(binary, head.Event)
		if !ok {
			bad = append(bad, fmt.Sprintf("%s printed an event it is not documented to print: %s", binary, l))
			continue
		}
		if err := schema.ValidateDef(line.Def(), []byte(l)); err != nil {
			bad = append(bad, fmt.Sprintf("%s: %s: %v", line.Def(), l, err))
		} else if err := schema.Validate([]byte(l)); err != nil {
			bad = append(bad, fmt.Sprintf("%s against the schema's root: %s: %v", line.Def(), l, err))
		}
		if id != "" && head.ID != id {
			bad = append(bad, fmt.Sprintf("%s: id %q, want %q: %s", line.Def(), head.ID, id, l))
		}
	}
	return bad
}

// VMMResult is the test VMM's final line.
type VMMResult struct {
	Event          string         `json:"event"`
	Regions        string         `json:"regions"`
	Pages          uint64         `json:"pages"`
	Bytes          uint64         `json:"bytes"`
	Threads        int            `json:"threads"`
	Touch          string         `json:"touch"`
	Reads          uint64         `json:"reads"`
	TouchMS        float64        `json:"touch_ms"`
	StoppedEarly   bool           `json:"stopped_early"`
	Discarded      bool           `json:"discarded"`
	Verified       bool           `json:"verified"`
	Mismatches     uint64         `json:"mismatches"`
	DiscardedPages uint64         `json:"discarded_pages"`
	VerifyMS       float64        `json:"verify_ms"`
	FirstMismatch  []vmm.Mismatch `json:"first_mismatches"`
	HandlerClosed  bool           `json:"handler_closed"`
	Error          string         `json:"error"`
	// What the guest felt, timed in the VMM's threads (see vmm --help).
	vmm.GuestView
}
