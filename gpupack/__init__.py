"""The shared floor that both programs stand on; it imports nothing above it.

- :mod:`gpupack.contract`: resource names, device ids, the node inventory and pod assignment
  annotations (the contract between the device plugin and the extender);
- :mod:`gpupack.kernel`: the placement kernel, pure functions over ``(nodes x slots)`` arrays
  (NumPy or CuPy): feasibility, scores, device choices;
- :mod:`gpupack.node_slots`: one node's inventory as a kernel row, and the one rule for which
  devices a container gets, called by the extender's cache and the device plugin alike;
- :mod:`gpupack.topology`: the NVLink/NUMA fallback of that rule, and shares over distinct GPUs;
- :mod:`gpupack.kubeletapi`: the kubelet's gRPC API, generated from ``proto/``.

Above it, side by side and never importing each other: :mod:`device_plugin` and
:mod:`scheduler_ext`. On top: :mod:`simulator` and :mod:`gpupack_cli`. ``tests/test_layers.py``
enforces the floors.
"""
