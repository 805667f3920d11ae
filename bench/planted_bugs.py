"""Plant known bugs one at a time in a copy of the tree and check that a fixed test catches each.

    .venv/bin/python bench/planted_bugs.py            # every bug
    .venv/bin/python bench/planted_bugs.py units-off-by-one
    .venv/bin/python bench/planted_bugs.py --list

Each bug is one textual change to one file (the change must apply exactly once, so a refactor
that moves the code makes the script fail loudly instead of testing nothing). Each bug names
the files of fixed, table-driven tests that must catch it (hypothesis properties elsewhere may
catch it too, but only by chance). The script first runs those tests on the unchanged copy (they must pass),
then with the bug (they must fail), and prints for each bug: caught or not, the first failing
test, and the seconds it took. Not in CI: it copies the tree once per bug and takes a minute
or two.

The bugs are the ones a review planted by hand (docs/testing.md, "Planted bugs"); add a bug
here when a review finds a class of mistake the suite missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: A bug's tests get this long; a hang is a finding too (the suite should fail fast).
DEADLINE_S = 120


@dataclasses.dataclass(frozen=True)
class Bug:
    name: str
    what: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


BUGS = (
    Bug("units-off-by-one", "the kernel lets a shared slot take one share more than is free",
        "gpupack/kernel/slots.py", "n = xp.minimum(free, free_mem", "n = xp.minimum(free + 1, free_mem",
        ("tests/gpupack/kernel/test_capacity_edges.py",)),
    Bug("node-names-type-check", "the extender stops refusing NodeNames that are not strings",
        "scheduler_ext/server.py", '"".join(names)  # refuses anything but strings, at C speed', "pass",
        ("tests/scheduler_ext/test_protocol.py",)),
    Bug("sim-ignores-memory", "the simulator counts a memory-hinted share by its share count only",
        "simulator/model.py", "frac = max(n / cap, n * self.unit_memory(row, col, task) / mem)", "frac = n / cap",
        ("tests/simulator/test_figures_by_hand.py",)),
    Bug("no-readvertise-after-recovery", "a recovered GPU is never advertised Healthy again",
        "device_plugin/manager.py",
        "            self.metrics.recoveries.inc(len(verdict.changed))\n            self._refresh()",
        "            self.metrics.recoveries.inc(len(verdict.changed))",
        ("tests/device_plugin/test_health.py", "tests/device_plugin/test_grpc_protocol.py")),
    Bug("share-uuid-mapping", "Allocate maps time-sliced shares to the GPUs in sorted order, not first appearance",
        "device_plugin/allocate.py", "list(dict.fromkeys(devices[i].visible_id for i in ids))",
        "sorted(set(devices[i].visible_id for i in ids))",
        ("tests/device_plugin/test_allocate_edges.py", "tests/device_plugin/test_sharing.py")),
)


def _copy(dest: Path) -> None:
    ignore = shutil.ignore_patterns(".git", ".venv", "sim-out", "bench-out", ".mypy_cache", ".pytest_cache",
                                    ".hypothesis", "__pycache__", "*.egg-info", "mutants")
    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)


#: Imports the project's packages from the copy before pytest starts. Without it, pytest's
#: importlib mode names tests/scheduler_ext/conftest.py "scheduler_ext.conftest", and the
#: parent package is then found by the editable install's finder: the checkout, not the copy.
PRELUDE = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "import gpupack, device_plugin, scheduler_ext, simulator, gpupack_cli, pytest; "
    "bad = [m.__name__ for m in (gpupack, device_plugin, scheduler_ext, simulator, gpupack_cli) "
    "if not m.__file__.startswith(sys.path[0])]; "
    "sys.exit('packages not from the copy: ' + ', '.join(bad)) if bad else sys.exit(pytest.main(sys.argv[1:]))"
)


def _pytest(tree: Path, tests: tuple[str, ...]) -> tuple[int, str, float]:
    env = {**os.environ, "GPUPACK_HYPOTHESIS_PROFILE": "ci"}
    cmd = [str(ROOT / ".venv/bin/python"), "-c", PRELUDE, str(tree), "-q", "-x", "-p", "no:cacheprovider",
           f"--timeout={DEADLINE_S}", *tests]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=DEADLINE_S + 30)
        out, rc = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as err:
        out, rc = str(err.stdout or ""), 124
    return rc, out, time.perf_counter() - t0


def _first_failure(out: str) -> str:
    m = re.search(r"^FAILED (\S+)", out, re.M) or re.search(r"^ERROR (\S+)", out, re.M)
    return m.group(1) if m else "(no test named: see the output)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Plant known bugs one at a time; check a fixed test catches each.")
    p.add_argument("bugs", nargs="*", help="names of bugs to plant (default: all)")
    p.add_argument("--list", action="store_true", help="list the bugs and exit")
    args = p.parse_args(argv)
    if args.list:
        for b in BUGS:
            print(f"{b.name:32s} {b.what}")
        return 0
    chosen = [b for b in BUGS if not args.bugs or b.name in args.bugs]
    unknown = set(args.bugs) - {b.name for b in BUGS}
    if unknown:
        print(f"planted_bugs: unknown bug(s) {', '.join(sorted(unknown))}; --list names them", file=sys.stderr)
        return 2
    rows: list[tuple[str, str, str, str]] = []
    missed = 0
    with tempfile.TemporaryDirectory(prefix="gpupack-planted-") as tmp:
        for b in chosen:
            tree = Path(tmp) / b.name
            _copy(tree)
            target = tree / b.path
            text = target.read_text()
            if text.count(b.old) != 1:
                print(f"planted_bugs: {b.name}: the text to change occurs {text.count(b.old)} times in {b.path}, "
                      "not once; update the bug to the code", file=sys.stderr)
                return 2
            print(f"[{b.name}] clean run of {', '.join(b.tests)}", file=sys.stderr, flush=True)
            rc, out, secs = _pytest(tree, b.tests)
            if rc != 0:
                print(f"planted_bugs: {b.name}: the tests fail before the bug is planted:\n{out[-3000:]}",
                      file=sys.stderr)
                return 2
            target.write_text(text.replace(b.old, b.new))
            print(f"[{b.name}] planted in {b.path}; running again", file=sys.stderr, flush=True)
            rc, out, secs = _pytest(tree, b.tests)
            if rc == 0:
                missed += 1
                rows.append((b.name, "MISSED", "-", f"{secs:.1f}"))
            elif rc == 124:
                rows.append((b.name, "hung", f"past {DEADLINE_S} s", f"{secs:.1f}"))
                missed += 1
            else:
                rows.append((b.name, "caught", _first_failure(out), f"{secs:.1f}"))
    head = ("bug", "verdict", "first failing test", "seconds")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
