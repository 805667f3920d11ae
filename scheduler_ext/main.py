"""``gpupack-extender``: flags (each also an environment variable), wiring, and serving."""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import os
import platform
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from typing import Any

from gpupack import contract, kernel
from scheduler_ext import placement
from scheduler_ext.binder import Binder, KubePodApi
from scheduler_ext.ledger import KubeLedgerApi, Ledger
from scheduler_ext.cache import HOLD_SECONDS, ClusterCache, from_snapshot
from scheduler_ext.decide import FILTER_TOP, Decider
from scheduler_ext.metrics import Metrics
from scheduler_ext.server import ExtenderApp, Limits, serve, tls_context
from scheduler_ext.watch import DRA_KINDS, KINDS, KubeWatchSource, Syncer

log = logging.getLogger("gpupack-extender")

ENV_PREFIX = "GPUPACK_EXTENDER_"


def _env(flag: str, default: str) -> str:
    return os.environ.get(ENV_PREFIX + flag.upper().replace("-", "_"), default)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpupack-extender",
        description=(
            "kube-scheduler extender that bin-packs GPU pods (filter, prioritize, bind, preempt). "
            "`gpupack-extender certs --help`: the subcommand that makes its TLS Secrets. "
            f"Every flag can also be set by an environment variable {ENV_PREFIX}<FLAG>, "
            f"e.g. {ENV_PREFIX}POLICY=fragmentation; a flag on the command line wins."
        ),
    )
    p.add_argument("--listen", default=_env("listen", "0.0.0.0:8888"),
                   help="host:port to serve on (env GPUPACK_EXTENDER_LISTEN; default %(default)s)")
    p.add_argument("--kubeconfig", default=_env("kubeconfig", ""),
                   help="kubeconfig file; empty: in-cluster config (env GPUPACK_EXTENDER_KUBECONFIG)")
    p.add_argument("--replica-name", default=_env("replica-name", os.environ.get("POD_NAME") or socket.gethostname()),
                   help="this replica's name, in /readyz and in the device claims it writes "
                        "(env GPUPACK_EXTENDER_REPLICA_NAME, else POD_NAME, else the host name; default %(default)s)")
    p.add_argument("--ledger-namespace", default=_env("ledger-namespace", os.environ.get("POD_NAMESPACE") or "kube-system"),
                   help="namespace of the per-node device ledgers (ConfigMaps gpupack-node-<node>) through which "
                        "replicas never give one device twice (env GPUPACK_EXTENDER_LEDGER_NAMESPACE, else "
                        "POD_NAMESPACE; default %(default)s)")
    p.add_argument("--snapshot", default=_env("snapshot", ""),
                   help="serve read-only from a `kubectl get nodes,pods -o json` file instead of the API; "
                        "bind is refused (env GPUPACK_EXTENDER_SNAPSHOT)")
    p.add_argument("--policy", default=_env("policy", kernel.DEFAULT_POLICY), choices=sorted(kernel.POLICIES),
                   help="scoring policy (env GPUPACK_EXTENDER_POLICY; default %(default)s)")
    p.add_argument("--xp", default=_env("xp", "numpy"), choices=["numpy", "cupy"],
                   help="array library for the kernel; cupy needs a GPU and cupy installed "
                        "(env GPUPACK_EXTENDER_XP; default %(default)s)")
    p.add_argument("--tls-cert", default=_env("tls-cert", ""), help="serve HTTPS with this certificate (PEM) (env GPUPACK_EXTENDER_TLS_CERT)")
    p.add_argument("--tls-key", default=_env("tls-key", ""), help="private key of --tls-cert (env GPUPACK_EXTENDER_TLS_KEY)")
    p.add_argument("--tls-client-ca", default=_env("tls-client-ca", ""),
                   help="require client certificates signed by this CA (env GPUPACK_EXTENDER_TLS_CLIENT_CA)")
    edge = Limits()
    p.add_argument("--max-body-bytes", type=int, default=int(_env("max-body-bytes", str(edge.max_body))),
                   help="larger request bodies get HTTP 413, refused from their Content-Length; the default is twice "
                        "a filter of 5,000 full Nodes (nodeCacheCapable: false) "
                        "(env GPUPACK_EXTENDER_MAX_BODY_BYTES; default %(default)s)")
    p.add_argument("--max-body-bytes-in-flight", type=int, default=int(_env("max-body-bytes-in-flight", "0")),
                   help="bytes of request bodies being received or decided at once, over all connections; a body that "
                        "would pass it gets HTTP 503 (one alone is always taken); 0: --max-body-bytes and 32 MiB "
                        "(env GPUPACK_EXTENDER_MAX_BODY_BYTES_IN_FLIGHT; default %(default)s)")
    p.add_argument("--read-timeout-seconds", type=float,
                   default=float(_env("read-timeout-seconds", str(edge.read_timeout))),
                   help="a request must arrive in whole within this long of its first byte (else HTTP 408 and the "
                        "connection closed), and an answer be taken within this long "
                        "(env GPUPACK_EXTENDER_READ_TIMEOUT_SECONDS; default %(default)s)")
    p.add_argument("--idle-timeout-seconds", type=float,
                   default=float(_env("idle-timeout-seconds", str(edge.idle_timeout))),
                   help="a kept-alive connection with no next request for this long is closed; keep it above the "
                        "client's own idle timeout (kube-scheduler's Go transport: 90 s) "
                        "(env GPUPACK_EXTENDER_IDLE_TIMEOUT_SECONDS; default %(default)s)")
    p.add_argument("--max-connections", type=int, default=int(_env("max-connections", str(edge.max_connections))),
                   help="connections open at once (a thread each); one more is answered 503 and closed as it is "
                        "accepted (env GPUPACK_EXTENDER_MAX_CONNECTIONS; default %(default)s)")
    p.add_argument("--listen-backlog", type=int, default=int(_env("listen-backlog", str(edge.backlog))),
                   help="connections the kernel completes before they are accepted; capped by net.core.somaxconn "
                        "(env GPUPACK_EXTENDER_LISTEN_BACKLOG; default %(default)s)")
    p.add_argument("--hold-seconds", type=float, default=float(_env("hold-seconds", str(HOLD_SECONDS))),
                   help="after prioritize, hold the devices a pod would get on the node ranked first for this "
                        "long or until its bind, so the next pods of a burst see them taken; 0: off; never on a "
                        "snapshot (env GPUPACK_EXTENDER_HOLD_SECONDS; default %(default)s)")
    p.add_argument("--filter-top", type=int, default=int(_env("filter-top", str(FILTER_TOP))),
                   help="filter lets a GPU pod through to at most this many nodes, the best by the policy (the "
                        "node it names always among them), so kube-scheduler scores and the extender ranks tens "
                        "of nodes instead of thousands; kube-scheduler's own preferences then choose among those "
                        "only. 0: every node that fits (env GPUPACK_EXTENDER_FILTER_TOP; default %(default)s)")
    p.add_argument("--placement", default=_env("placement", "extender"), choices=["extender", "gate"],
                   help="extender: kube-scheduler asks gpupack about each GPU pod (filter, prioritize, bind). gate: "
                        "kube-scheduler runs without the extender and gpupack places pods created with the scheduling "
                        f"gate {contract.PLACEMENT_GATE} ahead of it (pins each to its node and devices, then removes "
                        "the gate); see docs/extender.md, 'Gate mode' (env GPUPACK_EXTENDER_PLACEMENT; default %(default)s)")
    p.add_argument("--placement-patience-seconds", type=float,
                   default=float(_env("placement-patience-seconds", str(placement.PATIENCE_SECONDS))),
                   help="gate mode: a gated pod no node has room for is handed to kube-scheduler as it is after this "
                        "long, so preemption and the cluster autoscaler see it "
                        "(env GPUPACK_EXTENDER_PLACEMENT_PATIENCE_SECONDS; default %(default)s)")
    p.add_argument("--dra", action=argparse.BooleanOptionalAction, default=_flag(_env("dra", "false"), "dra"),
                   help="DRA awareness: also watch ResourceSlices, ResourceClaims, ResourceClaimTemplates and "
                        "DeviceClasses (resource.k8s.io/v1), score nodes of the gpupack DRA driver by their slices and "
                        "pods by their claims, and bind pods on those nodes without choosing devices (kube-scheduler "
                        "allocates them); needs an API server that serves resource.k8s.io/v1 "
                        "(env GPUPACK_EXTENDER_DRA=true|false; default %(default)s)")
    p.add_argument("--allow-unauthenticated", action=argparse.BooleanOptionalAction,
                   default=_flag(_env("allow-unauthenticated", "false"), "allow-unauthenticated"),
                   help="watching the API, serve filter, prioritize, bind and preempt to any caller, without a client "
                        "certificate; off by default: without it the extender refuses to start unless --tls-cert, "
                        "--tls-key and --tls-client-ca are given (bind changes the cluster). For a test cluster on "
                        "loopback only (env GPUPACK_EXTENDER_ALLOW_UNAUTHENTICATED=true|false; default %(default)s)")
    p.add_argument("--log-level", default=_env("log-level", "INFO"), help="DEBUG, INFO, WARNING (env GPUPACK_EXTENDER_LOG_LEVEL)")
    return p


def unauthenticated_refusal(snapshot: str, tls_cert: str, tls_client_ca: str, allowed: bool) -> str:
    """Why the extender must not start, or "": a bind changes the cluster, so against the API it
    answers only callers with a client certificate unless the operator says otherwise. A
    snapshot binds nothing and needs none."""
    if snapshot or allowed or (tls_cert and tls_client_ca):
        return ""
    missing = "--tls-client-ca" if tls_cert else "--tls-cert, --tls-key and --tls-client-ca"
    return (f"refusing to serve bind to any caller: give {missing} (kube-scheduler's client CA; the Helm chart "
            "does), or --allow-unauthenticated for a test cluster on loopback")


def _flag(text: str, name: str) -> bool:
    """A boolean environment variable: true/false (also 1/0, yes/no); anything else stops start-up."""
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise SystemExit(f"gpupack-extender: {ENV_PREFIX}{name.upper()}={text!r}: expected true or false")


def _resource_v1() -> Any:
    from kubernetes import client

    return client.ResourceV1Api()


def _core_v1(kubeconfig: str) -> Any:
    from kubernetes import client
    from kubernetes import config as kconfig

    config: Any = kconfig
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig)
    else:
        config.load_incluster_config()
    return client.CoreV1Api()


def freeze_heap(_kind: str = "") -> None:
    """Moves what exists now (the cache's many small objects) out of the garbage collector's
    reach, so full collections stop pausing requests; called after each full list."""
    gc.collect()
    gc.freeze()


#: glibc's mallopt parameter number for the most malloc arenas
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
#: Allocations up to this size come from the heap, not from their own mapping (glibc's cap).
MMAP_THRESHOLD = 32 * 2**20
#: Free memory at the top of the heap kept for the next request instead of handed back.
TRIM_THRESHOLD = 64 * 2**20


def tune_malloc() -> None:
    """Keeps the kernel's temporaries in one reused heap (glibc only; nothing elsewhere).

    - One arena: each connection has its thread, and glibc gives a new thread its own arena,
      where the same filter at 5,000 nodes took 0.8 ms more than on the main thread (3.7
      against 2.9 ms, measured).
    - Heap, not mappings, for large blocks: a 5,000 x 8 array (320 KB) is above glibc's
      default threshold (128 KB, raised only as such blocks are freed), so each of the
      kernel's temporaries was mapped and unmapped afresh, page faults included; the
      fragmentation kernel at 5,000 nodes took 3.7-3.9 ms with the defaults and 2.9-3.2 ms
      with these thresholds (bench/kernel.py's cluster, in-process, three runs each). Over
      HTTP (bench/extender_http.py, A/B in turn, two rounds) the difference is within the
      run-to-run noise, and peak memory is the same (265 MB in the memory row)."""
    if platform.libc_ver()[0] != "glibc":
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_ARENA_MAX, 1)
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen: {text!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["certs"]:  # the certificates Job's subcommand (scheduler_ext/certs.py)
        from scheduler_ext import certs

        return certs.main(argv[1:])
    args = parser().parse_args(argv)
    tune_malloc()  # before any thread starts
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    refusal = unauthenticated_refusal(args.snapshot, args.tls_cert, args.tls_client_ca, args.allow_unauthenticated)
    if refusal:
        print(f"gpupack-extender: {refusal}", file=sys.stderr)
        return 2
    if args.placement == "gate" and args.snapshot:
        print("gpupack-extender: --placement gate places pods through the API; it cannot serve a --snapshot",
              file=sys.stderr)
        return 2
    if args.filter_top < 0:
        print(f"gpupack-extender: --filter-top: expected 0 (no cap) or a number of nodes, got {args.filter_top}",
              file=sys.stderr)
        return 2
    try:
        host, port = _listen(args.listen)
        limits = Limits(max_body=args.max_body_bytes, read_timeout=args.read_timeout_seconds,
                        idle_timeout=args.idle_timeout_seconds, max_connections=args.max_connections,
                        backlog=args.listen_backlog,
                        max_body_in_flight=args.max_body_bytes_in_flight or args.max_body_bytes + 32 * 2**20)
        tls = tls_context(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
        stop = threading.Event()
        if args.snapshot:
            cache = from_snapshot(args.snapshot)
            freeze_heap()
            binder = None
        else:
            core = _core_v1(args.kubeconfig)
            cache = ClusterCache(hold_seconds=args.hold_seconds, dra=args.dra)
            source = KubeWatchSource(core, _resource_v1() if args.dra else None)
            if args.dra:
                source.check_dra()  # one clear line now rather than a watch that fails forever
        metrics = Metrics(cache)
        # a snapshot binds nothing, so a hold would only stand in the way of the next answers
        decider = Decider(cache, args.policy, args.xp, holds=not args.snapshot and args.hold_seconds > 0,
                          filter_top=args.filter_top)
        if not args.snapshot:
            ledger = Ledger(KubeLedgerApi(core, args.ledger_namespace), args.replica_name)
            pods = KubePodApi(core)
            binder = Binder(pods, cache, decider.policy, ledger)
            sink: ClusterCache | placement.Tee = cache
            if args.placement == "gate":
                controller = placement.PlacementController(cache, decider, binder, pods, metrics=metrics,
                                                           patience=args.placement_patience_seconds)
                sink = placement.Tee(cache, controller)
                threading.Thread(target=controller.run, args=(stop,), name="placement", daemon=True).start()
            Syncer(sink, source, on_listed=freeze_heap, kinds=KINDS + DRA_KINDS if args.dra else KINDS).start(stop)
    except (ValueError, OSError) as err:
        print(f"gpupack-extender: {err}", file=sys.stderr)
        return 2
    app = ExtenderApp(cache, decider, binder, metrics)
    app.replica = args.replica_name
    srv, thread = serve(app, host, port, tls, limits=limits)
    log.info("serving on %s:%d (policy %s, xp %s, %s)", *srv.server_address[:2], args.policy, args.xp,
             f"snapshot {args.snapshot}" if args.snapshot else
             "watching the API" + (" with DRA awareness" if args.dra else "")
             + (f"; placing pods gated by {contract.PLACEMENT_GATE} ahead of kube-scheduler"
                if args.placement == "gate" else ""))
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    srv.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
