"""The top floor: the `gpupack` command (simulate, explain, demo) and the plugin demo's kubelet stand-in.

The only code, with :mod:`simulator`, allowed to import both programs (:mod:`device_plugin`
and :mod:`scheduler_ext`); nothing below imports it.
"""
