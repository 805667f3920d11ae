"""The gpupack device plugin: finds a node's GPUs and serves them to the kubelet.

Layers, outermost first: ``main`` (flags, wiring) -> ``manager`` (lifecycle: servers,
registration, restarts, health) -> ``server`` (gRPC servicer, only converts protobuf) ->
``resources``/``preferred``/``health`` (pure decisions) -> ``discovery`` (the hardware seam:
one backend per file, NVML, AMD and Intel sysfs, behind ``discovery.backend``) ->
``gpupack.contract``. ``fakes`` (fake NVML, fake sysfs trees, the fake inventory file) stand
beside it for tests and demos; production code loads them only for ``--backend fake``.
"""
