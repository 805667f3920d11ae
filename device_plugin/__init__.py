"""The gpupack device plugin: finds a node's GPUs and serves them to the kubelet.

Layers, outermost first: ``main`` (flags, wiring) -> ``manager`` (lifecycle: servers,
registration, restarts, health) -> ``server`` (gRPC servicer, only converts protobuf) ->
``resources``/``preferred``/``health`` (pure decisions) -> ``discovery`` (the hardware seam:
NVML, fake) -> ``gpupack.contract``.
"""
