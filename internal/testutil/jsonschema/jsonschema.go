// Package jsonschema validates JSON documents against a JSON Schema (draft
// 2020-12) that uses only the subset of the draft this repository's schemas
// need (docs/events.schema.json): type, properties, required,
// additionalProperties (a boolean), const, oneOf, minimum, minLength,
// maxLength, format "date-time", $ref to "#/$defs/...", and the
// annotations $schema, $id, title and description. A schema using any other
// keyword is refused when it is parsed, so that nothing in it is silently
// ignored.
package jsonschema

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Schema is a parsed schema document.
type Schema struct {
	root map[string]any
}

var supported = []string{
	"$schema", "$id", "$defs", "$ref", "title", "description",
	"type", "properties", "required", "additionalProperties", "const", "oneOf",
	"minimum", "minLength", "maxLength", "format",
}

// Load reads and parses the schema in file.
func Load(file string) (*Schema, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	s, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return s, nil
}

// Parse parses a schema document and checks that it uses only the
// supported keywords and that every $ref resolves.
func Parse(b []byte) (*Schema, error) {
	v, err := Decode(b)
	if err != nil {
		return nil, err
	}
	root, ok := v.(map[string]any)
	if !ok {
		return nil, errors.New("the schema is not an object")
	}
	s := &Schema{root: root}
	if err := s.check("", root); err != nil {
		return nil, err
	}
	return s, nil
}

// Decode decodes one JSON document, numbers as json.Number (so that
// integers are told from other numbers), refusing trailing data.
func Decode(b []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	if d.More() {
		return nil, errors.New("data after the JSON value")
	}
	return v, nil
}

// check walks a schema node at path (a JSON pointer into the schema).
func (s *Schema) check(path string, n map[string]any) error {
	for k, v := range n {
		if !slices.Contains(supported, k) {
			return fmt.Errorf("%s: unsupported keyword %q", orRoot(path), k)
		}
		p := path + "/" + k
		switch k {
		case "$defs", "properties":
			m, ok := v.(map[string]any)
			if !ok {
				return fmt.Errorf("%s: not an object", p)
			}
			for name, sub := range m {
				sm, ok := sub.(map[string]any)
				if !ok {
					return fmt.Errorf("%s/%s: not a schema object", p, name)
				}
				if err := s.check(p+"/"+name, sm); err != nil {
					return err
				}
			}
		case "oneOf":
			l, ok := v.([]any)
			if !ok || len(l) == 0 {
				return fmt.Errorf("%s: not a non-empty array", p)
			}
			for i, sub := range l {
				sm, ok := sub.(map[string]any)
				if !ok {
					return fmt.Errorf("%s/%d: not a schema object", p, i)
				}
				if err := s.check(p+"/"+strconv.Itoa(i), sm); err != nil {
					return err
				}
			}
		case "$ref":
			ref, _ := v.(string)
			if _, err := s.resolve(ref); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		case "type":
			t, _ := v.(string)
			if !slices.Contains([]string{"object", "string", "number", "integer", "boolean"}, t) {
				return fmt.Errorf("%s: unsupported type %v", p, v)
			}
		case "required":
			l, ok := v.([]any)
			if !ok {
				return fmt.Errorf("%s: not an array", p)
			}
			for _, e := range l {
				if _, ok := e.(string); !ok {
					return fmt.Errorf("%s: %v is not a string", p, e)
				}
			}
		case "additionalProperties":
			if _, ok := v.(bool); !ok {
				return fmt.Errorf("%s: only a boolean is supported", p)
			}
		case "minimum", "minLength", "maxLength":
			if _, ok := v.(json.Number); !ok {
				return fmt.Errorf("%s: not a number", p)
			}
		case "format":
			if v != "date-time" {
				return fmt.Errorf("%s: unsupported format %v", p, v)
			}
		}
	}
	// A required key the properties do not describe is a typo.
	if req, ok := n["required"].([]any); ok {
		props, _ := n["properties"].(map[string]any)
		for _, r := range req {
			if _, ok := props[r.(string)]; !ok {
				return fmt.Errorf("%s/required: %q is not among the properties", path, r)
			}
		}
	}
	return nil
}

func orRoot(path string) string {
	if path == "" {
		return "(root)"
	}
	return path
}

// resolve follows a "#/$defs/NAME" reference.
func (s *Schema) resolve(ref string) (map[string]any, error) {
	name, ok := strings.CutPrefix(ref, "#/$defs/")
	if !ok {
		return nil, fmt.Errorf("unsupported $ref %q (want #/$defs/NAME)", ref)
	}
	defs, _ := s.root["$defs"].(map[string]any)
	d, ok := defs[name].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("$ref %q: no such definition", ref)
	}
	return d, nil
}

// Validate validates the JSON document b against the schema's root.
func (s *Schema) Validate(b []byte) error {
	v, err := Decode(b)
	if err != nil {
		return err
	}
	return join(s.validate("", s.root, v))
}

// ValidateDef validates the JSON document b against the definition
// "$defs/def".
func (s *Schema) ValidateDef(def string, b []byte) error {
	d, err := s.resolve("#/$defs/" + def)
	if err != nil {
		return err
	}
	v, err := Decode(b)
	if err != nil {
		return err
	}
	return join(s.validate("", d, v))
}

func join(errs []string) error {
	if len(errs) == 0 {
		return nil
	}
	return errors.New(strings.Join(errs, "; "))
}

// validate returns what is wrong with the value v at path (a JSON
// pointer into the document) against schema node n.
func (s *Schema) validate(path string, n map[string]any, v any) []string {
	var errs []string
	bad := func(format string, a ...any) {
		errs = append(errs, orRoot(path)+": "+fmt.Sprintf(format, a...))
	}
	if ref, ok := n["$ref"].(string); ok {
		d, err := s.resolve(ref)
		if err != nil {
			bad("%v", err)
			return errs
		}
		errs = append(errs, s.validate(path, d, v)...)
	}
	if t, ok := n["type"].(string); ok {
		if got := typeOf(v); got != t && !(t == "number" && got == "integer") {
			bad("want %s, got %s %s", t, got, short(v))
			return errs
		}
	}
	if c, ok := n["const"]; ok && !reflect.DeepEqual(c, v) {
		bad("want %s, got %s", short(c), short(v))
	}
	if str, ok := v.(string); ok {
		l := utf8.RuneCountInString(str)
		if min, ok := intKeyword(n, "minLength"); ok && l < min {
			bad("length %d, want at least %d", l, min)
		}
		if max, ok := intKeyword(n, "maxLength"); ok && l > max {
			bad("length %d, want at most %d", l, max)
		}
		if n["format"] == "date-time" {
			if _, err := time.Parse(time.RFC3339Nano, str); err != nil {
				bad("not an RFC 3339 date-time: %v", err)
			}
		}
	}
	if num, ok := v.(json.Number); ok {
		if m, ok := n["minimum"].(json.Number); ok {
			f, _ := num.Float64()
			mf, _ := m.Float64()
			if f < mf {
				bad("%s is below the minimum %s", num, m)
			}
		}
	}
	if obj, ok := v.(map[string]any); ok {
		props, _ := n["properties"].(map[string]any)
		if req, ok := n["required"].([]any); ok {
			for _, r := range req {
				if _, ok := obj[r.(string)]; !ok {
					bad("missing required key %q", r)
				}
			}
		}
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			sub, ok := props[k].(map[string]any)
			if !ok {
				if n["additionalProperties"] == false {
					bad("key %q is not in the schema", k)
				}
				continue
			}
			errs = append(errs, s.validate(path+"/"+k, sub, obj[k])...)
		}
	}
	if l, ok := n["oneOf"].([]any); ok {
		var matched []int
		nearest, nearestErrs := -1, []string(nil)
		for i, sub := range l {
			e := s.validate(path, sub.(map[string]any), v)
			if len(e) == 0 {
				matched = append(matched, i)
			} else if nearest < 0 || len(e) < len(nearestErrs) {
				nearest, nearestErrs = i, e
			}
		}
		switch len(matched) {
		case 1:
		case 0:
			bad("matches none of oneOf; the nearest, [%d]: %s", nearest, strings.Join(nearestErrs, ", "))
		default:
			bad("matches oneOf's %v, want exactly one", matched)
		}
	}
	return errs
}

func intKeyword(n map[string]any, k string) (int, bool) {
	num, ok := n[k].(json.Number)
	if !ok {
		return 0, false
	}
	i, err := num.Int64()
	return int(i), err == nil
}

// typeOf returns the JSON Schema type of a decoded value; a number with no
// fractional part is an "integer".
func typeOf(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case string:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	case json.Number:
		if _, err := strconv.ParseInt(string(v), 10, 64); err == nil {
			return "integer"
		}
		if _, err := strconv.ParseUint(string(v), 10, 64); err == nil {
			return "integer"
		}
		if f, err := v.Float64(); err == nil && f == math.Trunc(f) && !math.IsInf(f, 0) {
			return "integer"
		}
		return "number"
	}
	return fmt.Sprintf("%T", v)
}

func short(v any) string {
	b, _ := json.Marshal(v)
	if len(b) > 60 {
		return string(b[:57]) + "..."
	}
	return string(b)
}

// Field is what a schema says of one key of an object.
type Field struct {
	// Type is the key's JSON type ("" if the schema does not say).
	Type string
	// Required says the key must be present.
	Required bool
	// Const is the key's "const", if any.
	Const any
	// Fields are an object's keys, with the schema's properties.
	Fields map[string]Field
}

// Fields returns the keys that the definition "$defs/def", an object,
// describes, with their types and, for objects, their own keys; $refs are
// followed.
func (s *Schema) Fields(def string) (map[string]Field, error) {
	d, err := s.resolve("#/$defs/" + def)
	if err != nil {
		return nil, err
	}
	f := s.field(d)
	if f.Type != "object" {
		return nil, fmt.Errorf("$defs/%s is not an object schema", def)
	}
	return f.Fields, nil
}

func (s *Schema) field(n map[string]any) Field {
	var f Field
	if ref, ok := n["$ref"].(string); ok {
		if d, err := s.resolve(ref); err == nil {
			f = s.field(d)
		}
	}
	if t, ok := n["type"].(string); ok {
		f.Type = t
	}
	if c, ok := n["const"]; ok {
		f.Const = c
	}
	if props, ok := n["properties"].(map[string]any); ok {
		f.Fields = map[string]Field{}
		for k, sub := range props {
			f.Fields[k] = s.field(sub.(map[string]any))
		}
		if req, ok := n["required"].([]any); ok {
			for _, r := range req {
				if sub, ok := f.Fields[r.(string)]; ok {
					sub.Required = true
					f.Fields[r.(string)] = sub
				}
			}
		}
	}
	return f
}
