package bench

import (
	"fmt"
	"math"
)

// Zipf draws ranks 0..n-1 with P(rank k) proportional to 1/(k+1)^theta, by
// the method of Gray et al. ("Quickly generating billion-record synthetic
// databases", SIGMOD 1994) that YCSB uses, which allows theta < 1 (YCSB's
// default is 0.99). Setup is O(n) (the zeta sum); each draw is O(1).
type Zipf struct {
	n                   uint64
	theta, alpha, zetan float64
	eta, half           float64
}

// NewZipf prepares a generator over n ranks with exponent theta in (0, 1).
func NewZipf(n uint64, theta float64) (*Zipf, error) {
	if n < 2 {
		return nil, fmt.Errorf("zipf: n = %d, want at least 2", n)
	}
	if !(theta > 0 && theta < 1) {
		return nil, fmt.Errorf("zipf: theta = %v, want 0 < theta < 1", theta)
	}
	z := &Zipf{n: n, theta: theta, alpha: 1 / (1 - theta)}
	z.zetan = zeta(n, theta)
	zeta2 := zeta(2, theta)
	z.eta = (1 - math.Pow(2/float64(n), 1-theta)) / (1 - zeta2/z.zetan)
	z.half = 1 + math.Pow(0.5, theta)
	return z, nil
}

func zeta(n uint64, theta float64) float64 {
	var s float64
	for i := uint64(1); i <= n; i++ {
		s += 1 / math.Pow(float64(i), theta)
	}
	return s
}

// Rank maps a uniform u in [0, 1) to a rank in [0, n).
func (z *Zipf) Rank(u float64) uint64 {
	uz := u * z.zetan
	if uz < 1 {
		return 0
	}
	if uz < z.half {
		return 1
	}
	r := uint64(float64(z.n) * math.Pow(z.eta*u-z.eta+1, z.alpha))
	if r >= z.n {
		r = z.n - 1
	}
	return r
}

// N is the number of ranks.
func (z *Zipf) N() uint64 { return z.n }

// Scrambled maps a rank to an item in [0, n) through a hash, so that the hot
// items are spread over the whole range instead of packed at its start (YCSB's
// "scrambled zipfian"). Several ranks may share an item.
func (z *Zipf) Scrambled(rank uint64) uint64 {
	return Mix64(rank^0x5bd1e9955bd1e995) % z.n
}
