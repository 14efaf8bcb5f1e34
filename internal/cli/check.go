package cli

import (
	"net"
	"strconv"
)

// CheckHostPort checks that addr, the value of --flag, is HOST:PORT with a
// numeric port: 0..65535 for an address to listen on (0: any free port),
// 1..65535 for one to dial. It resolves nothing. Its error is a
// *UsageError naming the flag.
func CheckHostPort(flag, addr string, listen bool) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return Usagef(flag, addr, "not host:port: %v", err)
	}
	if port == "" {
		return Usagef(flag, addr, "missing port")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return Usagef(flag, addr, "bad port %q", port)
	}
	if n == 0 && !listen {
		return Usagef(flag, addr, "port 0: want 1..65535")
	}
	return nil
}
