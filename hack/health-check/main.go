// Command health-check runs Argo CD health scripts the way Argo CD runs them: gopher-lua
// (Lua 5.1), the object as the global `obj`, the table the script returns read as
// {status, message}, a status outside Argo CD's set reported as Unknown.
//
//	health-check test DIR         every <group>/<Kind>/health_test.yaml under DIR: the script's
//	                              result for each inputPath must equal its healthStatus
//	health-check eval HEALTH_LUA  objects on stdin (JSON or YAML: one object, or a List as
//	                              `kubectl get -o json` prints it); one JSON result per line
//
// Libraries are those Argo CD opens for a script from argocd-cm without useOpenLibs (base,
// table, package), so a script that passes here also runs there; -open-libs opens all of
// them, as for Argo CD's built-in scripts. Argo CD's restricted os library is left out:
// tunnelop's scripts use none of it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"
	luajson "layeh.com/gopher-json"
	"sigs.k8s.io/yaml"
)

// HealthStatus is what a script returns, as Argo CD's health.HealthStatus.
type HealthStatus struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
}

// The statuses Argo CD accepts from a script; anything else reads as Unknown.
var validStatuses = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true,
	"Suspended": true, "Missing": true, "Unknown": true,
}

const invalidHealthStatus = "Lua returned an invalid health status"

// How long one script may run, as in Argo CD.
const scriptTimeout = time.Second

func main() {
	openLibs := flag.Bool("open-libs", false, "open every Lua library (Argo CD does so for built-in scripts only)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: health-check [-open-libs] test DIR | eval HEALTH_LUA < objects")
		flag.PrintDefaults()
	}
	flag.Parse()
	args := flag.Args()
	if len(args) != 2 {
		flag.Usage()
		os.Exit(2)
	}
	var err error
	switch args[0] {
	case "test":
		err = runTests(args[1], *openLibs)
	case "eval":
		err = evalStdin(args[1], *openLibs)
	default:
		err = fmt.Errorf("unknown command %q: use test or eval", args[0])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "health-check:", err)
		os.Exit(1)
	}
}

// execute runs `script` with `obj` and returns its health, as Argo CD's ExecuteHealthLua.
func execute(obj map[string]any, script string, openLibs bool) (*HealthStatus, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: !openLibs})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		return nil, err
	}
	returned := l.Get(-1)
	if returned.Type() != lua.LTTable {
		return nil, fmt.Errorf("expect table output from Lua script, not %s", returned.Type())
	}
	encoded, err := luajson.Encode(returned)
	if err != nil {
		return nil, err
	}
	health := &HealthStatus{}
	if err := json.Unmarshal(encoded, health); err != nil {
		return nil, err
	}
	if !validStatuses[health.Status] {
		return &HealthStatus{Status: "Unknown", Message: invalidHealthStatus}, nil
	}
	return health, nil
}

// toLua converts a decoded object into Lua values: maps to tables, lists to arrays,
// numbers to Lua numbers, null to nil.
func toLua(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case json.Number:
		return lua.LString(v)
	case []any:
		table := l.CreateTable(len(v), 0)
		for _, item := range v {
			table.Append(toLua(l, item))
		}
		return table
	case map[string]any:
		table := l.CreateTable(0, len(v))
		for key, item := range v {
			table.RawSetH(lua.LString(key), toLua(l, item))
		}
		return table
	}
	return lua.LNil
}

type testFile struct {
	Tests []struct {
		InputPath    string       `json:"inputPath"`
		HealthStatus HealthStatus `json:"healthStatus"`
	} `json:"tests"`
}

// runTests checks every health.lua under root against its health_test.yaml. A testdata file
// that no test names is an error too: it was meant to be checked.
func runTests(root string, openLibs bool) error {
	var scripts []string
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && d.Name() == "health.lua" {
			scripts = append(scripts, path)
		}
		return err
	})
	if err != nil {
		return err
	}
	if len(scripts) == 0 {
		return fmt.Errorf("no health.lua under %s", root)
	}
	sort.Strings(scripts)
	passed, failed := 0, 0
	for _, scriptPath := range scripts {
		dir := filepath.Dir(scriptPath)
		name, _ := filepath.Rel(root, dir)
		script, err := os.ReadFile(scriptPath)
		if err != nil {
			return err
		}
		var tests testFile
		if err := readYAML(filepath.Join(dir, "health_test.yaml"), &tests); err != nil {
			return err
		}
		if len(tests.Tests) == 0 {
			return fmt.Errorf("%s/health_test.yaml lists no tests", name)
		}
		named := map[string]bool{}
		for _, test := range tests.Tests {
			label := filepath.ToSlash(filepath.Join(name, test.InputPath))
			named[filepath.Clean(test.InputPath)] = true
			var obj map[string]any
			if err := readYAML(filepath.Join(dir, test.InputPath), &obj); err != nil {
				return err
			}
			got, err := execute(obj, string(script), openLibs)
			switch {
			case err != nil:
				failed++
				fmt.Printf("FAIL %s: %v\n", label, err)
			case *got != test.HealthStatus:
				failed++
				fmt.Printf("FAIL %s\n  got:  %s\n  want: %s\n", label, show(*got), show(test.HealthStatus))
			default:
				passed++
				fmt.Printf("ok   %s: %s\n", label, got.Status)
			}
		}
		unnamed, err := unnamedTestdata(dir, named)
		if err != nil {
			return err
		}
		for _, file := range unnamed {
			failed++
			fmt.Printf("FAIL %s/%s: not named by any test in health_test.yaml\n", name, file)
		}
	}
	fmt.Printf("%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		return errors.New("some health checks gave another result")
	}
	return nil
}

func unnamedTestdata(dir string, named map[string]bool) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(dir, "testdata"))
	if err != nil {
		return nil, err
	}
	var unnamed []string
	for _, entry := range entries {
		file := filepath.Join("testdata", entry.Name())
		if !entry.IsDir() && !named[file] {
			unnamed = append(unnamed, file)
		}
	}
	return unnamed, nil
}

func show(h HealthStatus) string {
	out, _ := json.Marshal(h)
	return string(out)
}

func readYAML(path string, into any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := yaml.Unmarshal(data, into); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// evalStdin prints the health of each object on stdin as one JSON line:
// {"kind", "namespace", "name", "status", "message"}.
func evalStdin(scriptPath string, openLibs bool) error {
	script, err := os.ReadFile(scriptPath)
	if err != nil {
		return err
	}
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("stdin: %w", err)
	}
	objects := []any{doc}
	if kind, _ := doc["kind"].(string); strings.HasSuffix(kind, "List") {
		objects, _ = doc["items"].([]any)
	}
	out := json.NewEncoder(os.Stdout)
	for _, item := range objects {
		obj, ok := item.(map[string]any)
		if !ok {
			return errors.New("stdin: an item is not an object")
		}
		health, err := execute(obj, string(script), openLibs)
		if err != nil {
			return fmt.Errorf("%s: %w", describe(obj), err)
		}
		meta, _ := obj["metadata"].(map[string]any)
		if err := out.Encode(map[string]any{
			"kind": obj["kind"], "namespace": meta["namespace"], "name": meta["name"],
			"status": health.Status, "message": health.Message,
		}); err != nil {
			return err
		}
	}
	return nil
}

func describe(obj map[string]any) string {
	meta, _ := obj["metadata"].(map[string]any)
	return fmt.Sprintf("%v %v/%v", obj["kind"], meta["namespace"], meta["name"])
}
