"""gpupack's scheduler extender: kube-scheduler calls it over HTTP to filter, score and bind GPU pods.

Layers, each importing only the ones below it:

- protocol edges: :mod:`scheduler_ext.server` (extender HTTP + JSON), :mod:`scheduler_ext.watch`
  and :mod:`scheduler_ext.binder` (Kubernetes API), :mod:`scheduler_ext.main` (flags);
- core: :mod:`scheduler_ext.cache` (cluster state as arrays, fed by events),
  :mod:`scheduler_ext.podspec` (what a pod asks for), :mod:`scheduler_ext.decide`
  (filter / prioritize / preempt answers from the cache and the kernel);
- the shared floor below: :mod:`gpupack.kernel` (pure array functions over NumPy or CuPy),
  :mod:`gpupack.node_slots` (a node's inventory as a kernel row, the device choice) and
  :mod:`gpupack.contract`. The extender never imports :mod:`device_plugin`.
"""
