// Package testutil holds helpers shared by the project's tests.
package testutil

import (
	"os"
	"testing"
)

// RequireEnv is the environment variable that turns a skip for a missing
// kernel feature or privilege into a failure. `make test` and CI set it.
const RequireEnv = "POSTCOPY_REQUIRE_UFFD"

// Required reports whether missing userfaultfd or root must fail a test.
func Required() bool { return os.Getenv(RequireEnv) == "1" }

// SkipOrFail skips t with the reason, or fails it when RequireEnv is set:
// tests that need the kernel feature must run where CI promises it.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if Required() {
		t.Fatalf("required by %s=1 but unavailable: "+format, append([]any{RequireEnv}, args...)...)
	}
	t.Skipf(format, args...)
}

// RequireRoot skips (or fails, see SkipOrFail) unless running as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		SkipOrFail(t, "needs root (euid %d)", os.Geteuid())
	}
}
