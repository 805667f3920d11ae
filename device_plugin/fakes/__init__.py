"""Fakes of the hardware, faithful enough that the real discovery backends run over them.

- :mod:`device_plugin.fakes.nvml`: a fake of the ``pynvml`` module modelling real NVIDIA
  machines (DGX A100, H100 PCIe pairs), with fault injection;
- :mod:`device_plugin.fakes.sysfs`: sysfs and /dev trees of AMD and Intel GPU nodes, with
  hot-unplug and return;
- :mod:`device_plugin.fakes.inventory`: the ``--backend fake`` backends, a fake inventory file
  as a node.

Tests, the demo and the simulator import these directly; production code never does, except
:func:`device_plugin.discovery.open_backend`, lazily, for ``--backend fake``.
"""
