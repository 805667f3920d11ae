// Command cdicheck reads a CDI spec folder with the CDI project's own Go package
// (tags.cncf.io/container-device-interface, the code containerd and CRI-O use) and resolves
// and injects device names as a container runtime does, so the tests of gpupack's CDI specs
// (tests/device_plugin/test_cdi.py) check them against the real thing, not our reading of it.
//
//	cdicheck -spec-dir DIR [-env K=V]... [-simulate-missing-host-nodes] NAME...
//
// It loads DIR into a cdi.Cache (no auto-refresh), reports every spec error, resolves each
// fully qualified NAME (k8s.gpupack.io/gpu=GPU-...), applies the resolved devices' edits with
// Cache.InjectDevices to an OCI spec whose process environment is the -env values (what the
// kubelet's Allocate answer put there before the runtime injects CDI devices), and prints
// one JSON object:
//
//	{"specs": [{"path", "kind", "cdiVersion", "minimumVersion", "devices"}],
//	 "errors": ["path: error", ...], "unresolved": [...], "devices": [resolved names],
//	 "env": [...], "deviceNodes": [paths], "deviceRules": ["c 195:0 rw", ...],
//	 "simulatedHostNodes": [paths]}
//
// InjectDevices reads each device node's type and numbers from the host's node (stat) unless
// the spec gives them. A test machine has no /dev/nvidia0: with -simulate-missing-host-nodes,
// a node missing on this host is given type "c" and made-up numbers in the loaded copy before
// injection (and listed in simulatedHostNodes), which is what a host holding that node would
// supply. Exit status 0 when the report was written, 2 on bad arguments.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	cdispec "tags.cncf.io/container-device-interface/specs-go"
)

type specReport struct {
	Path           string   `json:"path"`
	Kind           string   `json:"kind"`
	CDIVersion     string   `json:"cdiVersion"`
	MinimumVersion string   `json:"minimumVersion"`
	Devices        []string `json:"devices"`
}

type report struct {
	Specs              []specReport `json:"specs"`
	Errors             []string     `json:"errors"`
	Unresolved         []string     `json:"unresolved"`
	Devices            []string     `json:"devices"`
	Env                []string     `json:"env"`
	DeviceNodes        []string     `json:"deviceNodes"`
	DeviceRules        []string     `json:"deviceRules"`
	SimulatedHostNodes []string     `json:"simulatedHostNodes"`
}

type envFlags []string

func (e *envFlags) String() string { return strings.Join(*e, ",") }

func (e *envFlags) Set(v string) error {
	if strings.IndexByte(v, '=') <= 0 {
		return fmt.Errorf("expected K=V, got %q", v)
	}
	*e = append(*e, v)
	return nil
}

func main() {
	specDir := flag.String("spec-dir", "", "the CDI spec folder to load")
	simulate := flag.Bool("simulate-missing-host-nodes", false, "give device nodes missing on this host made-up numbers")
	var env envFlags
	flag.Var(&env, "env", "K=V in the container's environment before injection (repeatable)")
	flag.Parse()
	if *specDir == "" {
		fmt.Fprintln(os.Stderr, "cdicheck: -spec-dir is required")
		os.Exit(2)
	}
	out := check(*specDir, env, *simulate, flag.Args())
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "cdicheck:", err)
		os.Exit(1)
	}
}

func check(specDir string, env []string, simulate bool, names []string) report {
	r := report{Specs: []specReport{}, Errors: []string{}, Unresolved: []string{}, Devices: []string{},
		Env: []string{}, DeviceNodes: []string{}, DeviceRules: []string{}, SimulatedHostNodes: []string{}}
	cache, err := cdi.NewCache(cdi.WithSpecDirs(specDir), cdi.WithAutoRefresh(false))
	if err != nil {
		r.Errors = append(r.Errors, "cache: "+err.Error())
		return r
	}
	for path, errs := range cache.GetErrors() {
		for _, e := range errs {
			r.Errors = append(r.Errors, path+": "+e.Error())
		}
	}
	sort.Strings(r.Errors)
	for _, vendor := range cache.ListVendors() {
		for _, spec := range cache.GetVendorSpecs(vendor) {
			minimum, _ := cdispec.MinimumRequiredVersion(spec.Spec)
			s := specReport{Path: spec.GetPath(), Kind: spec.Kind, CDIVersion: spec.Version, MinimumVersion: minimum, Devices: []string{}}
			for _, d := range spec.Devices {
				s.Devices = append(s.Devices, d.Name)
			}
			r.Specs = append(r.Specs, s)
		}
	}
	sort.Slice(r.Specs, func(i, j int) bool { return r.Specs[i].Path < r.Specs[j].Path })

	var resolved []string
	for _, name := range names {
		d := cache.GetDevice(name)
		if d == nil {
			r.Unresolved = append(r.Unresolved, name)
			continue
		}
		resolved = append(resolved, name)
		if simulate {
			r.SimulatedHostNodes = append(r.SimulatedHostNodes, fillMissing(d.GetSpec().ContainerEdits.DeviceNodes)...)
			r.SimulatedHostNodes = append(r.SimulatedHostNodes, fillMissing(d.ContainerEdits.DeviceNodes)...)
		}
	}
	r.Devices = append(r.Devices, resolved...)

	ociSpec := &oci.Spec{Process: &oci.Process{Env: append([]string{}, env...)}, Linux: &oci.Linux{}}
	if _, err := cache.InjectDevices(ociSpec, resolved...); err != nil {
		r.Errors = append(r.Errors, "inject: "+err.Error())
	}
	r.Env = append(r.Env, ociSpec.Process.Env...)
	for _, d := range ociSpec.Linux.Devices {
		r.DeviceNodes = append(r.DeviceNodes, d.Path)
	}
	if ociSpec.Linux.Resources != nil {
		for _, rule := range ociSpec.Linux.Resources.Devices {
			r.DeviceRules = append(r.DeviceRules, fmt.Sprintf("%s %d:%d %s", rule.Type, deref(rule.Major), deref(rule.Minor), rule.Access))
		}
	}
	return r
}

// fakeMajor numbers the nodes a test host lacks; 240-254 is Linux's range for local use.
const fakeMajor = 240

var fakeMinor int64

// fillMissing gives each node that is missing on this host, and not already specified, a
// character-device type and made-up numbers; returns their paths (each once).
func fillMissing(nodes []*cdispec.DeviceNode) []string {
	var filled []string
	for _, n := range nodes {
		host := n.HostPath
		if host == "" {
			host = n.Path
		}
		if n.Type != "" {
			continue
		}
		if _, err := os.Lstat(host); err == nil {
			continue
		}
		n.Type, n.Major, n.Minor = "c", fakeMajor, fakeMinor
		fakeMinor++
		filled = append(filled, n.Path)
	}
	return filled
}

func deref(p *int64) int64 {
	if p == nil {
		return -1
	}
	return *p
}
