"""The real ``gpupack-device-plugin`` program: start-up errors, metrics, SIGTERM."""

from __future__ import annotations

import json
import pathlib
import signal
import socket
import subprocess
import sys
import urllib.request

from gpupack_cli.kubelet_standin import STREAM_DEADLINE_S, KubeletStandIn
from gpupack.kubeletapi import deviceplugin_v1beta1_pb2 as pb

PLUGIN = [sys.executable, "-m", "device_plugin.main"]

NODE = {"version": 1, "gpus": [
    {"id": f"GPU-0000000{i}-0000-0000-0000-000000000000", "model": "NVIDIA L40S", "memoryMiB": 46068, "numaNode": i // 2}
    for i in range(4)
]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bad_flag_stops_start_up_with_a_clear_message() -> None:
    done = subprocess.run([*PLUGIN, "--backend", "quantum"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "configuration error: --backend: expected auto, nvml, amd, intel or fake, got 'quantum'" in done.stderr


def test_bad_config_names_the_field(tmp_path: pathlib.Path) -> None:
    cfg = tmp_path / "plugin.yaml"
    cfg.write_text("version: v1\nhealth:\n  recoveryProbes: -3\n")
    done = subprocess.run([*PLUGIN, "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "health.recoveryProbes: expected an integer >= 0, got -3" in done.stderr


def test_sigterm_removes_the_sockets_and_metrics_are_served(short_dir: pathlib.Path, kubelet: KubeletStandIn) -> None:
    inventory = short_dir / "node.json"
    inventory.write_text(json.dumps(NODE))
    port = free_port()
    proc = subprocess.Popen(
        [*PLUGIN, "--backend", "fake", "--fake-inventory", str(inventory), "--plugin-dir", str(short_dir),
         "--metrics-addr", f"127.0.0.1:{port}"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        reg = kubelet.next_registration(timeout_s=60)
        sock = short_dir / reg.endpoint
        assert sock.exists()
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert 'gpupack_plugin_devices{health="Healthy",resource="nvidia.com/gpu"} 4.0' in metrics
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert not sock.exists()
        assert "found 4 GPU(s) through fake" in err and "shutting down" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_config_change_is_applied_without_restart(short_dir: pathlib.Path, kubelet: KubeletStandIn) -> None:
    inventory = short_dir / "node.json"
    inventory.write_text(json.dumps(NODE))
    cfg_dir = short_dir / "cfg"
    cfg_dir.mkdir()
    cfg = cfg_dir / "config.yaml"
    cfg.write_text("version: v1\n")
    proc = subprocess.Popen(
        [*PLUGIN, "--backend", "fake", "--fake-inventory", str(inventory), "--plugin-dir", str(short_dir), "--config", str(cfg)],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert kubelet.next_registration(timeout_s=60).resource_name == "nvidia.com/gpu"
        # GPUs 0 and 1 become 4 shares each under nvidia.com/gpu.shared; 2 and 3 stay whole
        cfg.write_text(
            "version: v1\nsharing:\n  timeSlicing:\n    renameByDefault: true\n"
            "    resources:\n    - name: nvidia.com/gpu\n      replicas: 4\n      devices: [0, 1]\n"
        )
        reg = kubelet.next_registration(timeout_s=60)
        assert reg.resource_name == "nvidia.com/gpu.shared"
        channel, stub = kubelet.plugin(reg.endpoint)
        assert len(next(stub.ListAndWatch(pb.Empty(), timeout=STREAM_DEADLINE_S)).devices) == 8
        channel.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert "configuration applied" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
