"""Python modules generated from proto/ (the kubelet device plugin API v1beta1); do not edit."""
