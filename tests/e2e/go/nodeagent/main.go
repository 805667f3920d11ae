// Command nodeagent is the kubelet's half of a node for gpupack's end-to-end tests.
//
// It embeds the kubelet's own device manager (k8s.io/kubernetes/pkg/kubelet/cm/devicemanager)
// on a device plugin folder of its own: it serves kubelet.sock there, so a real
// gpupack-device-plugin registers with it exactly as with a kubelet, and every call our plugin
// receives (Register, ListAndWatch, GetPreferredAllocation, Allocate, PreStartContainer) comes
// from the kubelet's code, with the kubelet's checkpoint file and restart behaviour. With
// --dra-registry-dir it also embeds the kubelet's DRA manager behind the kubelet's plugin
// manager (dra.go), so gpupack-dra-driver registers and prepares claims as on a kubelet; the
// CDI devices the DRA manager gives a container are recorded with the device manager's.
//
// Around the device manager it does the few things a kubelet does that the tests need:
//   - creates its Node and keeps the device plugin resources of the Node's capacity and
//     allocatable in step with the device manager's GetCapacity, as the kubelet's node status
//     loop does (removed resources drop to 0);
//   - watches the pods bound to its node and admits each one like the kubelet's topology
//     manager admit handler: Allocate for every init container and container, in order; then
//     GetDeviceRunContainerOptions per container (what the runtime would be given);
//   - records what each container received (environment, device nodes, mounts, annotations,
//     CDI devices, device ids per resource) as <record-dir>/pods/<pod uid>.json, and the
//     node's device state as <record-dir>/node.json, each written atomically, and its own pid
//     with the device counts as the Node condition GpupackNodeAgent (tests watch for it);
//   - serves the kubelet's PodResources API with the kubelet's own server code when asked
//     (--pod-resources-socket), so a plugin can learn which container holds which device;
//   - marks the pod Running (or Failed with reason UnexpectedAdmissionError, as the kubelet
//     does when the device manager refuses it), and deletes pods whose deletion was requested
//     (no containers to stop), which frees their devices in the device manager.
//
// Restarting the process behaves like a kubelet restart: the device manager reads its
// checkpoint, cleans the plugin folder (our plugin's sockets disappear) and serves a new
// kubelet.sock; plugins register again.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"sort"
	"sync"
	"syscall"
	"time"
	_ "unsafe" // go:linkname, see newManagerImpl

	cadvisorapi "github.com/google/cadvisor/lib/model"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/kubelet/cm/containermap"
	"k8s.io/kubernetes/pkg/kubelet/cm/devicemanager"
	"k8s.io/kubernetes/pkg/kubelet/cm/dra"
	"k8s.io/kubernetes/pkg/kubelet/cm/topologymanager"
	"k8s.io/kubernetes/pkg/kubelet/lifecycle"
)

// newManagerImpl is the device manager's own constructor. The exported NewManagerImpl fixes
// the socket to /var/lib/kubelet/device-plugins/kubelet.sock; the unexported one (which the
// kubelet's own unit tests use) takes the socket path, so several agents can run side by side
// in temporary folders without root. go:linkname reaches it unchanged: the code that runs is
// the kubelet's.
//
//go:linkname newManagerImpl k8s.io/kubernetes/pkg/kubelet/cm/devicemanager.newManagerImpl
func newManagerImpl(logger klog.Logger, socketPath string, topology []cadvisorapi.Node, topologyAffinityStore topologymanager.Store) (*devicemanager.ManagerImpl, error)

const runtimeName = "gpupack-nodeagent"

type options struct {
	kubeconfig     string
	nodeName       string
	pluginDir      string
	recordDir      string
	statusInterval time.Duration
	podResources   string
	cpu            string
	memory         string
	pods           string
	draRegistryDir string
	draStateDir    string
}

// containerRecord is what one container would have been started with.
type containerRecord struct {
	Env         map[string]string   `json:"env"`
	Devices     []deviceRecord      `json:"devices"`
	Mounts      []mountRecord       `json:"mounts"`
	Annotations map[string]string   `json:"annotations"`
	CDIDevices  []string            `json:"cdiDevices"`
	DeviceIDs   map[string][]string `json:"deviceIDs"` // resource -> device ids the device manager gave
}

type deviceRecord struct {
	HostPath      string `json:"hostPath"`
	ContainerPath string `json:"containerPath"`
	Permissions   string `json:"permissions"`
}

type mountRecord struct {
	HostPath      string `json:"hostPath"`
	ContainerPath string `json:"containerPath"`
	ReadOnly      bool   `json:"readOnly"`
}

type podRecord struct {
	Namespace  string                     `json:"namespace"`
	Name       string                     `json:"name"`
	UID        string                     `json:"uid"`
	Node       string                     `json:"node"`
	Admitted   bool                       `json:"admitted"`
	Error      string                     `json:"error,omitempty"`
	Containers map[string]containerRecord `json:"containers"`
}

// nodeRecord is the device manager's view of the node, rewritten whenever it changes.
type nodeRecord struct {
	Node        string              `json:"node"`
	AgentPID    int                 `json:"agentPID"`
	Capacity    map[string]int64    `json:"capacity"`
	Allocatable map[string]int64    `json:"allocatable"`
	Healthy     map[string][]string `json:"healthy"`    // resource -> healthy device ids
	DRADrivers  []string            `json:"draDrivers"` // DRA drivers registered with the DRA manager
}

// agentConditionType is a Node condition that tells which agent process last published the
// device manager's counts, so a test can watch for "this restarted agent has the plugin's
// devices again" through the API instead of reading files.
const agentConditionType v1.NodeConditionType = "GpupackNodeAgent"

type agentState struct {
	PID         int              `json:"pid"`
	Capacity    map[string]int64 `json:"capacity"`
	Allocatable map[string]int64 `json:"allocatable"`
	DRADrivers  []string         `json:"draDrivers"`
}

func setCondition(n *v1.Node, c v1.NodeCondition) {
	now := metav1.Now()
	c.LastHeartbeatTime, c.LastTransitionTime = now, now
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == c.Type {
			n.Status.Conditions[i] = c
			return
		}
	}
	n.Status.Conditions = append(n.Status.Conditions, c)
}

type agent struct {
	opts    options
	client  kubernetes.Interface
	manager *devicemanager.ManagerImpl
	dra     *dra.Manager // nil unless --dra-registry-dir
	pods    cache.Indexer
	queue   workqueue.TypedRateLimitingInterface[types.UID]
	logger  klog.Logger

	mu       sync.Mutex
	admitted sets.Set[types.UID] // pods this process admitted or found running
	// pods whose DRA claims this process prepared, as last seen: a pod deleted at once
	// (grace period 0) is gone from the informer before its claims are unprepared
	prepared map[types.UID]*v1.Pod
	// DRA drivers registered with the DRA manager (dra.go), published in the agent's state
	draDrivers sets.Set[string]
	// device plugin resources published on the Node by this process (to zero removed ones)
	published sets.Set[string]
}

func main() {
	var o options
	klog.InitFlags(nil)
	flag.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig of the API server (required)")
	flag.StringVar(&o.nodeName, "node-name", "", "name of the Node this agent is (required)")
	flag.StringVar(&o.pluginDir, "plugin-dir", "", "device plugin folder: kubelet.sock and the checkpoint live here (required)")
	flag.StringVar(&o.recordDir, "record-dir", "", "folder for node.json and pods/<uid>.json (required)")
	flag.DurationVar(&o.statusInterval, "status-interval", 100*time.Millisecond,
		"how often the device manager's capacity is compared with what the Node shows (the kubelet's nodeStatusUpdateFrequency, shortened for tests)")
	flag.StringVar(&o.podResources, "pod-resources-socket", "", "serve the kubelet's PodResources API (v1) on this socket; empty: off")
	flag.StringVar(&o.cpu, "cpu", "64", "cpu capacity of the Node")
	flag.StringVar(&o.memory, "memory", "512Gi", "memory capacity of the Node")
	flag.StringVar(&o.pods, "pods", "250", "pod capacity of the Node")
	flag.StringVar(&o.draRegistryDir, "dra-registry-dir", "", "run the kubelet's DRA manager; DRA drivers register in this folder (the kubelet's plugins_registry); empty: off")
	flag.StringVar(&o.draStateDir, "dra-state-dir", "", "the DRA manager's checkpoint folder (default: <plugin-dir>/dra)")
	flag.Parse()
	if o.kubeconfig == "" || o.nodeName == "" || o.pluginDir == "" || o.recordDir == "" {
		fmt.Fprintln(os.Stderr, "nodeagent: --kubeconfig, --node-name, --plugin-dir and --record-dir are required")
		os.Exit(2)
	}
	if o.draStateDir == "" {
		o.draStateDir = filepath.Join(o.pluginDir, "dra")
	}
	if err := run(o); err != nil {
		klog.ErrorS(err, "nodeagent failed")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}

func run(o options) error {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	logger := klog.LoggerWithValues(klog.Background(), "node", o.nodeName)
	ctx = klog.NewContext(ctx, logger)

	cfg, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	for _, d := range []string{o.pluginDir, filepath.Join(o.recordDir, "pods")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}

	a := &agent{
		opts:       o,
		client:     client,
		logger:     logger,
		admitted:   sets.New[types.UID](),
		published:  sets.New[string](),
		prepared:   map[types.UID]*v1.Pod{},
		draDrivers: sets.New[string](),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[types.UID](),
			workqueue.TypedRateLimitingQueueConfig[types.UID]{Name: "pods"}),
	}
	if err := a.ensureNode(ctx); err != nil {
		return fmt.Errorf("node: %w", err)
	}

	factory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(lo *metav1.ListOptions) {
			lo.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", o.nodeName).String()
		}))
	podInformer := factory.Core().V1().Pods().Informer()
	a.pods = podInformer.GetIndexer()
	enqueue := func(obj any) {
		if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = tomb.Obj
		}
		if pod, ok := obj.(*v1.Pod); ok {
			a.queue.Add(pod.UID)
		}
	}
	if _, err := podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	}); err != nil {
		return err
	}
	if err := podInformer.AddIndexers(cache.Indexers{"uid": func(obj any) ([]string, error) {
		return []string{string(obj.(*v1.Pod).UID)}, nil
	}}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), podInformer.HasSynced) {
		return errors.New("pod informer did not sync")
	}

	// What a kubelet learns from the container runtime at start: the containers of the pods
	// already running here (the device manager keeps their devices, from its checkpoint).
	containers := containermap.NewContainerMap()
	running := sets.New[string]()
	for _, obj := range a.pods.List() {
		pod := obj.(*v1.Pod)
		if pod.Status.Phase != v1.PodRunning {
			continue
		}
		a.admitted.Insert(pod.UID)
		for _, c := range allContainers(pod) {
			id := containerID(pod, c.Name)
			containers.Add(string(pod.UID), c.Name, id)
			running.Insert(id)
		}
	}

	manager, err := newManagerImpl(logger, filepath.Join(o.pluginDir, "kubelet.sock"), nil, topologymanager.NewFakeManager(logger))
	if err != nil {
		return fmt.Errorf("device manager: %w", err)
	}
	a.manager = manager
	if err := manager.Start(logger, a.activePods, &allSourcesReady{}, containers, running); err != nil {
		return fmt.Errorf("device manager start: %w", err)
	}
	logger.Info("device manager serving", "socket", filepath.Join(o.pluginDir, "kubelet.sock"))
	if o.draRegistryDir != "" {
		if err := a.startDRA(ctx); err != nil {
			return err
		}
	}
	if o.podResources != "" {
		if err := a.servePodResources(ctx, o.podResources); err != nil {
			return fmt.Errorf("pod resources API: %w", err)
		}
	}

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); a.syncNodeStatusLoop(ctx) }()
	go func() { defer wg.Done(); a.podWorker(ctx) }()
	<-ctx.Done()
	logger.Info("stopping")
	a.queue.ShutDown()
	err = manager.Stop(logger)
	wg.Wait()
	return err
}

type allSourcesReady struct{}

func (allSourcesReady) AddSource(string) {}
func (allSourcesReady) AllReady() bool   { return true }

func allContainers(pod *v1.Pod) []v1.Container {
	return append(append([]v1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...)
}

func containerID(pod *v1.Pod, name string) string {
	return fmt.Sprintf("%s://%s/%s", runtimeName, pod.UID, name)
}

// activePods is the kubelet's GetActivePods: pods on this node that are not terminal.
// The device manager frees the devices of every pod it does not find here.
func (a *agent) activePods() []*v1.Pod {
	var out []*v1.Pod
	for _, obj := range a.pods.List() {
		pod := obj.(*v1.Pod)
		if pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed || pod.DeletionTimestamp != nil {
			continue
		}
		out = append(out, pod)
	}
	return out
}

func (a *agent) baseResources() (v1.ResourceList, error) {
	out := v1.ResourceList{}
	for name, value := range map[v1.ResourceName]string{v1.ResourceCPU: a.opts.cpu, v1.ResourceMemory: a.opts.memory, v1.ResourcePods: a.opts.pods} {
		q, err := resource.ParseQuantity(value)
		if err != nil {
			return nil, fmt.Errorf("--%s: %w", name, err)
		}
		out[name] = q
	}
	return out, nil
}

func (a *agent) ensureNode(ctx context.Context) error {
	base, err := a.baseResources()
	if err != nil {
		return err
	}
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:   a.opts.nodeName,
		Labels: map[string]string{"kubernetes.io/hostname": a.opts.nodeName, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
	}}
	if _, err := a.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return a.updateNodeStatus(ctx, func(n *v1.Node) {
		if n.Status.Capacity == nil {
			n.Status.Capacity = v1.ResourceList{}
		}
		if n.Status.Allocatable == nil {
			n.Status.Allocatable = v1.ResourceList{}
		}
		for name, q := range base {
			n.Status.Capacity[name] = q
			n.Status.Allocatable[name] = q
		}
		setCondition(n, v1.NodeCondition{
			Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "KubeletReady", Message: "gpupack nodeagent is posting ready status",
		})
		n.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "127.0.0.1"}, {Type: v1.NodeHostName, Address: a.opts.nodeName}}
		n.Status.NodeInfo.KubeletVersion = "gpupack-nodeagent"
		n.Status.NodeInfo.OperatingSystem = "linux"
		n.Status.NodeInfo.Architecture = "amd64"
	})
}

func (a *agent) updateNodeStatus(ctx context.Context, mutate func(*v1.Node)) error {
	for {
		node, err := a.client.CoreV1().Nodes().Get(ctx, a.opts.nodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		mutate(node)
		_, err = a.client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
		if !apierrors.IsConflict(err) {
			return err
		}
	}
}

// syncNodeStatusLoop is the kubelet's node status loop for device plugin resources: compare the
// device manager's capacity with what was last published and update the Node when it differs.
func (a *agent) syncNodeStatusLoop(ctx context.Context) {
	var last *nodeRecord
	ticker := time.NewTicker(a.opts.statusInterval)
	defer ticker.Stop()
	for {
		capacity, allocatable, removed := a.manager.GetCapacity(a.logger)
		rec := &nodeRecord{Node: a.opts.nodeName, AgentPID: os.Getpid(), Capacity: map[string]int64{}, Allocatable: map[string]int64{}, Healthy: map[string][]string{}}
		a.mu.Lock()
		rec.DRADrivers = sets.List(a.draDrivers)
		a.mu.Unlock()
		for name, q := range capacity {
			rec.Capacity[string(name)] = q.Value()
		}
		for name, q := range allocatable {
			rec.Allocatable[string(name)] = q.Value()
		}
		for res, devs := range a.manager.GetAllocatableDevices(a.logger) {
			ids := make([]string, 0, len(devs))
			for id := range devs {
				ids = append(ids, id)
			}
			sort.Strings(ids)
			rec.Healthy[res] = ids
		}
		if last == nil || !reflect.DeepEqual(*last, *rec) || len(removed) > 0 {
			// the record goes first, so a test that saw the Node change can read it
			if err := writeJSON(filepath.Join(a.opts.recordDir, "node.json"), rec); err != nil {
				a.logger.Error(err, "writing node record")
			}
			state, _ := json.Marshal(agentState{PID: rec.AgentPID, Capacity: rec.Capacity, Allocatable: rec.Allocatable, DRADrivers: rec.DRADrivers})
			err := a.updateNodeStatus(ctx, func(n *v1.Node) {
				setCondition(n, v1.NodeCondition{
					Type: agentConditionType, Status: v1.ConditionTrue, Reason: "DeviceManagerState", Message: string(state),
				})
				for _, name := range sets.List(a.published) {
					if _, ok := capacity[v1.ResourceName(name)]; !ok {
						// as the kubelet: a resource the device manager no longer has drops to 0
						n.Status.Capacity[v1.ResourceName(name)] = *resource.NewQuantity(0, resource.DecimalSI)
						n.Status.Allocatable[v1.ResourceName(name)] = *resource.NewQuantity(0, resource.DecimalSI)
					}
				}
				for name, q := range capacity {
					n.Status.Capacity[name] = q
					a.published.Insert(string(name))
				}
				for name, q := range allocatable {
					n.Status.Allocatable[name] = q
				}
				for name := range capacity {
					if _, ok := allocatable[name]; !ok {
						n.Status.Allocatable[name] = *resource.NewQuantity(0, resource.DecimalSI)
					}
				}
			})
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				a.logger.Error(err, "updating node status")
			} else {
				a.logger.V(2).Info("node status updated", "capacity", rec.Capacity, "allocatable", rec.Allocatable)
				last = rec
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

func (a *agent) podWorker(ctx context.Context) {
	for {
		uid, shutdown := a.queue.Get()
		if shutdown {
			return
		}
		err := a.syncPod(ctx, uid)
		if err != nil && ctx.Err() == nil {
			a.logger.Error(err, "syncing pod", "uid", uid)
			a.queue.AddRateLimited(uid)
		} else {
			a.queue.Forget(uid)
		}
		a.queue.Done(uid)
	}
}

func (a *agent) syncPod(ctx context.Context, uid types.UID) error {
	objs, err := a.pods.ByIndex("uid", string(uid))
	if err != nil {
		return err
	}
	if len(objs) == 0 {
		// Gone: the device manager frees its devices (activePods no longer has it); DRA claims
		// are unprepared as the kubelet does once a pod's containers are gone.
		a.mu.Lock()
		last := a.prepared[uid]
		a.mu.Unlock()
		if last == nil {
			return nil
		}
		return a.unprepareDRA(ctx, last)
	}
	pod := objs[0].(*v1.Pod)
	if pod.DeletionTimestamp != nil {
		// No containers to stop: the claims are unprepared (the kubelet does it once the
		// containers are gone) and the deletion finished as the kubelet's status manager does.
		if err := a.unprepareDRA(ctx, pod); err != nil {
			return err
		}
		zero := int64(0)
		err := a.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &pod.UID}})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil
		}
		return err
	}
	if pod.Status.Phase != v1.PodPending {
		return nil
	}
	a.mu.Lock()
	done := a.admitted.Has(uid)
	a.mu.Unlock()
	if done {
		return nil // admitted; the status update has not come back through the watch yet
	}
	return a.admit(ctx, pod)
}

// admit runs the device manager as the kubelet's admission and container start do, records
// what each container received, and reports the pod Running (or Failed).
func (a *agent) admit(ctx context.Context, pod *v1.Pod) error {
	logger := klog.LoggerWithValues(a.logger, "pod", klog.KObj(pod))
	ctx = klog.NewContext(ctx, logger)
	rec := podRecord{Namespace: pod.Namespace, Name: pod.Name, UID: string(pod.UID), Node: a.opts.nodeName, Containers: map[string]containerRecord{}}
	admitErr := func() error {
		if err := a.prepareDRA(ctx, pod); err != nil {
			return err
		}
		for i := range pod.Spec.InitContainers {
			if err := a.manager.Allocate(ctx, pod, &pod.Spec.InitContainers[i], lifecycle.AddOperation); err != nil {
				return err
			}
		}
		for i := range pod.Spec.Containers {
			if err := a.manager.Allocate(ctx, pod, &pod.Spec.Containers[i], lifecycle.AddOperation); err != nil {
				return err
			}
		}
		for _, c := range allContainers(pod) {
			opts, err := a.manager.GetDeviceRunContainerOptions(ctx, pod, &c)
			if err != nil {
				return err
			}
			cr := containerRecordOf(opts, a.manager.GetDevices(string(pod.UID), c.Name))
			cdi, err := a.draCDIDevices(pod, &c)
			if err != nil {
				return err
			}
			cr.CDIDevices = append(cr.CDIDevices, cdi...)
			rec.Containers[c.Name] = cr
		}
		return nil
	}()
	rec.Admitted = admitErr == nil
	if admitErr != nil {
		rec.Error = admitErr.Error()
		logger.Info("admission failed", "err", admitErr)
	}
	if err := writeJSON(filepath.Join(a.opts.recordDir, "pods", string(pod.UID)+".json"), &rec); err != nil {
		return err
	}
	a.mu.Lock()
	a.admitted.Insert(pod.UID)
	a.mu.Unlock()

	now := metav1.Now()
	status := pod.Status.DeepCopy()
	status.HostIP = "127.0.0.1"
	status.HostIPs = []v1.HostIP{{IP: "127.0.0.1"}}
	status.StartTime = &now
	if admitErr != nil {
		status.Phase = v1.PodFailed
		status.Reason = "UnexpectedAdmissionError"
		status.Message = "Allocate failed due to " + admitErr.Error()
	} else {
		status.Phase = v1.PodRunning
		// keep the scheduler's PodScheduled condition (its time is when the pod was bound)
		for _, t := range []v1.PodConditionType{v1.PodInitialized, v1.ContainersReady, v1.PodReady} {
			setPodCondition(status, v1.PodCondition{Type: t, Status: v1.ConditionTrue, LastTransitionTime: now})
		}
		status.ContainerStatuses = nil
		started := true
		for _, c := range pod.Spec.Containers {
			status.ContainerStatuses = append(status.ContainerStatuses, v1.ContainerStatus{
				Name: c.Name, Image: c.Image, ImageID: c.Image, Ready: true, Started: &started,
				ContainerID: containerID(pod, c.Name),
				State:       v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: now}},
			})
		}
	}
	updated := pod.DeepCopy()
	updated.Status = *status
	_, err := a.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{})
	for apierrors.IsConflict(err) {
		fresh, gerr := a.client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if gerr != nil {
			return gerr
		}
		fresh.Status = *status
		_, err = a.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, fresh, metav1.UpdateOptions{})
	}
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err == nil {
		logger.Info("pod admitted", "phase", status.Phase)
	}
	return err
}

func setPodCondition(status *v1.PodStatus, c v1.PodCondition) {
	for i := range status.Conditions {
		if status.Conditions[i].Type == c.Type {
			status.Conditions[i] = c
			return
		}
	}
	status.Conditions = append(status.Conditions, c)
}

func containerRecordOf(opts *devicemanager.DeviceRunContainerOptions, devices devicemanager.ResourceDeviceInstances) containerRecord {
	rec := containerRecord{Env: map[string]string{}, Devices: []deviceRecord{}, Mounts: []mountRecord{}, Annotations: map[string]string{}, CDIDevices: []string{}, DeviceIDs: map[string][]string{}}
	if opts != nil {
		for _, e := range opts.Envs {
			rec.Env[e.Name] = e.Value
		}
		for _, d := range opts.Devices {
			rec.Devices = append(rec.Devices, deviceRecord{HostPath: d.PathOnHost, ContainerPath: d.PathInContainer, Permissions: d.Permissions})
		}
		for _, m := range opts.Mounts {
			rec.Mounts = append(rec.Mounts, mountRecord{HostPath: m.HostPath, ContainerPath: m.ContainerPath, ReadOnly: m.ReadOnly})
		}
		for _, an := range opts.Annotations {
			rec.Annotations[an.Name] = an.Value
		}
		for _, c := range opts.CDIDevices {
			rec.CDIDevices = append(rec.CDIDevices, c.Name)
		}
	}
	for res, devs := range devices {
		ids := make([]string, 0, len(devs))
		for id := range devs {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		rec.DeviceIDs[res] = ids
	}
	return rec
}

// writeJSON replaces path atomically, so a reader sees the old or the new record, never half.
func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
