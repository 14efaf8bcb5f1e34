package main

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/postcopy/postcopy/pkg/fetcher"
)

// Every figure of the fetcher's summary reaches its own key of the summary
// line: a field added to fetcher.Summary and not to the line fails here.
func TestSummaryLineCarriesEveryFigure(t *testing.T) {
	var s fetcher.Summary
	zero, _ := json.Marshal(migration(&s))
	seen := map[string]string{}
	var walk func(v reflect.Value, path string)
	walk = func(v reflect.Value, path string) {
		for i := 0; i < v.NumField(); i++ {
			f, name := v.Field(i), path+v.Type().Field(i).Name
			switch f.Kind() {
			case reflect.Struct:
				walk(f, name+".")
				continue
			case reflect.Uint64:
				f.SetUint(7)
			case reflect.Float64:
				f.SetFloat(7)
			default:
				t.Fatalf("fetcher.Summary.%s: a %s, which this test does not set", name, f.Kind())
			}
			got, _ := json.Marshal(migration(&s))
			f.SetZero()
			switch other, dup := seen[string(got)]; {
			case string(got) == string(zero):
				t.Errorf("fetcher.Summary.%s is not in the summary line", name)
			case dup:
				t.Errorf("fetcher.Summary.%s and .%s land on the same key: %s", other, name, got)
			}
			seen[string(got)] = name
		}
	}
	walk(reflect.ValueOf(&s).Elem(), "")
	if len(seen) < 10 {
		t.Errorf("only %d figures checked", len(seen))
	}
}
