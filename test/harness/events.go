package harness

import (
	"fmt"

	"github.com/postcopy/postcopy/internal/vmm"
)

// ServerReady is pageserver's ready line.
type ServerReady struct {
	Event      string `json:"event"`
	Addr       string `json:"addr"`
	Source     string `json:"source"`
	Size       uint64 `json:"size"`
	Generation string `json:"generation"`
	TLS        bool   `json:"tls"`
}

// ServerSummary is pageserver's {"event":"summary",...} line, printed on
// exit.
type ServerSummary struct {
	Event          string  `json:"event"`
	Graceful       bool    `json:"graceful"`
	UptimeSeconds  float64 `json:"uptime_seconds"`
	SessionsTotal  uint64  `json:"sessions_total"`
	SessionsOpen   int     `json:"sessions_open"`
	DemandRequests uint64  `json:"demand_requests"`
	DemandBytes    uint64  `json:"demand_bytes"`
	BulkRequests   uint64  `json:"bulk_requests"`
	BulkBytes      uint64  `json:"bulk_bytes"`
	ZeroPages      uint64  `json:"zero_pages"`
	Errors         uint64  `json:"errors"`
}

// FetcherReady is pagefetcher's ready line.
type FetcherReady struct {
	Event      string `json:"event"`
	UFFDSocket string `json:"uffd_socket"`
	Server     string `json:"server"`
	ImageSize  uint64 `json:"image_size"`
	Generation string `json:"generation"`
}

// Summary is the body of pagefetcher's final summary line.
type Summary struct {
	TotalS float64 `json:"total_s"`
	Pages  struct {
		Total    uint64 `json:"total"`
		Demand   uint64 `json:"demand"`
		Bulk     uint64 `json:"bulk"`
		Zero     uint64 `json:"zero"`
		Removed  uint64 `json:"removed"`
		Unmapped uint64 `json:"unmapped"`
	} `json:"pages"`
	BytesReceived  uint64 `json:"bytes_received"`
	Faults         uint64 `json:"faults"`
	FaultsDup      uint64 `json:"faults_duplicate"`
	FaultLatencyUS struct {
		P50  float64 `json:"p50"`
		P99  float64 `json:"p99"`
		P999 float64 `json:"p999"`
		Max  float64 `json:"max"`
	} `json:"fault_latency_us"`
	BlocktimeMS    float64 `json:"blocktime_ms"`
	FirstPageMS    float64 `json:"first_page_ms"`
	Reconnects     uint64  `json:"reconnects"`
	ChecksumErrors uint64  `json:"checksum_errors"`
}

// SummaryLine is pagefetcher's {"event":"summary",...} line.
type SummaryLine struct {
	Event   string  `json:"event"`
	OK      bool    `json:"ok"`
	Error   string  `json:"error"`
	Summary Summary `json:"summary"`
}

// Accounted is the number of pages the summary says arrived or were dropped.
func (s *Summary) Accounted() uint64 {
	return s.Pages.Demand + s.Pages.Bulk + s.Pages.Zero + s.Pages.Removed + s.Pages.Unmapped
}

// Check returns the inconsistencies of a successful migration's summary of
// totalPages pages: every page accounted for exactly once, faults at least
// the demand pages, no checksum errors.
func (s *Summary) Check(totalPages uint64) []string {
	var bad []string
	if s.Pages.Total != totalPages {
		bad = append(bad, fmt.Sprintf("pages.total %d, want %d", s.Pages.Total, totalPages))
	}
	if a := s.Accounted(); a != s.Pages.Total {
		bad = append(bad, fmt.Sprintf("demand %d + bulk %d + zero %d + removed %d + unmapped %d = %d, want pages.total %d",
			s.Pages.Demand, s.Pages.Bulk, s.Pages.Zero, s.Pages.Removed, s.Pages.Unmapped, a, s.Pages.Total))
	}
	if s.Faults < s.Pages.Demand {
		bad = append(bad, fmt.Sprintf("%d faults but %d pages on demand", s.Faults, s.Pages.Demand))
	}
	if s.ChecksumErrors != 0 {
		bad = append(bad, fmt.Sprintf("%d checksum errors", s.ChecksumErrors))
	}
	if s.TotalS <= 0 {
		bad = append(bad, fmt.Sprintf("total_s %v", s.TotalS))
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
