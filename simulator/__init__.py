"""``gpupack simulate``: replay a workload against a cluster and compare placement policies.

The simulator stands in for kube-scheduler and the kubelet, nothing else: every gpupack
policy is scored and every device chosen by the extender's own kernel
(:mod:`gpupack.kernel`: :func:`evaluate`, :func:`choose_devices`, the ``POLICIES``
mapping), on the same ``Slots`` arrays the extender's cache keeps. The baselines it compares
against (kube-scheduler's default, MostAllocated, best-fit, FGD as published, random) live
in :mod:`simulator.baselines`, one small module each, because they are the comparison,
not the product.

- :mod:`~simulator.model`: the cluster, the tasks and the mutable state being filled;
- :mod:`~simulator.trace`: the Alibaba ``openb_*`` CSV format;
- :mod:`~simulator.example`: the built-in example fleet and its day of inference services;
- :mod:`~simulator.placers`: gpupack policies as placers, and the registry of all placers;
- :mod:`~simulator.protocols`: the FGD paper's protocol and the replay with departures;
- :mod:`~simulator.placements`: the per-pod placements file and metrics recomputed from it;
- :mod:`~simulator.report`: table, JSON summary, plot, progress bar;
- :mod:`~simulator.main`: the command line.
"""
