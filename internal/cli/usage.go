package cli

import (
	"flag"
	"fmt"
	"io"
	"strings"
)

// FlagGroup is a titled group of flags in --help.
type FlagGroup struct {
	Title string
	Flags []string // flag names, without dashes, in the order shown
}

// Usage writes a binary's --help: the synopsis, a description, then every
// flag of fs with two dashes (as the README writes them), in the groups
// given and, after them, any flag no group names under "Other flags". Each
// flag shows its argument name (the back-quoted word of its usage text, as
// flag.UnquoteUsage finds it), its text and its default where that is not
// the zero value.
func Usage(w io.Writer, synopsis, about string, fs *flag.FlagSet, groups []FlagGroup) {
	fmt.Fprintf(w, "Usage: %s\n\n", synopsis)
	if about != "" {
		fmt.Fprintf(w, "%s\n", about)
	}
	shown := map[string]bool{}
	for _, g := range groups {
		var fl []*flag.Flag
		for _, name := range g.Flags {
			if f := fs.Lookup(name); f != nil && !shown[name] {
				fl = append(fl, f)
				shown[name] = true
			}
		}
		printGroup(w, g.Title, fl)
	}
	var rest []*flag.Flag
	fs.VisitAll(func(f *flag.Flag) {
		if !shown[f.Name] {
			rest = append(rest, f)
		}
	})
	title := "Other flags"
	if len(groups) == 0 {
		title = "Flags"
	}
	printGroup(w, title, rest)
}

func printGroup(w io.Writer, title string, fl []*flag.Flag) {
	if len(fl) == 0 {
		return
	}
	fmt.Fprintf(w, "\n%s:\n", title)
	for _, f := range fl {
		name, text := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if name != "" {
			line += " " + name
		}
		fmt.Fprintf(w, "%s\n        %s", line, strings.ReplaceAll(text, "\n", "\n        "))
		if d := f.DefValue; d != "" && d != "0" && d != "false" && d != "0s" {
			if fmt.Sprintf("%T", f.Value) == "*flag.stringValue" {
				fmt.Fprintf(w, " (default %q)", d)
			} else {
				fmt.Fprintf(w, " (default %s)", d)
			}
		}
		fmt.Fprintln(w)
	}
}

// ParseError turns an error of flag.FlagSet.Parse (with its output
// discarded) into the one-line usage error a binary prints: it names the
// flag and points at --help.
func ParseError(binary string, err error) *UsageError {
	// The flag package names flags with one dash; the binaries' docs use two.
	msg := err.Error()
	for _, p := range []string{"not defined: -", "for flag -", "needs an argument: -"} {
		msg = strings.Replace(msg, p, p+"-", 1)
	}
	return &UsageError{Reason: fmt.Sprintf("%s (see %s --help)", msg, binary)}
}
