package cli

import (
	"bytes"
	"flag"
	"strings"
	"testing"
	"time"
)

func TestUsage(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.String("server", "", "pageserver `address`")
	fs.String("listen", "127.0.0.1:7470", "where to listen")
	fs.Duration("timeout", 5*time.Second, "how long")
	fs.Bool("json", false, "JSON lines")
	fs.Int("stray", 3, "in no group")
	var b bytes.Buffer
	Usage(&b, "x --server ADDR [flags]", "Does x.", fs, []FlagGroup{
		{"Connection", []string{"server", "listen", "missing"}},
		{"Output", []string{"json", "timeout"}},
	})
	want := `Usage: x --server ADDR [flags]

Does x.

Connection:
  --server address
        pageserver address
  --listen string
        where to listen (default "127.0.0.1:7470")

Output:
  --json
        JSON lines
  --timeout duration
        how long (default 5s)

Other flags:
  --stray int
        in no group (default 3)
`
	if b.String() != want {
		t.Fatalf("usage:\n%s\nwant:\n%s", b.String(), want)
	}
	if strings.Contains(b.String(), "\n  -s") {
		t.Fatal("a flag with one dash")
	}
}

func TestParseError(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(new(bytes.Buffer))
	fs.Int("n", 1, "")
	err := fs.Parse([]string{"--n", "lots"})
	if err == nil {
		t.Fatal("no error")
	}
	u := ParseError("x", err)
	if got := u.Error(); !strings.Contains(got, "flag --n:") || !strings.HasSuffix(got, "(see x --help)") || strings.Contains(got, "\n") {
		t.Fatalf("ParseError = %q", got)
	}
	if ExitCode(u) != ExitUsage {
		t.Fatal("not a usage error")
	}
}
