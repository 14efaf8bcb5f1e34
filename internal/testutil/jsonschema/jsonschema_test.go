package jsonschema

import (
	"strings"
	"testing"
)

const testSchema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "oneOf": [{"$ref": "#/$defs/a"}, {"$ref": "#/$defs/b"}],
  "$defs": {
    "n": {"type": "integer", "minimum": 0},
    "a": {
      "type": "object",
      "properties": {
        "event": {"type": "string", "const": "a"},
        "ts": {"type": "string", "format": "date-time"},
        "id": {"type": "string", "minLength": 1, "maxLength": 3},
        "x": {"$ref": "#/$defs/n"},
        "f": {"type": "number"},
        "in": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": false}
      },
      "required": ["event", "x"],
      "additionalProperties": false
    },
    "b": {
      "type": "object",
      "properties": {"event": {"type": "string", "const": "b"}},
      "required": ["event"]
    }
  }
}`

func TestValidate(t *testing.T) {
	s, err := Parse([]byte(testSchema))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		doc  string
		want string // "" for valid; else a substring of the error
	}{
		{`{"event":"a","x":1}`, ""},
		{`{"event":"a","x":1.0,"f":2,"ts":"2025-01-02T03:04:05.123456Z","id":"abc","in":{"ok":true}}`, ""},
		{`{"event":"b","anything":[1]}`, ""},
		{`{"event":"a"}`, `missing required key "x"`},
		{`{"event":"a","x":1.5}`, "/x: want integer, got number 1.5"},
		{`{"event":"a","x":-1}`, "/x: -1 is below the minimum 0"},
		{`{"event":"a","x":1,"y":2}`, `key "y" is not in the schema`},
		{`{"event":"a","x":1,"ts":"yesterday"}`, "/ts: not an RFC 3339 date-time"},
		{`{"event":"a","x":1,"id":""}`, "/id: length 0, want at least 1"},
		{`{"event":"a","x":1,"id":"abcd"}`, "/id: length 4, want at most 3"},
		{`{"event":"a","x":1,"f":"1"}`, `/f: want number, got string "1"`},
		{`{"event":"a","x":1,"in":{"ok":1}}`, "/in/ok: want boolean, got integer 1"},
		{`{"event":"a","x":1,"in":{}}`, `/in: missing required key "ok"`},
		{`{"event":"c"}`, "matches none of oneOf"},
		{`[]`, "want object, got array"},
		{`{"event":"a","x":1} {}`, "data after the JSON value"},
	} {
		// Through oneOf, whose message holds each branch's errors.
		err := s.Validate([]byte(tc.doc))
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.doc, err, tc.want)
		}
	}
	if err := s.ValidateDef("b", []byte(`{"event":"a","x":1}`)); err == nil || err.Error() != `/event: want "b", got "a"` {
		t.Errorf("ValidateDef(b) of an a = %v", err)
	}
}

func TestParseRefusesWhatItCannotCheck(t *testing.T) {
	for _, tc := range []struct{ schema, want string }{
		{`{"type":"object","patternProperties":{}}`, `unsupported keyword "patternProperties"`},
		{`{"$ref":"#/$defs/missing"}`, "no such definition"},
		{`{"$ref":"other.json#/x"}`, "unsupported $ref"},
		{`{"type":["string","null"]}`, "unsupported type"},
		{`{"type":"object","additionalProperties":{"type":"string"}}`, "only a boolean"},
		{`{"type":"string","format":"email"}`, "unsupported format"},
		{`{"type":"object","properties":{"a":{}},"required":["b"]}`, `"b" is not among the properties`},
		{`[]`, "not an object"},
	} {
		if _, err := Parse([]byte(tc.schema)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%s) = %v, want an error with %q", tc.schema, err, tc.want)
		}
	}
}

func TestFields(t *testing.T) {
	s, err := Parse([]byte(testSchema))
	if err != nil {
		t.Fatal(err)
	}
	f, err := s.Fields("a")
	if err != nil {
		t.Fatal(err)
	}
	if x := f["x"]; x.Type != "integer" || !x.Required {
		t.Errorf("x: %+v, want a required integer (through its $ref)", x)
	}
	if e := f["event"]; e.Const != "a" || e.Type != "string" {
		t.Errorf("event: %+v", e)
	}
	if in := f["in"]; in.Type != "object" || in.Required || !in.Fields["ok"].Required || in.Fields["ok"].Type != "boolean" {
		t.Errorf("in: %+v", in)
	}
	if _, err := s.Fields("n"); err == nil {
		t.Error("Fields of an integer definition: no error")
	}
}
