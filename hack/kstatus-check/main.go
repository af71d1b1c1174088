// Command kstatus-check prints the kstatus of Kubernetes objects, as Flux, kpt and the
// cli-utils applier compute it (sigs.k8s.io/cli-utils/pkg/kstatus/status): Current,
// InProgress, Failed, Terminating or Unknown, from the object's generation, its
// status.observedGeneration and its Ready, Reconciling and Stalled conditions.
//
//	kubectl get tunnels -A -o json | kstatus-check
//
// Objects come on stdin as JSON or YAML: one object, or a List (as `kubectl get -o json`
// prints it). One JSON line per object: {"kind", "namespace", "name", "status", "message"}.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: kstatus-check < objects (JSON or YAML: an object or a List)")
		os.Exit(2)
	}
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus-check:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	data, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("stdin: %w", err)
	}
	items := []any{doc}
	if kind, _ := doc["kind"].(string); strings.HasSuffix(kind, "List") {
		items, _ = doc["items"].([]any)
	}
	encoder := json.NewEncoder(out)
	for _, item := range items {
		obj, ok := item.(map[string]any)
		if !ok {
			return errors.New("stdin: an item is not an object")
		}
		// Decoded generically, every number is a float64; through Unstructured's own
		// decoder integers are int64, as kstatus reads generations.
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(mustJSON(obj)); err != nil {
			return fmt.Errorf("%s: %w", describe(obj), err)
		}
		result, err := status.Compute(u)
		if err != nil {
			return fmt.Errorf("%s: %w", describe(obj), err)
		}
		if err := encoder.Encode(map[string]string{
			"kind": u.GetKind(), "namespace": u.GetNamespace(), "name": u.GetName(),
			"status": result.Status.String(), "message": result.Message,
		}); err != nil {
			return err
		}
	}
	return nil
}

func mustJSON(obj map[string]any) []byte {
	out, err := json.Marshal(obj)
	if err != nil {
		panic(err) // decoded from JSON a moment ago: it encodes again
	}
	return out
}

func describe(obj map[string]any) string {
	meta, _ := obj["metadata"].(map[string]any)
	return fmt.Sprintf("%v %v/%v", obj["kind"], meta["namespace"], meta["name"])
}
