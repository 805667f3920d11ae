// Command benchclient calls a scheduler extender exactly as kube-scheduler does, through
// kube-scheduler's own extender client (k8s.io/kubernetes/pkg/scheduler.NewHTTPExtender:
// its transport, its JSON encoding of the extender/v1 types, its decoding of the answers):
// per pod, filter over every node and then prioritize over the nodes filter let through, one
// pod after another, as one scheduling cycle follows another. bench/extender_http.py runs it
// (--client go) to time the extender against the client kube-scheduler really uses.
//
// Input on stdin, JSON: {"url": "http://127.0.0.1:PORT", "nodes": [names], "pods": [Pod
// objects], "warmup": N}. Output on stdout, JSON: per-request latencies in milliseconds after
// the first N pods, the wall time and this process's CPU time of those decisions, and how many
// nodes each filter let through.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler"
	schedulerapi "k8s.io/kubernetes/pkg/scheduler/apis/config"
	"k8s.io/kubernetes/pkg/scheduler/framework"
)

type input struct {
	URL    string   `json:"url"`
	Nodes  []string `json:"nodes"`
	Pods   []v1.Pod `json:"pods"`
	Warmup int      `json:"warmup"`
}

type output struct {
	FilterMs     []float64 `json:"filter_ms"`
	PrioritizeMs []float64 `json:"prioritize_ms"`
	WallS        float64   `json:"wall_s"`
	CPUS         float64   `json:"cpu_s"` // this process's user + system CPU time over those decisions
	Fitting      []int     `json:"fitting"`
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func ms(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

func run() error {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		return fmt.Errorf("reading the input: %w", err)
	}
	ext, err := scheduler.NewHTTPExtender(&schedulerapi.Extender{
		URLPrefix: in.URL, FilterVerb: "filter", PrioritizeVerb: "prioritize", Weight: 5,
		NodeCacheCapable: true, HTTPTimeout: metav1.Duration{Duration: 30 * time.Second},
	})
	if err != nil {
		return err
	}
	nodes := make([]fwk.NodeInfo, len(in.Nodes))
	for i, name := range in.Nodes {
		info := framework.NewNodeInfo()
		info.SetNode(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}})
		nodes[i] = info
	}
	var out output
	start, cpu0 := time.Now(), cpuSeconds()
	for i := range in.Pods {
		if i == in.Warmup {
			out = output{}
			start, cpu0 = time.Now(), cpuSeconds()
		}
		t0 := time.Now()
		fitting, _, _, err := ext.Filter(&in.Pods[i], nodes)
		if err != nil {
			return fmt.Errorf("filter: %w", err)
		}
		t1 := time.Now()
		if _, _, err := ext.Prioritize(&in.Pods[i], fitting); err != nil {
			return fmt.Errorf("prioritize: %w", err)
		}
		t2 := time.Now()
		out.FilterMs = append(out.FilterMs, ms(t1.Sub(t0)))
		out.PrioritizeMs = append(out.PrioritizeMs, ms(t2.Sub(t1)))
		out.Fitting = append(out.Fitting, len(fitting))
	}
	out.WallS = time.Since(start).Seconds()
	out.CPUS = cpuSeconds() - cpu0
	return json.NewEncoder(os.Stdout).Encode(out)
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchclient:", err)
		os.Exit(1)
	}
}
