"""``gpupack``: the user-facing command. Subcommands dispatch to their modules."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: gpupack <command> [options]

commands:
  demo       run the device plugin on a built-in fake 8-GPU node with a kubelet stand-in
  explain    each node's verdict, score and reason for a pod, as the extender decides
  simulate   replay a workload with gpupack's policies and the baselines, side by side
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "demo":
        from gpupack_cli import demo

        return demo.main(rest)
    if command == "explain":
        from scheduler_ext import explain

        return explain.main(rest)
    if command == "simulate":
        from simulator import main as simulate

        return simulate.main(rest)
    print(f"gpupack: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
