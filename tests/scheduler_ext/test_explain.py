"""``gpupack explain`` on a snapshot: a table of verdicts, scores and reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gpupack import contract
from scheduler_ext import explain, main as extender_main

from .conftest import cluster_objects
from tests.fixtures import pod


def test_explain_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snap = tmp_path / "cluster.json"
    snap.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": cluster_objects()}))
    pod_file = tmp_path / "pod.yaml"
    pod_file.write_text(yaml.safe_dump(pod("want2", gpus={contract.NVIDIA_GPU: 2})))
    assert explain.main(["--snapshot", str(snap), "--pod", str(pod_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NODE", "VERDICT", "SCORE", "RAW", "REASON"]
    assert lines[1].split()[:3] == ["n-half", "fits", "10"]
    assert "named node" in lines[1]  # the packing policy names one node and says so
    assert lines[2].split()[:3] == ["n-empty", "fits", "0"]
    assert "0 free now of 2" in next(line for line in lines if line.startswith("n-full"))
    assert "never" in next(line for line in lines if line.startswith("n-cpu"))


def test_explain_json_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snap = tmp_path / "cluster.json"
    snap.write_text(json.dumps({"kind": "List", "items": cluster_objects()}))
    pod_file = tmp_path / "pod.json"
    pod_file.write_text(json.dumps(pod("big", gpus={contract.NVIDIA_GPU: 8})))
    assert explain.main(["--snapshot", str(snap), "--pod", str(pod_file), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert not any(v["fits"] for v in out)
    assert explain.main(["--snapshot", str(tmp_path / "missing.json"), "--pod", str(pod_file)]) == 2


def test_extender_help_documents_flags_and_env(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        extender_main.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--kubeconfig", "--snapshot", "--policy", "--listen", "--xp", "--tls-client-ca", "GPUPACK_EXTENDER_POLICY"):
        assert flag in text


def test_extender_refuses_bad_start(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert extender_main.main(["--snapshot", str(tmp_path / "none.json")]) == 2
    assert extender_main.main(["--listen", "nonsense", "--snapshot", "x"]) == 2


@pytest.mark.parametrize("argv, refused", [
    ([], "give --tls-cert, --tls-key and --tls-client-ca"),
    (["--tls-cert", "c.pem", "--tls-key", "k.pem"], "give --tls-client-ca"),
], ids=["no-tls", "tls-without-client-ca"])
def test_the_extender_will_not_serve_bind_to_anyone_unless_told(
        argv: list[str], refused: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPUPACK_EXTENDER_ALLOW_UNAUTHENTICATED", raising=False)
    assert extender_main.main(["--kubeconfig", "/nonexistent", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpupack-extender: refusing to serve bind to any caller: " + refused) and err.count("\n") == 1


def test_a_snapshot_or_the_operator_allows_serving_without_client_certificates() -> None:
    assert extender_main.unauthenticated_refusal("cluster.json", "", "", False) == ""
    assert extender_main.unauthenticated_refusal("", "", "", True) == ""
    assert extender_main.unauthenticated_refusal("", "c.pem", "ca.pem", False) == ""
