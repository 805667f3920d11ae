#!/usr/bin/env bash
# Mutation testing (mutmut 3) over the kernel, the device plugin's allocation and health, and
# the extender's request parsing. Not in CI: it takes minutes to tens of minutes.
#
# It never touches this checkout: each group runs in its own copy of the working tree (the
# current working files, committed or not), with mutmut in its own virtualenv that sees the
# project's .venv packages through a .pth file. Each group's mutants run against only that
# group's fast unit tests (mutmut then picks, per mutant, the tests that call the function).
#
#   bench/mutation.sh                 # all groups
#   bench/mutation.sh kernel plugin   # some of them (kernel, plugin, extender)
#   MUT_WORK=/tmp/mut MUT_JOBS=2 bench/mutation.sh
#
# Prints, per module, killed / survived / timeout / other and the score
# ((killed + timeout) / tested), then each surviving mutant's diff.
# Results stay in $MUT_WORK/<group>/mutants (`mutmut show NAME` there).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${MUT_WORK:-/tmp/gpupack-mutation}
JOBS=${MUT_JOBS:-$(nproc)}
MUTMUT_VERSION=${MUTMUT_VERSION:-3.8.1}
PROJECT_PY=${PROJECT_PY:-$ROOT/.venv/bin/python}
VENV=$WORK/venv

# group -> modules to mutate | tests run against them (missing test files are skipped)
declare -A MODULES TESTS
MODULES[kernel]="gpupack/kernel/slots.py gpupack/kernel/choose.py"
TESTS[kernel]="tests/gpupack/kernel/test_capacity_edges.py tests/gpupack/kernel/test_kernel.py tests/gpupack/kernel/test_choose_edges.py"
MODULES[plugin]="device_plugin/allocate.py device_plugin/health.py"
TESTS[plugin]="tests/device_plugin/test_health.py tests/device_plugin/test_sharing.py tests/device_plugin/test_grpc_protocol.py tests/device_plugin/test_health_edges.py tests/device_plugin/test_allocate_edges.py"
MODULES[extender]="scheduler_ext/podspec.py"
TESTS[extender]="tests/scheduler_ext/test_shapes.py tests/scheduler_ext/test_protocol.py tests/scheduler_ext/test_bounds.py tests/scheduler_ext/test_podspec_edges.py"

groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=(kernel plugin extender)

mkdir -p "$WORK"
if [ ! -x "$VENV/bin/mutmut" ]; then
    base=$("$PROJECT_PY" -c 'import sys; print(sys.base_prefix)')
    "$base/bin/python3" -m venv "$VENV"
    # the project's packages (numpy, grpcio, hypothesis, pytest...) without reinstalling them
    "$PROJECT_PY" -c 'import site; print(site.getsitepackages()[0])' \
        > "$VENV/lib/python3.11/site-packages/zz_project_venv.pth"
    "$VENV/bin/pip" install -q "mutmut==$MUTMUT_VERSION"
fi
# The project's editable install maps its packages to this checkout; mutmut's venv gets a
# finder that maps them to the current directory (the copy's mutants/) instead. pytest's
# importlib mode names tests/scheduler_ext/conftest.py "scheduler_ext.conftest", so the
# package's own modules must still resolve by file, as the editable finder does.
cat > "$VENV/lib/python3.11/site-packages/_gpupack_mut_finder.py" <<'PY'
import importlib.util
import os
import sys

PACKAGES = ("device_plugin", "gpupack", "gpupack_cli", "scheduler_ext", "simulator")


class _Finder:
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        parts = fullname.split(".")
        if parts[0] not in PACKAGES:
            return None
        base = os.path.join(os.getcwd(), *parts)
        init = os.path.join(base, "__init__.py")
        if os.path.isfile(init):
            return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[base])
        if os.path.isfile(base + ".py"):
            return importlib.util.spec_from_file_location(fullname, base + ".py")
        return None


sys.meta_path.append(_Finder)
PY
echo "import _gpupack_mut_finder" > "$VENV/lib/python3.11/site-packages/zzz_gpupack_mut_finder.pth"

toml_list() { local out="" x; for x in "$@"; do out+="\"$x\", "; done; echo "[${out%, }]"; }

for g in "${groups[@]}"; do
    [ -n "${MODULES[$g]:-}" ] || { echo "unknown group $g (kernel, plugin, extender)" >&2; exit 2; }
    copy=$WORK/$g
    rm -rf "$copy"
    mkdir -p "$copy"
    tar -C "$ROOT" --exclude=./.git --exclude=./.venv --exclude='__pycache__' --exclude=.hypothesis \
        --exclude=.pytest_cache --exclude=.mypy_cache --exclude=./mutants -cf - . | tar -C "$copy" -xf -
    tests=()
    for t in ${TESTS[$g]}; do [ -f "$copy/$t" ] && tests+=("$t"); done
    # mutmut copies the source folders into mutants/ and mutates only the named files; every
    # other top-level folder the tests import comes along unmutated.
    others=()
    for d in "$copy"/*/; do
        d=$(basename "$d")
        case $d in gpupack|device_plugin|scheduler_ext|tests|mutants) ;; *) others+=("$d/") ;; esac
    done
    cat >> "$copy/pyproject.toml" <<EOF

[tool.mutmut]
source_paths = ["gpupack", "device_plugin", "scheduler_ext"]
only_mutate = $(toml_list ${MODULES[$g]})
also_copy = $(toml_list "${others[@]}")
pytest_add_cli_args_test_selection = $(toml_list "${tests[@]}")
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]
# per-mutant timeout: 10 x the tests' clean duration + 10 s (the machine may be loaded)
timeout_multiplier = 10.0
timeout_constant = 10.0
use_git_change_detection = false
EOF
    echo "== $g: mutating ${MODULES[$g]} against ${tests[*]}"
    (cd "$copy" && "$VENV/bin/mutmut" run --max-children "$JOBS" > "$WORK/$g.log" 2>&1) \
        || { echo "mutmut failed for $g, see $WORK/$g.log" >&2; tail -20 "$WORK/$g.log" >&2; continue; }
    (cd "$copy" && "$VENV/bin/mutmut" results --all true > "$WORK/$g.results")
done

echo
printf '%-28s %7s %8s %8s %6s %6s\n' module killed survived timeout other score
for g in "${groups[@]}"; do
    [ -f "$WORK/$g.results" ] || continue
    for m in ${MODULES[$g]}; do
        mod=${m%.py}; mod=${mod//\//.}
        awk -v mod="$mod" -v path="$m" '
            { name=$1; sub(/:$/, "", name); st=$2
              if (index(name, mod ".") != 1) next
              n[st]++; total++ }
            END { k=n["killed"]+0; s=n["survived"]+0; t=n["timeout"]+0; o=total-k-s-t
                  tested=k+s+t; sc = tested ? 100*(k+t)/tested : 0
                  printf "%-28s %7d %8d %8d %6d %5.1f%%\n", path, k, s, t, o, sc }' "$WORK/$g.results"
    done
done

echo
echo "== surviving mutants"
for g in "${groups[@]}"; do
    [ -f "$WORK/$g.results" ] || continue
    for name in $(awk '$2 == "survived" { sub(/:$/, "", $1); print $1 }' "$WORK/$g.results"); do
        (cd "$WORK/$g" && "$VENV/bin/mutmut" show "$name") || true
        echo
    done
done
