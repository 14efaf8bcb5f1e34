package bench

import "math/bits"

// RNG is a splitmix64 generator: one word of state, so that the workload's
// position in its random sequence moves with it to the destination.
type RNG struct{ S uint64 }

// Next returns the next 64 random bits.
func (r *RNG) Next() uint64 {
	r.S += 0x9e3779b97f4a7c15
	return Mix64(r.S)
}

// Float64 returns a uniform number in [0, 1).
func (r *RNG) Float64() float64 { return float64(r.Next()>>11) / (1 << 53) }

// Below returns a uniform number in [0, n) (Lemire's multiply-shift; n > 0).
func (r *RNG) Below(n uint64) uint64 {
	hi, _ := bits.Mul64(r.Next(), n)
	return hi
}

// Mix64 is splitmix64's finaliser: a bijective scramble of x.
func Mix64(x uint64) uint64 {
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}
