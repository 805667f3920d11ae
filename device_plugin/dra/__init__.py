"""The DRA mode of the node program (``gpupack-dra-driver``): Dynamic Resource Allocation.

Instead of the device plugin API, the node's GPUs are published as ResourceSlices
(``resource.k8s.io/v1``) for kube-scheduler to allocate, and the kubelet asks the driver to
prepare the allocated claims over its DRA gRPC API. The same discovery, planning and health
as the device plugin (``device_plugin.discovery``, ``resources``, ``health``), other edges.

Layers, outermost first: ``main`` (flags, wiring) -> ``driver`` (lifecycle: health, layout,
publishing) and ``server`` (gRPC: DRAPlugin and plugin registration; only converts) ->
``publisher`` (the Kubernetes API edge: ResourceSlices through the dynamic client) and
``prepare`` (claims: allocation -> CDI spec -> checkpoint) -> ``slices`` (pure: inventory ->
ResourceSlice JSON), ``claimspecs`` (CDI specs of claims), ``checkpoint`` (prepared claims on
disk) -> ``names`` (every published name).
"""
