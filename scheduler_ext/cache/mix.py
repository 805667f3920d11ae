"""The mix of recent request shapes that the ``fragmentation`` policy scores against.

Each pod's shape (GPU part, CPU, memory; CPU-only pods too) is noted once, into a window of
the last :data:`MIX_MEMORY` shapes, counted per arrival. The mix is the most frequent shapes
of the window covering :data:`MIX_COVERAGE`, with their frequencies; it is worked out again
only every :data:`MIX_REFRESH` of the window and replaces the mix in use only when they differ
by more than :data:`MIX_TOLERANCE` (:func:`mix_distance`), so that steady traffic keeps one
mix and the verdicts scored under it. Each shape noted bumps the state's ``generation``.

With the mix goes the share mix (:class:`~gpupack.kernel.pairing.ShareMix`): every share size
in the window (not only the covered shapes: a rare size still needs partners), worked out
when the mix is replaced, for the pairing rule of :mod:`gpupack.kernel.pairing`.
"""

from __future__ import annotations

import collections

from gpupack import kernel
from gpupack.kernel import pairing
from scheduler_ext.cache.state import ClusterState

#: Shapes of recent requests (GPU part, CPU, memory; CPU-only pods too) remembered for the
#: fragmentation policy's mix.
MIX_MEMORY = 1000
#: The mix keeps the most frequent shapes that together cover this fraction (FGD: 95 %).
MIX_COVERAGE = 0.95
#: ... and at most this many shapes (each costs one comparison per node and evaluation).
MIX_MAX_SHAPES = 128
#: The mix is worked out again once this fraction of its window has arrived since (so it
#: lags the window by under 5 % of it): every new mix makes every kept verdict stale
#: (:class:`~gpupack.kernel.verdict_memo.VerdictMemo`), and a mix per pod would keep none.
MIX_REFRESH = 0.05
#: ... and replaces the mix in use when the two differ by more than this (total variation
#: distance: the share of pods whose shape would have to change). Traffic of a steady make-up
#: keeps one mix; a rare shape flickering at the edge of the coverage does not replace it.
MIX_TOLERANCE = 0.05


def mix_distance(a: kernel.Mix, b: kernel.Mix) -> float:
    """Total variation distance between two mixes: half the summed frequency differences
    over their shapes (0: the same frequencies; 1: no shape in common). Both empty: 0."""
    pa, pb = dict(a), dict(b)
    return 0.5 * sum(abs(pa.get(s, 0.0) - pb.get(s, 0.0)) for s in pa.keys() | pb.keys())


class ShapeMix:
    """The window of recent shapes and the mix in use, under the state's lock."""

    def __init__(self, state: ClusterState) -> None:
        self._state = state
        self._lock = state.lock
        self._recent: collections.deque[kernel.Request] = collections.deque(maxlen=MIX_MEMORY)
        # per shape in ``_recent``: how often, and the generation of its latest arrival
        self._count: dict[kernel.Request, int] = {}
        self._latest: dict[kernel.Request, int] = {}
        self._seen_pods: set[str] = set()
        self._mix: kernel.Mix | None = None
        self._shares = pairing.NO_SHARES
        self._arrivals = 0  # shapes noted since the mix was last worked out

    def record_shape(self, uid: str, req: kernel.Request) -> None:
        """Remember a request shape for the mix, once per pod."""
        with self._lock:
            if uid in self._seen_pods:
                return
            if len(self._seen_pods) > 4 * MIX_MEMORY:
                self._seen_pods.clear()
            self._seen_pods.add(uid)
            if len(self._recent) == MIX_MEMORY:  # the oldest shape leaves the window
                old = self._recent[0]
                left = self._count[old] - 1
                if left:
                    self._count[old] = left
                else:
                    del self._count[old], self._latest[old]
            self._recent.append(req)
            self._count[req] = self._count.get(req, 0) + 1
            self._latest[req] = self._state.generation
            self._arrivals += 1
            self._state.generation += 1

    def mix(self) -> kernel.Mix:
        """The most frequent recent shapes covering :data:`MIX_COVERAGE`, with frequencies
        (equally frequent shapes: the latest seen first). The counts are kept per arrival, so
        this sorts the distinct shapes only, not the window. It is worked out again once
        :data:`MIX_REFRESH` of the window has arrived since, and replaces the mix in use only
        when it differs from it by more than :data:`MIX_TOLERANCE`: in between it is the same
        object, so that verdicts scored under it can be kept
        (:class:`~gpupack.kernel.verdict_memo.VerdictMemo`; each new mix costs every candidate node
        a full evaluation at its shapes' next pods)."""
        with self._lock:
            if self._mix is None or self._arrivals >= max(1.0, MIX_REFRESH * len(self._recent)):
                self._arrivals = 0
                counts, latest = self._count, self._latest
                total = len(self._recent)
                chosen: list[tuple[kernel.Request, int]] = []
                covered = 0
                ranked = sorted(counts, key=lambda shape: (-counts[shape], -latest[shape]))[:MIX_MAX_SHAPES]
                for shape in ranked:
                    if total and covered >= MIX_COVERAGE * total:
                        break
                    chosen.append((shape, counts[shape]))
                    covered += counts[shape]
                new = tuple((s, n / covered) for s, n in chosen) if covered else ()
                if self._mix is None or mix_distance(self._mix, new) > MIX_TOLERANCE:
                    self._mix = new
                    self._shares = pairing.share_mix((r.memory_mib, r.cpu_milli, n) for r, n in counts.items()
                                                     if r.count == 1 and r.memory_mib > 0)
            return self._mix

    def shares(self) -> pairing.ShareMix:
        """The share mix that goes with :meth:`mix` (the same object while the mix is)."""
        self.mix()
        with self._lock:
            return self._shares
