"""A fake inventory file (``--backend fake --fake-inventory FILE``) that cannot be used is refused
in one line naming the file and the field path, as ``ValueError`` from the loader and
``DiscoveryError`` from the backend (the plugin logs it and stops, no traceback); random bytes
and random YAML never raise anything else."""

from __future__ import annotations

import pathlib
import subprocess
import sys
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from device_plugin import discovery
from device_plugin.fakes import inventory
from device_plugin.fakes import nvml as fake_nvml

from tests.profiles import invariant

REPO = pathlib.Path(__file__).resolve().parents[2]
MAX_LINKS = fake_nvml.NVML_NVLINK_MAX_LINKS


def h100(**extra: Any) -> dict[str, Any]:
    return {"model": "NVIDIA H100 80GB HBM3", "memoryMiB": 81559, **extra}


def node(*gpus: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"version": 1, **top, "gpus": list(gpus)}


# (file name, content as text or as an object written as YAML, what the one line must say after the file name)
CASES: list[tuple[str, str | dict[str, Any], str]] = [
    ("index-zero", node(h100(index="zero")), "gpus[0].index: 'zero' is not an integer"),
    ("index-bool", node(h100(index=True)), "gpus[0].index: true is not an integer"),
    ("index-negative", node(h100(index=-1)), "gpus[0].index: -1 is outside 0..2147483647"),
    ("memory-string", node(h100(memoryMiB="80Gi")), "gpus[0].memoryMiB: '80Gi' is not an integer"),
    ("memory-zero", node(h100(memoryMiB=0)), "gpus[0].memoryMiB: 0 is outside 1..2147483647"),
    ("model-missing", node({"memoryMiB": 81559}), "gpus[0].model: missing (an NVIDIA GPU needs model and memoryMiB)"),
    ("healthy-string", node(h100(healthy="yes please")), "gpus[0].healthy: 'yes please' is not true or false"),
    ("typo-key", node(h100(memoryMib=1)), "gpus[0]: unknown key 'memoryMib'; did you mean 'memoryMiB'?"),
    ("unknown-top-key", {"gpu": [h100()]}, "top level: unknown key 'gpu'; did you mean 'gpus'?"),
    ("gpus-missing", {"version": 1}, "gpus: missing (expected an object with a 'gpus' list)"),
    ("gpus-not-list", {"gpus": 3}, "gpus: 3 is not a list (expected an object with a 'gpus' list)"),
    ("gpu-not-object", node("H100"), "gpus[0]: 'H100' is not an object (a GPU: model, memoryMiB, ...)"),
    ("top-list", "- model: x\n", "expected an object with a 'gpus' list, got a list"),
    ("empty", "", "expected an object with a 'gpus' list, got nothing (an empty file?)"),
    ("version-2", node(h100(), version=2), "version: 2 is not supported (want 1)"),
    # unquoted, 00000000:07:00.0 is a base-60 number to YAML 1.1
    ("bus-id-number", "gpus:\n- {model: x, memoryMiB: 1, pciBusId: 00000000:07:00.0}\n",
     "gpus[0].pciBusId: 420.0 is not a string; quote it"),
    ("bus-id-path", node(h100(pciBusId="../../etc")), "gpus[0].pciBusId: '../../etc' is not a PCI address"),
    ("duplicate-id", node(h100(id="GPU-a"), h100(id="GPU-a")), "gpus[1].id: 'GPU-a' is also gpus[0]'s"),
    ("duplicate-index", node(h100(), h100(index=0)), "gpus[1].index: 0 is also gpus[0]'s"),
    ("id-with-separator", node(h100(id="GPU-a::1")), "gpus[0].id: 'GPU-a::1' has '::' or ','"),
    ("link-to-nowhere", node(h100(links=[{"peer": 3, "nvlinks": 4}])),
     "gpus[0].links[0].peer: 3 is not a GPU of this file (0..0, by position)"),
    ("link-to-itself", node(h100(links=[{"peer": 0, "nvlinks": 4}]), h100()), "gpus[0].links[0].peer: 0 is this GPU itself"),
    ("link-missing-nvlinks", node(h100(links=[{"peer": 1}]), h100()), "gpus[0].links[0].nvlinks: missing"),
    # NVML_NVLINK_MAX_LINKS (36 in pynvml 12) through NVSwitch + 1 direct: one more than a GPU has
    ("too-many-nvlinks", node(h100(links=[{"peer": 1, "nvlinks": 1}]), h100(), nvswitch=MAX_LINKS),
     f"gpus[0].links: {MAX_LINKS + 1} NVLinks with nvswitch's, more than a GPU has ({MAX_LINKS})"),
    ("nvswitch-huge", node(h100(), nvswitch=10**12), f"nvswitch: 1000000000000 is outside 0..{MAX_LINKS}"),
    ("mig-published-keys", node(h100(mig=[{"profile": "1g.10gb", "start": 0}])),
     "gpus[0].mig[0]: unknown key 'start'; the plugin publishes it, from its --config; a fake inventory takes profile"),
    ("mig-profile-of-other-size", node({"model": "NVIDIA A100-SXM4-40GB", "memoryMiB": 40960,
                                        "mig": [{"profile": "1g.10gb"}]}),
     "gpus[0].mig[0].profile: '1g.10gb' is not a MIG profile of a 40 GB GPU; known: 1c.3g.20gb, 1g.5gb"),
    ("mig-not-object", node(h100(mig=["1g.10gb"])), "gpus[0].mig[0]: '1g.10gb' is not an object (profile: 1g.10gb)"),
    ("mig-on-amd", node({"vendor": "amd", "mig": [{"profile": "1g.10gb"}]}), "gpus[0].mig: only NVIDIA GPUs have MIG devices"),
    ("too-many-gpus", node(*[h100() for _ in range(17)]), "gpus: 17 GPUs, more than 16"),
    ("not-yaml", "gpus: [\n", "not valid YAML/JSON: line 2 column 1: expected the node content"),
    ("tab", "gpus:\n\t- model: x\n", "not valid YAML/JSON: line 2 column 1: found character '\\t'"),
    ("bad-date", "gpus: []\nnode: 2024-13-45\n", "not valid YAML/JSON: month must be in 1..12"),
    ("nul-byte", "gpus: []\x00\n", "not valid YAML/JSON: unacceptable character #x0000"),
    ("deep", "[" * 1200, "not valid YAML/JSON: nested too deeply"),
]


def write(tmp_path: pathlib.Path, name: str, content: str | dict[str, Any] | bytes, suffix: str = ".yaml") -> pathlib.Path:
    path = tmp_path / f"{name}{suffix}"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize("name, content, message", CASES, ids=[c[0] for c in CASES])
def test_bad_file_is_one_line_naming_file_and_field(tmp_path: pathlib.Path, name: str, content: str | dict[str, Any],
                                                    message: str) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(ValueError) as err:
        inventory.load_inventory_file(path)
    assert one_line(err.value).startswith(f"fake inventory {path}: ")
    assert message in str(err.value)
    with pytest.raises(discovery.DiscoveryError) as failed:  # what the plugin's main logs before it stops
        discovery.open_backend("fake", path)
    assert one_line(failed.value) == str(err.value)


@pytest.mark.parametrize(
    "name, content, suffix, message",
    [
        ("json-not-json", '{"gpus": [}', ".json", "not valid YAML/JSON: line 1 column 11: Expecting value"),
        ("binary", b"\xff\xd8\xff\xe0JFIF\x00", ".yaml", "not UTF-8 text (byte 0 is 0xff)"),
        ("huge", b"#" * (inventory.MAX_INVENTORY_BYTES + 1), ".yaml", "more than 1048576 bytes"),
    ],
    ids=["json-not-json", "binary", "huge"],
)
def test_bad_bytes_are_one_line(tmp_path: pathlib.Path, name: str, content: str | bytes, suffix: str, message: str) -> None:
    path = write(tmp_path, name, content, suffix)
    with pytest.raises(ValueError, match="^fake inventory .*" + message.replace("(", r"\(").replace(")", r"\)")):
        inventory.load_inventory_file(path)


def test_missing_file_and_directory_are_one_line(tmp_path: pathlib.Path) -> None:
    for path, why in ((tmp_path / "none.yaml", "No such file or directory"), (tmp_path, "Is a directory")):
        with pytest.raises(ValueError) as err:
            inventory.load_inventory_file(path)
        assert one_line(err.value) == f"fake inventory {path}: cannot read ({why})"


def test_mig_that_overflows_its_gpu_names_the_file(tmp_path: pathlib.Path) -> None:
    # two 7g.80gb instances need 16 memory slices of the 8 an H100 has: the fake's placement says so
    path = write(tmp_path, "overfull", node(h100(mig=[{"profile": "7g.80gb"}] * 2)))
    with pytest.raises(discovery.DiscoveryError, match=f"^fake inventory {path}: GPU 0: no room for MIG profile 7g.80gb$"):
        discovery.open_backend("fake", path)


def test_intel_driver_error_names_the_file(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "intel", node({"vendor": "intel", "driver": "nouveau"}))
    with pytest.raises(discovery.DiscoveryError) as err:
        discovery.open_backend("fake", path)
    assert str(err.value) == f"fake inventory {path}: gpus[0]: driver: expected i915 or xe, got 'nouveau'"


@pytest.mark.parametrize("path", [
    REPO / "examples" / "fake-node-a100.yaml",
], ids=lambda p: p.name)
def test_shipped_fake_inventories_load(path: pathlib.Path) -> None:
    raw = inventory.load_inventory_file(path)
    backend = discovery.open_backend("fake", path)
    assert len(backend.discover()) == len(raw["gpus"]) == 8


def test_a_published_inventory_pasted_in_says_what_the_plugin_decides(tmp_path: pathlib.Path) -> None:
    """``gpupack.io/inventory`` is what the plugin publishes, not what a machine has: its
    resource and replicas come from the plugin's --config, and are refused here with that said."""
    from device_plugin.discovery.nvml import NvmlBackend
    from gpupack import contract

    gpus = NvmlBackend(fake_nvml.h100_pcie_pairs("pasted")).discover()
    path = write(tmp_path, "pasted", contract.encode_inventory(contract.Inventory("pasted", gpus)), ".json")
    with pytest.raises(ValueError) as err:
        inventory.load_inventory_file(path)
    assert str(err.value) == (f"fake inventory {path}: top level: unknown key 'migStrategy'; the plugin publishes it, "
                              "from its --config; a fake inventory takes gpus, nvswitch, version")


def test_the_plugin_prints_one_line_and_stops(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "node", node(h100(index="zero")))
    done = subprocess.run(
        [sys.executable, "-m", "device_plugin.main", "--backend", "fake", "--fake-inventory", str(path),
         "--plugin-dir", str(tmp_path), "--no-publish"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    lines = done.stderr.strip().splitlines()
    # 2, as for bad flags and config: the operator's input is wrong (1 is for a node that cannot start)
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"fake inventory {path}: gpus[0].index: 'zero' is not an integer" in lines[0]


# --- anything at all --------------------------------------------------------------------------

KEYS = [*inventory._TOP, *inventory._GPU, *inventory._MIG, *inventory._LINK, "memory", "gpu", "replicas"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 20), st.integers(), st.floats(allow_nan=False),
                    st.sampled_from(["nvidia", "amd", "intel", "acme", "1g.10gb", "7g.80gb", "3g.40gb", "i915", "xe",
                                     "NVIDIA H100 80GB HBM3", "AMD Instinct MI300X", "Intel Data Center GPU Flex 170",
                                     "GPU-00000000000000a0", "0000:4d:00.0", "GPU-a::1", ""]),
                    st.text(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(KEYS), inner, max_size=6), max_leaves=24)
#: GPUs that are nearly right, so the checks past the first are reached
GPUS = st.lists(st.fixed_dictionaries({"model": st.just("NVIDIA H100 80GB HBM3"), "memoryMiB": st.just(81559)},
                                      optional={k: VALUES for k in inventory._GPU if k not in ("model", "memoryMiB")}),
                max_size=4)


def _loads_or_refuses(path: pathlib.Path) -> None:
    try:
        raw = inventory.load_inventory_file(path)
    except ValueError as err:  # the documented error, in one line, naming the file
        assert str(err).startswith(f"fake inventory {path}: ") and "\n" not in str(err)
        return
    assert isinstance(raw, dict) and isinstance(raw["gpus"], list)
    try:
        backend = discovery.open_backend("fake", path)
    except discovery.DiscoveryError as err:
        assert str(err).startswith("fake inventory ") and "\n" not in str(err)
        return
    try:
        backend.discover()
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()


@invariant(300)
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".yaml", ".json"]))
def test_random_bytes_are_loaded_or_refused(tmp_path_factory: pytest.TempPathFactory, data: bytes, suffix: str) -> None:
    path = tmp_path_factory.mktemp("bytes") / f"node{suffix}"
    path.write_bytes(data)
    _loads_or_refuses(path)


@invariant(150)
@given(top=st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4), gpus=GPUS | VALUES)
def test_random_yaml_is_loaded_or_refused(tmp_path_factory: pytest.TempPathFactory, top: dict[str, Any], gpus: Any) -> None:
    path = tmp_path_factory.mktemp("yaml") / "node.yaml"
    path.write_text(yaml.safe_dump({**top, "gpus": gpus}))
    _loads_or_refuses(path)
