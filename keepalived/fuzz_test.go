package keepalived

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	yaml "go.yaml.in/yaml/v3"
)

// FuzzImport: no keepalived.conf makes the import panic or hang, every
// failure is one of its four errors, and what it converts is YAML whose
// text reads back (quoting never lets a value from the file add keys).
func FuzzImport(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join("testdata", "golden", "*", "keepalived.conf"))
	for _, s := range seeds {
		if b, err := os.ReadFile(s); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("vrrp_instance \"a: b\" {\ninterface \"x\\ny\"\nvirtual_router_id 1\nvirtual_ipaddress {\n192.0.2.1\n}\nnotify_master \"/x 'a' \\\"b\\\" #c\"\n}\n"))
	f.Add([]byte("$A=${A}x\n@^ ${A} {\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "k.conf")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		res, err := Import(path, ImportOptions{Options: Options{ConfigID: "a"}, LookPath: fakeLookPath})
		var se *SyntaxError
		var re *ReadError
		var ce *ConvertError
		var rf *RefusedError
		switch {
		case err == nil:
		case errors.As(err, &se), errors.As(err, &re), errors.As(err, &ce), errors.As(err, &rf):
			return
		default:
			t.Fatalf("an error of no kind the command knows: %T %v", err, err)
		}
		var doc yaml.Node
		if err := yaml.Unmarshal(res.YAML, &doc); err != nil {
			t.Fatalf("the output is not YAML: %v\n%s", err, res.YAML)
		}
	})
}
