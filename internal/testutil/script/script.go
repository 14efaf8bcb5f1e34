// Package script runs scripted tests in the style of etcd's datadriven
// tests: text files of commands, each followed by the output it must give,
// so that a reviewer reads a state machine's decisions step by step.
//
// A script is a sequence of cases separated by blank lines; each case is one
// command, a "----" line and the expected output. Lines starting with # are
// comments. go test -rewrite writes the output the code gives instead (keep
// the comments; review the diff).
package script

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected output in testdata/*.txt")

// Run runs every testdata/*.txt as a subtest. For each file, start returns
// the function that executes one command: its output is compared with the
// script's; an error (a broken invariant, a malformed command) fails the
// test at once.
func Run(t *testing.T, start func() func(cmd string) (string, error)) {
	t.Helper()
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no scripts in testdata")
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) { runFile(t, f, start()) })
	}
}

type scriptCase struct {
	line     int
	cmd      string
	expected string
}

func parse(t *testing.T, data string) []scriptCase {
	var cases []scriptCase
	lines := strings.Split(data, "\n")
	for i := 0; i < len(lines); i++ {
		l := strings.TrimSpace(lines[i])
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		c := scriptCase{line: i + 1, cmd: l}
		if i+1 >= len(lines) || strings.TrimSpace(lines[i+1]) != "----" {
			t.Fatalf("line %d: command %q not followed by ----", i+1, l)
		}
		i += 2
		var exp []string
		for ; i < len(lines) && strings.TrimSpace(lines[i]) != ""; i++ {
			exp = append(exp, strings.TrimSpace(lines[i]))
		}
		c.expected = strings.Join(exp, "\n")
		cases = append(cases, c)
	}
	return cases
}

func runFile(t *testing.T, path string, do func(string) (string, error)) {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cases := parse(t, string(data))
	var out strings.Builder
	// Keep the comments that precede each case when rewriting.
	lines := strings.Split(string(data), "\n")
	prev := 0
	for _, c := range cases {
		got, err := do(c.cmd)
		if err != nil {
			t.Fatalf("%s:%d: %s: %v", path, c.line, c.cmd, err)
		}
		if *rewrite {
			for _, l := range lines[prev : c.line-1] {
				if strings.HasPrefix(strings.TrimSpace(l), "#") {
					out.WriteString(l + "\n")
				}
			}
			fmt.Fprintf(&out, "%s\n----\n%s\n\n", c.cmd, got)
			prev = c.line
			continue
		}
		if got != c.expected {
			t.Errorf("%s:%d: %s\ngot:\n%s\nwant:\n%s", path, c.line, c.cmd, got, c.expected)
		}
	}
	if *rewrite {
		if err := os.WriteFile(path, []byte(strings.TrimRight(out.String(), "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
