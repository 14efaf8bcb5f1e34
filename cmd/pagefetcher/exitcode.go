package main

// Exit codes, for orchestrators. Keep README.md in step.
const (
	exitOK          = 0  // every page resident, ranges unregistered, summary printed
	exitError       = 1  // any other failure (message on stderr)
	exitUsage       = 2  // bad flags or flag values
	exitUnreachable = 3  // the server could not be reached (address, TLS, protocol version)
	exitAuth        = 4  // the server refused the token
	exitHandoff     = 5  // the VMM's layout does not fit the image (a failed or refused handshake is logged, and the wait goes on)
	exitVMMGone     = 6  // the VMM exited before the migration finished
	exitSourceLost  = 7  // the source is gone: reconnect window exceeded, or source process exited
	exitImageChange = 8  // the server now serves a different image
	exitForced      = 9  // stopped before the end: a second signal, --drain-timeout, a signal before any handoff, or --handoff-timeout
	exitRunning     = 10 // --warm: at the handoff the server found the source process still running (its copies cannot be confirmed)
)
