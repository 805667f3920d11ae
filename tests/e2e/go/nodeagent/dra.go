package main

// The DRA half of the node agent (on with --dra-registry-dir): the kubelet's own DRA manager
// (k8s.io/kubernetes/pkg/kubelet/cm/dra) behind the kubelet's own plugin manager
// (k8s.io/kubernetes/pkg/kubelet/pluginmanager), which watches a plugin registration folder as
// the kubelet watches /var/lib/kubelet/plugins_registry. A real DRA driver (gpupack-dra-driver)
// registers there exactly as with a kubelet; the DRA manager then calls its DRAPlugin service
// (NodePrepareResources before a pod's containers start, NodeUnprepareResources after they
// stopped) and checkpoints the claims it prepared in its state folder, as the kubelet does.

import (
	"context"
	"fmt"
	"os"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/record"
	pluginwatcherapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
	"k8s.io/kubernetes/pkg/kubelet/cm/dra"
	"k8s.io/kubernetes/pkg/kubelet/pluginmanager"
	"k8s.io/kubernetes/pkg/kubelet/pluginmanager/cache"
)

// startDRA starts the DRA manager and the plugin manager that registers drivers with it.
func (a *agent) startDRA(ctx context.Context) error {
	for _, d := range []string{a.opts.draRegistryDir, a.opts.draStateDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	manager, err := dra.NewManager(a.logger, a.client, a.opts.draStateDir)
	if err != nil {
		return fmt.Errorf("DRA manager: %w", err)
	}
	getNode := func(ctx context.Context) (*v1.Node, error) {
		return a.client.CoreV1().Nodes().Get(ctx, a.opts.nodeName, metav1.GetOptions{})
	}
	if err := manager.Start(ctx, a.activePods, getNode, &allSourcesReady{}); err != nil {
		return fmt.Errorf("DRA manager start: %w", err)
	}
	plugins := pluginmanager.NewPluginManager(a.opts.draRegistryDir, &record.FakeRecorder{})
	plugins.AddHandler(pluginwatcherapi.DRAPlugin, &registrations{PluginHandler: manager.GetWatcherHandler(), agent: a})
	go plugins.Run(ctx, &allSourcesReady{}, ctx.Done())
	a.dra = manager
	a.logger.Info("DRA manager serving", "registry", a.opts.draRegistryDir, "state", a.opts.draStateDir)
	return nil
}

// registrations passes the plugin manager's calls to the DRA manager's handler and keeps the
// names of the drivers it registered, so a test can wait for "the driver is registered" on
// the Node (the agent's state) instead of racing the first pod against the registration.
type registrations struct {
	cache.PluginHandler
	agent *agent
}

func (r *registrations) RegisterPlugin(ctx context.Context, name, endpoint string, versions []string, timeout *time.Duration) error {
	if err := r.PluginHandler.RegisterPlugin(ctx, name, endpoint, versions, timeout); err != nil {
		return err
	}
	r.agent.mu.Lock()
	r.agent.draDrivers.Insert(name)
	r.agent.mu.Unlock()
	return nil
}

func (r *registrations) DeRegisterPlugin(ctx context.Context, name, endpoint string) {
	r.PluginHandler.DeRegisterPlugin(ctx, name, endpoint)
	r.agent.mu.Lock()
	r.agent.draDrivers.Delete(name)
	r.agent.mu.Unlock()
}

// prepareDRA is the kubelet's PrepareDynamicResources at pod admission: every claim of the pod
// is prepared by its driver before any container starts. A pod without claims is a no-op.
func (a *agent) prepareDRA(ctx context.Context, pod *v1.Pod) error {
	if a.dra == nil || len(pod.Spec.ResourceClaims) == 0 && pod.Status.ExtendedResourceClaimStatus == nil {
		return nil
	}
	if err := a.dra.PrepareResources(ctx, pod); err != nil {
		return err
	}
	a.mu.Lock()
	a.prepared[pod.UID] = pod.DeepCopy()
	a.mu.Unlock()
	return nil
}

// draCDIDevices are the CDI devices the DRA manager gives container c (the runtime would
// inject them), from the claims the container references and the pod's extended-resource claim.
func (a *agent) draCDIDevices(pod *v1.Pod, c *v1.Container) ([]string, error) {
	if a.dra == nil {
		return nil, nil
	}
	info, err := a.dra.GetResources(pod, c)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(info.CDIDevices))
	for _, d := range info.CDIDevices {
		out = append(out, d.Name)
	}
	return out, nil
}

// unprepareDRA is the kubelet's UnprepareDynamicResources once a pod's containers are gone.
func (a *agent) unprepareDRA(ctx context.Context, pod *v1.Pod) error {
	if a.dra == nil {
		return nil
	}
	if err := a.dra.UnprepareResources(ctx, pod); err != nil {
		return err
	}
	a.mu.Lock()
	delete(a.prepared, pod.UID)
	a.mu.Unlock()
	return nil
}
