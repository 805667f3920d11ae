"""NVIDIA XID error codes: which ones mean the GPU is unwell, and what each means in words.

XIDs caused by applications (a bad kernel, an out-of-range access) say nothing about the GPU's
health, so by default they do not mark it Unhealthy; the same list NVIDIA's plugin skips.
"""

from __future__ import annotations

#: Application-caused XIDs: graphics engine exception, MMU fault from user code, GPU stopped
#: processing (app), preemptive cleanup, video decoder exception, and an app-caused
#: timeout/engine error. Configurable with health.skipXids.
DEFAULT_SKIPPED_XIDS: frozenset[int] = frozenset({13, 31, 43, 45, 68, 109})

_MEANINGS = {
    13: "graphics engine exception (usually an application bug)",
    31: "GPU memory page fault (usually an application bug)",
    32: "invalid or corrupted push buffer stream",
    38: "driver firmware error",
    43: "GPU stopped processing (application error)",
    45: "preemptive cleanup after an earlier error",
    48: "double-bit ECC error",
    56: "display engine error",
    57: "error programming video memory interface",
    61: "internal micro-controller breakpoint/warning",
    62: "internal micro-controller halt",
    63: "ECC page retirement or row remapping recorded",
    64: "ECC page retirement or row remapper failure",
    68: "video decoder exception (usually an application bug)",
    69: "graphics engine class error",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    109: "context switch timeout (usually an application bug)",
    119: "GSP RPC timeout",
    120: "GSP error",
    121: "C2C link error",
    140: "unrecovered ECC error",
}


def meaning(xid: int) -> str:
    """What an XID means, in an operator's words."""
    return _MEANINGS.get(xid, "unlisted XID (see NVIDIA's XID catalogue)")
