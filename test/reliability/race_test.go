//go:build race

package reliability

// raceEnabled: the binaries are built with -race too.
const raceEnabled = true
