package bench

import (
	"fmt"
	"strings"
)

// Content classes a page of the source workload's memory can belong to.
const (
	ClassRandom    = iota // incompressible random bytes
	ClassText             // text-like, compressible bytes
	ClassZero             // touched (populated) but all zero
	ClassUntouched        // never touched: not populated at the source
	numClasses
)

// ClassNames names the content classes, in class order.
var ClassNames = [numClasses]string{"random", "text", "zero", "untouched"}

// Mix is the share of each content class in the memory, in class order; the
// shares sum to 1.
type Mix [numClasses]float64

// ChunkPages is the granule of the content mix: each run of ChunkPages pages
// (64 KiB) has one class, chosen by a hash of its index.
const ChunkPages = 16

// The named content mixes of --content.
var contentMixes = map[string]Mix{
	"random": {1, 0, 0, 0},
	"text":   {0, 1, 0, 0},
	"mixed":  {0.35, 0.35, 0.15, 0.15},
}

// ParseContent returns the mix named by --content: random, text, mixed
// (35 % random, 35 % text, 15 % zero pages, 15 % never touched), or an
// explicit "R,T,Z,U" of four non-negative weights.
func ParseContent(s string) (Mix, error) {
	if m, ok := contentMixes[s]; ok {
		return m, nil
	}
	parts := strings.Split(s, ",")
	if len(parts) != numClasses {
		return Mix{}, fmt.Errorf("content %q: want random, text, mixed, or four weights R,T,Z,U (random, text, zero, untouched)", s)
	}
	var m Mix
	var sum float64
	for i, p := range parts {
		var v float64
		if _, err := fmt.Sscan(strings.TrimSpace(p), &v); err != nil || v < 0 {
			return Mix{}, fmt.Errorf("content %q: weight %q is not a non-negative number", s, p)
		}
		m[i] = v
		sum += v
	}
	if sum <= 0 {
		return Mix{}, fmt.Errorf("content %q: weights sum to zero", s)
	}
	for i := range m {
		m[i] /= sum
	}
	return m, nil
}

// String prints the mix as percentages.
func (m Mix) String() string {
	var parts []string
	for i, v := range m {
		if v > 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f%%", ClassNames[i], 100*v))
		}
	}
	return strings.Join(parts, ", ")
}

// ChunkClass is the content class of chunk c (pages c*ChunkPages onwards).
func (m Mix) ChunkClass(seed, c uint64) int {
	u := float64(Mix64(seed^0x243f6a8885a308d3^c)>>11) / (1 << 53)
	acc := 0.0
	for i, v := range m {
		acc += v
		if u < acc {
			return i
		}
	}
	for i := numClasses - 1; i >= 0; i-- { // rounding: the last class with weight
		if m[i] > 0 {
			return i
		}
	}
	return ClassRandom
}

// words is the vocabulary of the text-like content, most frequent first.
var words = strings.Fields(`the of and to in a is that for it as was with be by on not he this are or
his from at which but have an they you were her she there been one all we their has would when if so no
will more out up into do any your what some can only time other could them than these its may then like
memory page server migration process kernel source destination fault network buffer request response
state system value record index table query cache thread signal region offset length address handler
error retry timeout latency throughput bandwidth socket stream packet message header payload checksum
the the the of of and and to to a a in in is is that that for for it`)

// textCorpus builds n bytes of text-like content: words drawn with a skew,
// separated by spaces, with punctuation and line breaks, as deterministic as
// seed. It compresses about 3:1, like ordinary text.
func textCorpus(n int, seed uint64) []byte {
	r := RNG{S: seed}
	b := make([]byte, 0, n+64)
	col := 0
	for len(b) < n {
		// Square a uniform number to favour the first (frequent) words.
		u := r.Float64()
		w := words[int(u*u*float64(len(words)))]
		b = append(b, w...)
		col += len(w) + 1
		switch x := r.Below(100); {
		case col > 72:
			b = append(b, '.', '\n')
			col = 0
		case x < 6:
			b = append(b, ',', ' ')
		default:
			b = append(b, ' ')
		}
	}
	return b[:n]
}
