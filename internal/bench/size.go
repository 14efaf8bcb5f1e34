package bench

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseSize parses a byte size: a decimal number (fractions allowed) with an
// optional binary unit: K, M, G, T, optionally followed by "i" and/or "B"
// ("4G", "4GiB", "64MiB", "512m"), or "B"/none for bytes. Units are always
// powers of 1024: a memory size is never meant in decimal units here.
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("size %q: empty", s)
	}
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	if num == "" {
		return 0, fmt.Errorf("size %q: no number", s)
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %v", s, err)
	}
	unit = strings.TrimSuffix(unit, "b")
	unit = strings.TrimSuffix(unit, "i")
	var mul float64
	switch unit {
	case "":
		mul = 1
	case "k":
		mul = 1 << 10
	case "m":
		mul = 1 << 20
	case "g":
		mul = 1 << 30
	case "t":
		mul = 1 << 40
	default:
		return 0, fmt.Errorf("size %q: unknown unit (want K, M, G or T, optionally with iB)", s)
	}
	b := v * mul
	if b >= 1<<63 {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return uint64(b), nil
}

// FormatSize prints n bytes with the largest binary unit that divides it
// ("4 GiB", "64 MiB"), or with two decimals otherwise ("1.50 GiB").
func FormatSize(n uint64) string {
	units := []struct {
		name string
		v    uint64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}}
	for _, u := range units {
		if n >= u.v {
			if n%u.v == 0 {
				return fmt.Sprintf("%d %s", n/u.v, u.name)
			}
			return fmt.Sprintf("%.2f %s", float64(n)/float64(u.v), u.name)
		}
	}
	return fmt.Sprintf("%d B", n)
}

// ParseRate parses a tc rate ("1gbit", "10gbit", "500mbit", "100kbit",
// "1000000bit", "125mbps" for bytes per second) into bits per second. tc's
// decimal units are used: 1gbit = 10^9 bit/s.
func ParseRate(s string) (uint64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], t[i:]
	if num == "" {
		return 0, fmt.Errorf("rate %q: no number (want e.g. 1gbit, 10gbit, 500mbit)", s)
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("rate %q: %v", s, err)
	}
	mul := map[string]float64{
		"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
		"bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9, "tbps": 8e12,
	}[unit]
	if mul == 0 {
		return 0, fmt.Errorf("rate %q: unknown unit %q (want bit, kbit, mbit, gbit, or bps, kbps, mbps, gbps for bytes)", s, unit)
	}
	r := v * mul
	if r < 8000 || r > 1e13 {
		return 0, fmt.Errorf("rate %q: want between 8kbit and 10tbit", s)
	}
	return uint64(r), nil
}
