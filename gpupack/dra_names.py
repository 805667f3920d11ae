"""Every name gpupack's DRA driver publishes: driver, attributes, capacities, counters, taints, CDI.

Users see these in ResourceSlices, in DeviceClass selectors (``deploy/dra/``) and in the CEL
of their own claims, so they are defined once here. Attribute and capacity names are fully
qualified with the driver's domain (``gpu.gpupack.io/productName``); in CEL they read
``device.attributes["gpu.gpupack.io"].productName``. Two come from Kubernetes' own list of
standard attributes (``resource.kubernetes.io/pciBusID``, ``resource.kubernetes.io/numaNode``),
so a claim can align a GPU with a NIC of another driver by ``matchAttribute``.

The driver (``device_plugin/dra/``) writes them and the extender (``scheduler_ext/dra.py``)
reads them: the contract between the two in DRA mode, as :mod:`gpupack.contract` is for the
device-plugin annotations.
"""

from __future__ import annotations

#: The API group and version of ResourceSlices, ResourceClaims and DeviceClasses (GA since 1.34).
API_VERSION = "resource.k8s.io/v1"

#: The DRA driver name: ResourceSlice ``spec.driver``, allocation results' ``driver``, the
#: kubelet plugin name (registration ``name``), the plugin folder under /var/lib/kubelet/plugins.
DRIVER = "gpu.gpupack.io"

# --- device attributes (string unless said) ----------------------------------------------------

TYPE = f"{DRIVER}/type"  # "gpu" (a physical GPU) or "mig" (a MIG device)
VENDOR = f"{DRIVER}/vendor"  # nvidia | amd | intel
PRODUCT = f"{DRIVER}/productName"  # "NVIDIA A100-SXM4-40GB", as the vendor library says it
UUID = f"{DRIVER}/uuid"  # GPU or MIG UUID (NVIDIA), unique id or PCI address (AMD, Intel)
INDEX = f"{DRIVER}/index"  # int: the GPU's index on the node (a MIG device: its parent's)
PCI_BUS_ID = f"{DRIVER}/pciBusID"  # "0000:07:00.0" (a MIG device: its parent's)
NUMA = f"{DRIVER}/numa"  # int: NUMA node; absent where the platform reports none
NVLINK_GROUP = f"{DRIVER}/nvlinkGroup"  # int: lowest GPU index of its NVLink-connected set (NVIDIA)
COMPUTE_CAPABILITY = f"{DRIVER}/cudaComputeCapability"  # version "8.0.0" (NVIDIA, known products)
KERNEL_DRIVER = f"{DRIVER}/kernelDriver"  # nvidia | amdgpu | i915 | xe
MIG_ENABLED = f"{DRIVER}/migEnabled"  # bool: a GPU in MIG mode (its device is the whole of its MIG devices)
MIG_PROFILE = f"{DRIVER}/migProfile"  # "1g.10gb" (MIG devices only)
PARENT_UUID = f"{DRIVER}/parentUUID"  # the GPU a MIG device is on (MIG devices only)
SHARED = f"{DRIVER}/shared"  # bool: allocated to several claims at once (consumable capacity)

STANDARD_PCI_BUS_ID = "resource.kubernetes.io/pciBusID"
STANDARD_NUMA_NODE = "resource.kubernetes.io/numaNode"  # int; absent where the platform reports none

# --- capacities ---------------------------------------------------------------------------------

MEMORY = f"{DRIVER}/memory"  # device memory; on a shared GPU what a claim asks for (requestPolicy)
SHARES = f"{DRIVER}/shares"  # a shared GPU's time-sliced replicas; each allocation takes 1 by default

# --- counters (DNS labels, inside one CounterSet per MIG-mode GPU) ----------------------------

COUNTER_MEMORY = "memory"
COUNTER_COMPUTE = "compute-slices"
COUNTER_MEMORY_SLICE = "memory-slice-{}"
#: Every MIG-capable GPU to date has at most 7 compute and 8 memory slices (A30: 4 and 4): the
#: counter set holds that many, and the whole GPU consumes all of them.
COMPUTE_SLICES = 7
MEMORY_SLICES = 8

# --- taints -------------------------------------------------------------------------------------

#: On every device of an Unhealthy GPU (and on an Unhealthy MIG device), removed on recovery.
#: Its value says why in a label value: ``xid-79``, ``gone``, ``nvml-error``, ``unhealthy``.
UNHEALTHY_TAINT = f"{DRIVER}/unhealthy"
NO_SCHEDULE = "NoSchedule"
NO_EXECUTE = "NoExecute"

# --- CDI ----------------------------------------------------------------------------------------

CDI_VENDOR = "k8s.gpupack.io"
CDI_CLASS = "claim"
CDI_KIND = f"{CDI_VENDOR}/{CDI_CLASS}"  # claim spec devices: k8s.gpupack.io/claim=<claim uid>-<device>

# --- the kubelet --------------------------------------------------------------------------------

PLUGIN_TYPE = "DRAPlugin"  # registration PluginInfo.type (pluginregistration/v1 constants.go)
DRA_SERVICE = "v1.DRAPlugin"  # registration supported_versions (dra/v1 types.go: DRAPluginService)
