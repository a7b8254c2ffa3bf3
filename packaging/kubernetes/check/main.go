// Command check validates Kubernetes manifests offline: every document of each file is
// decoded strictly into the Kubernetes API types it names (apps/v1, core/v1, ...), so an
// unknown or misspelt field, a duplicate field, a value of the wrong type or an unknown kind
// fails, as the API server's strict field validation would. Then each workload is checked
// for what dagfs needs: probes on named ports that exist, and volume mounts of volumes that
// exist. No cluster is needed.
//
//	go run ./packaging/kubernetes/check FILE...
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

func main() {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme} {
		if err := add(scheme); err != nil {
			panic(err)
		}
	}
	decoder := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
	failed := false
	for _, file := range os.Args[1:] {
		data, err := os.ReadFile(file)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for n := 1; ; n++ {
			doc, err := reader.Read()
			if err == io.EOF {
				break
			}
			if err != nil {
				fmt.Fprintf(os.Stderr, "%s: document %d: %v\n", file, n, err)
				failed = true
				break
			}
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			obj, kind, err := decoder.Decode(doc, nil, nil)
			if err != nil {
				fmt.Fprintf(os.Stderr, "%s: document %d: %v\n", file, n, err)
				failed = true
				continue
			}
			problems := check(obj)
			for _, problem := range problems {
				fmt.Fprintf(os.Stderr, "%s: %s: %s\n", file, kind.Kind, problem)
				failed = true
			}
			if len(problems) == 0 {
				fmt.Printf("%s: %s ok\n", file, kind.Kind)
			}
		}
	}
	if failed {
		os.Exit(1)
	}
}

// check returns what is inconsistent inside a workload's pod template.
func check(obj runtime.Object) []string {
	deployment, ok := obj.(*appsv1.Deployment)
	if !ok {
		return nil
	}
	var problems []string
	spec := deployment.Spec.Template.Spec
	volumes := map[string]bool{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = true
	}
	for _, c := range spec.Containers {
		ports := map[string]bool{}
		for _, p := range c.Ports {
			ports[p.Name] = true
		}
		for _, m := range c.VolumeMounts {
			if !volumes[m.Name] {
				problems = append(problems, fmt.Sprintf("%s/%s mounts volume %q, which is not defined", deployment.Name, c.Name, m.Name))
			}
		}
		for _, probe := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
			if probe == nil {
				continue
			}
			named := ""
			if probe.HTTPGet != nil {
				named = probe.HTTPGet.Port.StrVal
			} else if probe.TCPSocket != nil {
				named = probe.TCPSocket.Port.StrVal
			}
			if named != "" && !ports[named] {
				problems = append(problems, fmt.Sprintf("%s/%s probes port %q, which it does not declare", deployment.Name, c.Name, named))
			}
		}
	}
	return problems
}
