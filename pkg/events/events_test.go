package events

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/postcopy/postcopy/internal/testutil/jsonschema"
)

const schemaFile = "../../docs/events.schema.json"

func loadSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	s, err := jsonschema.Load(schemaFile)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// goFields describes a struct type's JSON keys as the schema does.
func goFields(t reflect.Type) map[string]jsonschema.Field {
	fs := map[string]jsonschema.Field{}
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		tag := sf.Tag.Get("json")
		if sf.Anonymous && tag == "" {
			for k, f := range goFields(sf.Type) {
				fs[k] = f
			}
			continue
		}
		if !sf.IsExported() || tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if name == "" {
			name = sf.Name
		}
		f := jsonschema.Field{Required: !strings.Contains(","+opts+",", ",omitempty,")}
		switch sf.Type.Kind() {
		case reflect.String:
			f.Type = "string"
		case reflect.Bool:
			f.Type = "boolean"
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			f.Type = "integer"
		case reflect.Float32, reflect.Float64:
			f.Type = "number"
		case reflect.Struct:
			f.Type = "object"
			f.Fields = goFields(sf.Type)
		default:
			f.Type = "unsupported " + sf.Type.String()
		}
		fs[name] = f
	}
	return fs
}

// diff lists where the Go type's keys (want) and the schema's (got) differ.
func diff(path string, goKeys, schemaKeys map[string]jsonschema.Field) []string {
	var out []string
	keys := map[string]bool{}
	for k := range goKeys {
		keys[k] = true
	}
	for k := range schemaKeys {
		keys[k] = true
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	for _, k := range sorted {
		g, inGo := goKeys[k]
		s, inSchema := schemaKeys[k]
		p := path + "/" + k
		switch {
		case !inSchema:
			out = append(out, p+": in the Go type, not in the schema")
		case !inGo:
			out = append(out, p+": in the schema, not in the Go type")
		case g.Type != s.Type:
			out = append(out, fmt.Sprintf("%s: Go type says %s, schema %s", p, g.Type, s.Type))
		case g.Required != s.Required:
			out = append(out, fmt.Sprintf("%s: required in Go (no omitempty) %v, in the schema %v", p, g.Required, s.Required))
		case g.Type == "object":
			out = append(out, diff(p, g.Fields, s.Fields)...)
		}
	}
	return out
}

// The Go types and docs/events.schema.json list the same keys, with the
// same JSON types, required the same way, and the same event names.
func TestTypesMatchSchema(t *testing.T) {
	s := loadSchema(t)
	for _, l := range Lines() {
		fields, err := s.Fields(l.Def())
		if err != nil {
			t.Errorf("%s: %v", l.Def(), err)
			continue
		}
		e := l.New()
		for _, d := range diff(l.Def(), goFields(reflect.TypeOf(e).Elem()), fields) {
			t.Error(d)
		}
		if c := fields["event"].Const; c != e.Name() || l.Event != e.Name() {
			t.Errorf("%s: schema's event const %v, Go type's name %q, Lines says %q", l.Def(), c, e.Name(), l.Event)
		}
	}
}

// filled sets every field of the struct v points to to a non-zero value,
// so that omitempty keys are printed too.
func filled(v reflect.Value) {
	for i := 0; i < v.NumField(); i++ {
		f := v.Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString("x")
		case reflect.Bool:
			f.SetBool(true)
		case reflect.Uint, reflect.Uint64, reflect.Uint32:
			f.SetUint(3)
		case reflect.Float64:
			f.SetFloat(0.25)
		case reflect.Struct:
			filled(f)
		}
	}
}

// Every line, as Printer prints it with every key set, is valid against
// its definition and against the schema's root (exactly one of oneOf);
// with no id, there is no "id" key.
func TestPrintedLinesValidate(t *testing.T) {
	s := loadSchema(t)
	for _, id := range []string{"vm-7/run 3", ""} {
		for _, l := range Lines() {
			e := l.New()
			filled(reflect.ValueOf(e).Elem())
			setGeneration(e)
			var buf bytes.Buffer
			if err := NewPrinter(&buf, "v1.2.3", id).Print(e); err != nil {
				t.Fatal(err)
			}
			line := buf.Bytes()
			if err := s.ValidateDef(l.Def(), line); err != nil {
				t.Errorf("%s: %s: %v", l.Def(), line, err)
			}
			if err := s.Validate(line); err != nil {
				t.Errorf("%s against the root: %s: %v", l.Def(), line, err)
			}
			if hasID := bytes.Contains(line, []byte(`"id":`)); hasID != (id != "") {
				t.Errorf("%s with id %q: %s", l.Def(), id, line)
			}
		}
	}
}

// setGeneration gives the lines with a generation a valid one.
func setGeneration(e Event) {
	switch e := e.(type) {
	case *ServerReady:
		e.Generation = "0123456789abcdef"
	case *FetcherReady:
		e.Generation = "0123456789abcdef"
	}
}

func TestPrinter(t *testing.T) {
	var buf bytes.Buffer
	p := NewPrinter(&buf, "v0.9.0", "job-1")
	p.now = func() time.Time { return time.Date(2025, 3, 4, 5, 6, 7, 8000, time.FixedZone("CET", 3600)) }
	e := &Progress{ElapsedS: 1.5, ResidentPages: 2, TotalPages: 4, ReceivedBytes: 8192, ReceivedBytesPerS: 1e6, Faults: 1}
	e.Event, e.Version = "stale", "stale" // the printer decides these
	if err := p.Print(e); err != nil {
		t.Fatal(err)
	}
	want := `{"event":"progress","ts":"2025-03-04T04:06:07.000008Z","version":"v0.9.0","id":"job-1","elapsed_s":1.5,` +
		`"resident_pages":2,"total_pages":4,"received_bytes":8192,"received_bytes_per_s":1000000,"faults":1}` + "\n"
	if buf.String() != want {
		t.Errorf("printed\n%s\nwant\n%s", buf.String(), want)
	}
	var back Progress
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if ts, err := back.Time(); err != nil || !ts.Equal(p.now()) {
		t.Errorf("Time() = %v, %v; want %v", ts, err, p.now())
	}
}

func TestCheckID(t *testing.T) {
	for _, ok := range []string{"a", "vm-7", "job 12/run 3", "ünïcödé", strings.Repeat("x", MaxIDLen)} {
		if err := CheckID(ok); err != nil {
			t.Errorf("CheckID(%q) = %v", ok, err)
		}
	}
	for id, want := range map[string]string{
		"":                              "empty",
		strings.Repeat("x", MaxIDLen+1): "129 bytes, want at most 128",
		"a\nb":                          "unprintable character U+000A at byte 1",
		"tab\there":                     "unprintable character U+0009 at byte 3",
		"\x1b[31m":                      "unprintable character U+001B at byte 0",
		"bad\xffutf8":                   "not valid UTF-8",
		"nbsp\u00a0":                    "unprintable character U+00A0 at byte 4",
	} {
		if err := CheckID(id); err == nil || err.Error() != want {
			t.Errorf("CheckID(%q) = %v, want %q", id, err, want)
		}
	}
}

func TestLookup(t *testing.T) {
	l, ok := Lookup(PageFetcher, "summary")
	if !ok || l.Def() != "pagefetcher.summary" {
		t.Fatalf("Lookup = %+v, %v", l, ok)
	}
	if _, ok := l.New().(*FetcherSummary); !ok {
		t.Errorf("pagefetcher's summary is a %T", l.New())
	}
	if _, ok := Lookup(PageServer, "progress"); ok {
		t.Error("pageserver prints no progress line")
	}
}
