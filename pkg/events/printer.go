package events

import (
	"encoding/json"
	"io"
	"sync"
	"time"
)

// Printer writes a binary's lines: each event stamped with its name, the
// time, the version and the id, as one line of JSON in a single write. It
// is safe for concurrent use.
type Printer struct {
	mu      sync.Mutex
	w       io.Writer
	version string
	id      string
	now     func() time.Time
}

// NewPrinter returns a Printer writing to w (stdout) for a binary of the
// given version, with the orchestrator's id ("": none).
func NewPrinter(w io.Writer, version, id string) *Printer {
	return &Printer{w: w, version: version, id: id, now: time.Now}
}

// Print fills in e's Header and writes it.
func (p *Printer) Print(e Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := e.header()
	h.Event, h.TS, h.Version, h.ID = e.Name(), p.now().UTC().Format(TimeFormat), p.version, p.id
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	_, err = p.w.Write(append(b, '\n'))
	return err
}
