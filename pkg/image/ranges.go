package image

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Ranges selects what of a process a pid: image serves. A process's
// memory holds more than its workload — its stack, environment, heap and
// libraries, where secrets live — so a server serves only what its operator
// names.
type Ranges struct {
	all      bool
	extents  []Extent     // address ranges, each inside readable mappings
	patterns []mapPattern // mappings whose /proc/PID/maps path matches
	text     string
}

// ErrBadRanges means that Ranges select what a process does not have: an
// address range outside its readable mappings, a pattern that matches none.
// Such errors match ErrBadSource too.
var ErrBadRanges = errors.New("ranges select nothing servable")

func rangesError(format string, a ...any) error {
	return &imageError{msg: fmt.Sprintf(format, a...), kind: ErrBadSource, cause: ErrBadRanges}
}

// AllRanges selects every readable mapping.
var AllRanges = Ranges{all: true, text: "all"}

// String is the list as parsed.
func (r Ranges) String() string { return r.text }

// ParseRanges parses a comma-separated list of:
//
//	0xSTART-0xEND  the addresses [START, END), hexadecimal, page-aligned,
//	               each byte inside a readable mapping (checked at open)
//	map:PATTERN    every readable mapping whose path in /proc/PID/maps
//	               matches PATTERN, where * matches any run of characters
//	               (slashes and spaces too) and ? any one character, e.g.
//	               map:/memfd:guest_mem* for a VMM's guest memory
//	all            every readable mapping (stack, heap, libraries too)
//
// all stands alone. Errors name the item that is wrong.
func ParseRanges(s string) (Ranges, error) {
	r := Ranges{text: s}
	if s == "" {
		return r, errors.New("empty list")
	}
	for _, item := range strings.Split(s, ",") {
		switch {
		case item == "all":
			if s != "all" {
				return r, fmt.Errorf("%q: all stands alone", item)
			}
			r.all = true
		case strings.HasPrefix(item, "map:"):
			pat := item[len("map:"):]
			if pat == "" {
				return r, fmt.Errorf("%q: empty pattern", item)
			}
			r.patterns = append(r.patterns, mapPattern{pat, globRegexp(pat)})
		default:
			e, err := parseExtent(item)
			if err != nil {
				return r, err
			}
			r.extents = append(r.extents, e)
		}
	}
	return r, nil
}

// parseExtent parses "0xSTART-0xEND".
func parseExtent(item string) (Extent, error) {
	bad := func(why string) (Extent, error) {
		return Extent{}, fmt.Errorf("%q: %s (want 0xSTART-0xEND, map:PATTERN or all)", item, why)
	}
	a, b, ok := strings.Cut(item, "-")
	if !ok || !strings.HasPrefix(a, "0x") || !strings.HasPrefix(b, "0x") {
		return bad("not a range")
	}
	start, err1 := strconv.ParseUint(a[2:], 16, 64)
	end, err2 := strconv.ParseUint(b[2:], 16, 64)
	switch {
	case err1 != nil || err2 != nil:
		return bad("not hexadecimal addresses")
	case end <= start:
		return bad("end not above start")
	case start%osPage != 0 || end%osPage != 0:
		return bad(fmt.Sprintf("not aligned to the page size (%d)", osPage))
	}
	return Extent{Offset: start, Length: end - start}, nil
}

// mapPattern is a map:PATTERN item: its text and its regular expression.
type mapPattern struct {
	text string
	re   *regexp.Regexp
}

// globRegexp turns a pattern of * and ? into an anchored regular expression.
func globRegexp(pat string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString("^")
	for _, c := range pat {
		switch c {
		case '*':
			b.WriteString(".*")
		case '?':
			b.WriteString(".")
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

// restrict returns the parts of the readable mappings maps that r selects,
// in order, each piece keeping its mapping's attributes; an error names an
// address range not inside readable mappings, or a pattern that matches
// none.
func (r Ranges) restrict(name string, maps []mapping) ([]mapping, error) {
	if r.all {
		return maps, nil
	}
	want := make([]Extent, 0, len(r.extents)+len(maps))
	for _, e := range r.extents {
		pos, end := e.Offset, e.Offset+e.Length
		for _, m := range maps {
			if m.start <= pos && pos < m.end {
				pos = m.end
			}
		}
		if pos < end {
			return nil, rangesError("%s: range %#x-%#x: address %#x is not in a readable mapping",
				name, e.Offset, end, pos)
		}
		want = append(want, e)
	}
	for _, pat := range r.patterns {
		found := false
		for _, m := range maps {
			if pat.re.MatchString(m.name) {
				want = append(want, Extent{Offset: m.start, Length: m.end - m.start})
				found = true
			}
		}
		if !found {
			return nil, rangesError("%s: map:%s matches no readable mapping", name, pat.text)
		}
	}
	var out []mapping
	for _, m := range maps {
		// The pieces of m that some wanted extent covers, merged.
		var pieces []mapping
		for _, e := range want {
			s, t := max(m.start, e.Offset), min(m.end, e.Offset+e.Length)
			if s >= t {
				continue
			}
			pieces = append(pieces, mapping{start: s, end: t, perms: m.perms, inode: m.inode, name: m.name, anon: m.anon})
		}
		out = append(out, mergeMappings(pieces)...)
	}
	return out, nil
}

// mergeMappings sorts pieces of one mapping and merges those that overlap
// or touch.
func mergeMappings(p []mapping) []mapping {
	if len(p) < 2 {
		return p
	}
	for i := 1; i < len(p); i++ { // few pieces: insertion sort
		for j := i; j > 0 && p[j].start < p[j-1].start; j-- {
			p[j], p[j-1] = p[j-1], p[j]
		}
	}
	out := p[:1]
	for _, m := range p[1:] {
		last := &out[len(out)-1]
		if m.start <= last.end {
			last.end = max(last.end, m.end)
			continue
		}
		out = append(out, m)
	}
	return out
}
