"""gpupack: GPU placement for AI inference on Kubernetes (shared contract and the `gpupack` command)."""
