# Sourced by the scripts that build Go programs for the tests (tests/e2e/build_control_plane.sh,
# tools/helm/build.sh). gobuild runs one `go build` with its output (the many "go: downloading"
# lines) in a log file, and says instead what it builds, how long it has taken so far (a line
# every 30 s) and how long it took; on failure it prints the log's last lines.
#
#   gobuild <what> <step, e.g. "2/5"> <output file> <go build arguments...>

gobuild_seconds() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

gobuild() {
  local what=$1 step=$2 out=$3
  shift 3
  local log="$out.log" started=$SECONDS pid
  echo "[$step] building $what" >&2
  go build -trimpath -ldflags='-s -w' -o "$out" "$@" >"$log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    # wake every second to notice the end, speak every 30 s
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && echo "      $what: $(gobuild_seconds $((SECONDS - started))) so far" >&2
  done
  if ! wait "$pid"; then
    echo "[$step] building $what failed after $(gobuild_seconds $((SECONDS - started))); the last lines of $log:" >&2
    tail -n 40 "$log" >&2
    return 1
  fi
  echo "[$step] built $what in $(gobuild_seconds $((SECONDS - started)))" >&2
  rm -f "$log"
}
