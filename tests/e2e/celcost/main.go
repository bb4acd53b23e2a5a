// celcost evaluates an admission policy's expressions with the API server's own
// admission CEL machinery (k8s.io/apiserver's composited compiler: typed, lazily
// evaluated variables, the cost budget) and prints the runtime cost of each.
//
// Input (stdin), one JSON document:
//
//	{"version": "1.36",
//	 "variables": [{"name": "...", "expression": "..."}, ...],
//	 "expressions": [{"name": "...", "expression": "..."}, ...],
//	 "object": {...pod...}, "namespaceObject": {...namespace...}}
//
// Output (stdout), one JSON line per variable, then per expression:
// {"name", "cost", "error"}. A variable's cost is what reading it adds once the
// variables before it were read (its own evaluation); an expression's is what it
// adds after every variable. "total" is one admission: the expressions alone,
// each variable counted once when first reached, as the API server charges it.
// "version" is the compatibility version policies are compiled with.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/google/cel-go/cel"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/version"
	"k8s.io/apiserver/pkg/admission"
	plugincel "k8s.io/apiserver/pkg/admission/plugin/cel"
	"k8s.io/apiserver/pkg/cel/environment"
)

type named struct {
	Name       string `json:"name"`
	Expression string `json:"expression"`
}

func (n named) GetExpression() string    { return n.Expression }
func (n named) ReturnTypes() []*cel.Type { return []*cel.Type{cel.AnyType} }
func (n named) GetName() string          { return n.Name }

type input struct {
	Version         string         `json:"version"`
	Variables       []named        `json:"variables"`
	Expressions     []named        `json:"expressions"`
	Object          map[string]any `json:"object"`
	NamespaceObject map[string]any `json:"namespaceObject"`
}

type result struct {
	Name  string `json:"name"`
	Cost  int64  `json:"cost"`
	Error string `json:"error,omitempty"`
}

const budget = int64(1) << 50

func fail(err error) {
	fmt.Fprintln(os.Stderr, "celcost:", err)
	os.Exit(2)
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fail(fmt.Errorf("bad input: %w", err))
	}
	if in.Version == "" {
		in.Version = "1.36"
	}
	compiler, err := plugincel.NewCompositedCompiler(environment.MustBaseEnvSet(version.MustParseGeneric(in.Version)))
	if err != nil {
		fail(err)
	}
	declarations := plugincel.OptionalVariableDeclarations{HasPatchTypes: true}
	variables := make([]plugincel.NamedExpressionAccessor, len(in.Variables))
	for i, v := range in.Variables {
		variables[i] = v
	}
	compiler.CompileAndStoreVariables(variables, declarations, environment.StoredExpressions)

	pod := &unstructured.Unstructured{Object: in.Object}
	gvk := schema.GroupVersionKind{Version: "v1", Kind: "Pod"}
	gvr := schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	var namespace corev1.Namespace
	raw, _ := json.Marshal(in.NamespaceObject)
	if err := json.Unmarshal(raw, &namespace); err != nil {
		fail(fmt.Errorf("namespaceObject: %w", err))
	}
	attributes := admission.NewAttributesRecord(pod, nil, gvk, namespace.Name, pod.GetName(), gvr, "",
		admission.Create, &metav1.CreateOptions{}, false, nil)
	versioned := &admission.VersionedAttributes{
		Attributes: attributes, VersionedObject: admission.NewLazyObject(pod), VersionedKind: gvk,
	}
	request := plugincel.CreateAdmissionRequest(attributes,
		metav1.GroupVersionResource(gvr), metav1.GroupVersionKind(gvk))

	// The cost of the first n expressions, read in one admission (variables cached).
	spent := func(expressions []plugincel.ExpressionAccessor) (int64, []plugincel.EvaluationResult, error) {
		condition := compiler.CompileCondition(expressions, declarations, environment.StoredExpressions)
		results, remaining, err := condition.ForInput(context.Background(), versioned, request,
			plugincel.OptionalVariableBindings{}, &namespace, budget)
		return budget - remaining, results, err
	}
	out := json.NewEncoder(os.Stdout)
	var sequence []plugincel.ExpressionAccessor
	var names []string
	for _, v := range in.Variables {
		sequence = append(sequence, named{Name: v.Name, Expression: "variables." + v.Name})
		names = append(names, v.Name)
	}
	for _, e := range in.Expressions {
		sequence = append(sequence, e)
		names = append(names, e.Name)
	}
	before := int64(0)
	for n := 1; n <= len(sequence); n++ {
		cost, results, err := spent(sequence[:n])
		res := result{Name: names[n-1], Cost: cost - before}
		if err != nil {
			res.Error = err.Error()
		} else if last := results[n-1]; last.Error != nil {
			res.Error = last.Error.Error()
		}
		_ = out.Encode(res)
		before = cost
	}
	total, _, err := spent(sequence[len(in.Variables):])
	res := result{Name: "total", Cost: total}
	if err != nil {
		res.Error = err.Error()
	}
	_ = out.Encode(res)
}
