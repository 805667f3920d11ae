"""What a test does when the GPU it needs is not here: skip with the reason, or fail where
``GPUPACK_REQUIRE_GPU=1`` says a GPU must be there (tools/gpu-check.sh)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("GPUPACK_REQUIRE_GPU") == "1":
        pytest.fail(reason + ", and GPUPACK_REQUIRE_GPU=1 asks for it")
    pytest.skip(reason + "; tools/gpu-check.sh runs this on a GPU machine")
