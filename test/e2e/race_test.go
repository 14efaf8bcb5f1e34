//go:build race

package e2e

// raceEnabled: the binaries are built with -race too.
const raceEnabled = true
