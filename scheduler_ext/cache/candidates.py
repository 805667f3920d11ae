"""Candidate lists: copies of the rows of the nodes a request names, and what is kept of them.

Decisions evaluate on copies, never on the cache's own arrays. kube-scheduler sends the same
candidate list (every node, to filter) pod after pod, and copying its rows costs a third of
a filter at thousands of nodes. So the last :data:`SELECTIONS` lists are remembered, and a
list of :data:`KEEP_ROWS_FROM` known nodes and up keeps a copy of its rows from its second use
on: later uses copy again only the rows written since (:class:`~scheduler_ext.cache.state.ClusterState`
tells of each), and a :class:`~gpupack.kernel.verdict_memo.VerdictMemo` of the rows' per-node
sums and recent verdicts is kept with the copy and recomputes only those rows. New arrays
(more rows, or wider) drop every kept copy; a node added or removed makes every list new.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy

from gpupack.kernel import slots as kslots
from gpupack.kernel.verdict_memo import SubsetView, VerdictMemo
from scheduler_ext.cache.holds import Holds
from scheduler_ext.cache.state import ClusterState

#: Candidate-list lookups remembered by :meth:`Candidates.select_positions`.
SELECTIONS = 4
#: Candidate lists from this many known nodes up keep a copy of their rows (see
#: :meth:`Candidates.rows_of`): below it, copying them afresh costs less than finding and
#: copying the changed rows (measured: the crossing is between 500 and 1,000 rows).
KEEP_ROWS_FROM = 1000


@dataclasses.dataclass
class CandidateList:
    """A candidate list seen before: its rows, and a copy of them kept current (after its
    second use) by copying again only the rows changed since (``changed_rows``)."""

    names: list[str]
    node_generation: int
    idx: numpy.ndarray[Any, Any]  # rows of the known names
    pos: numpy.ndarray[Any, Any]  # their positions in ``names``
    copy: kslots.Slots | None = None
    changed_rows: set[int] = dataclasses.field(default_factory=set)
    in_use: bool = False  # a caller is evaluating on ``copy``
    memo: VerdictMemo | None = None  # per-node sums and recent verdicts of ``copy``, kept with it
    _positions: dict[int, list[int]] | None = None  # row -> its positions in ``idx``, built on first need
    _sorted: numpy.ndarray[Any, Any] | None = None  # ``idx`` sorted, built on first need
    _where: numpy.ndarray[Any, Any] | None = None  # row -> position in ``idx``, built on first need

    def sorted_idx(self) -> numpy.ndarray[Any, Any]:
        """``idx`` in ascending order (to recognise the same rows listed in another order)."""
        if self._sorted is None:
            self._sorted = numpy.sort(self.idx)
        return self._sorted

    def where(self) -> numpy.ndarray[Any, Any]:
        """Per row of the arrays (up to the largest in ``idx``): its position in ``idx``, -1 if
        absent (built on first need)."""
        if self._where is None:
            where = numpy.full(int(self.idx.max()) + 1 if self.idx.shape[0] else 0, -1, dtype=numpy.int64)
            where[self.idx] = numpy.arange(self.idx.shape[0])
            self._where = where
        return self._where

    def positions_of(self, rows: Iterable[int]) -> numpy.ndarray[Any, Any]:
        """The positions in ``idx`` of the given rows (a name listed twice has two), ascending."""
        sorted_idx = self.sorted_idx()
        if sorted_idx.shape[0] < 2 or bool((sorted_idx[1:] != sorted_idx[:-1]).all()):  # each row once
            where = self.where()
            wanted = numpy.fromiter(rows, dtype=numpy.int64)
            at = where[wanted[(wanted >= 0) & (wanted < where.shape[0])]]
            return numpy.sort(at[at >= 0])
        if self._positions is None:
            self._positions = {}
            for p, r in enumerate(self.idx.tolist()):
                self._positions.setdefault(r, []).append(p)
        at = self._positions
        return numpy.asarray(sorted(p for r in rows for p in at.get(r, ())), dtype=numpy.int64)


class Candidates:
    """Copies of rows for evaluation, under the state's lock; the kept copies follow the
    state's row writes."""

    def __init__(self, state: ClusterState, holds: Holds, keep_rows_from: int) -> None:
        self._state = state
        self._lock = state.lock
        self._holds = holds
        self.keep_rows_from = keep_rows_from
        self._lists: list[CandidateList] = []  # recent candidate lists, newest first
        self._names: tuple[int, list[str]] | None = None  # node_names(): (node generation, names)
        state.row_written = self._changed
        state.arrays_replaced = self._drop_copies

    def select(self, names: Iterable[str]) -> tuple[kslots.Slots, list[str], list[str]]:
        """A copy of the rows of ``names`` that are known, those names, and the unknown ones."""
        with self._lock:
            rows: list[int] = []
            known: list[str] = []
            unknown: list[str] = []
            nodes = self._state.nodes
            for name in names:
                st = nodes.get(name)
                if st is None:
                    unknown.append(name)
                else:
                    rows.append(st.row)
                    known.append(name)
            return self._state.arrays.rows(numpy.asarray(rows, dtype=numpy.int64)), known, unknown

    def select_positions(
        self, names: Sequence[str], exclude: str = ""
    ) -> tuple[kslots.Slots, numpy.ndarray[Any, Any]]:
        """A copy of the rows of the known ``names``, and their positions in ``names``; the
        provisional hold of pod ``exclude`` (a uid) is left out of the copy, so a pod is never
        refused for the devices held for itself."""
        with self._lock:
            self._holds.expire()
            sel, pos = self._find(names)
            rows = self._state.arrays.rows(sel.idx)
            if exclude in self._holds:
                self._holds.free_in_copy(rows, sel.idx, exclude)
            return rows, pos

    @contextlib.contextmanager
    def rows_of(
        self, names: Sequence[str], exclude: str = ""
    ) -> Iterator[tuple[kslots.Slots, numpy.ndarray[Any, Any], VerdictMemo | SubsetView | None]]:
        """:meth:`select_positions` for reading within the ``with`` block only, with a memo of
        the rows' per-node sums and recent verdicts (:class:`~gpupack.kernel.verdict_memo.VerdictMemo`,
        or None). kube-scheduler sends the same candidate list (every node, to filter) pod after
        pod; copying its rows costs a third of a filter at thousands of nodes, so the copy is
        kept and only the rows changed since are copied again; the memo is kept with it and
        recomputes only those rows. A list without a memo of its own whose rows are all in a
        kept list with one (prioritize's subset of the filter's list) is read from that list's
        copy and memo (:class:`~gpupack.kernel.verdict_memo.SubsetView`). The arrays must not
        be written to."""
        with self._lock:
            self._holds.expire()
            sel, pos = self._find(names)
            kept = self._kept_superset(sel) if sel.memo is None else None
            owner = sel
            if kept is not None:
                owner, at = kept
                self._refresh(owner)
                owner.in_use = True
            elif sel.copy is None or sel.in_use:  # first use, or in use by another request
                sel = dataclasses.replace(sel, copy=self._state.arrays.rows(sel.idx), changed_rows=set(), memo=None)
                owner = sel
            else:
                self._refresh(sel)
                sel.in_use = True
                if sel.memo is None:
                    sel.memo = VerdictMemo(sel.idx.shape[0])
            copy = owner.copy
            assert copy is not None
            if exclude in self._holds:
                rec = self._state.pods.get(exclude)
                st = self._state.nodes.get(rec.applied_to) if rec is not None else None
                if st is not None:
                    self._holds.free_in_copy(copy, owner.idx, exclude)
                    owner.changed_rows.add(st.row)  # put back at the next use
                    if owner.memo is not None:
                        owner.memo.mark(numpy.nonzero(owner.idx == st.row)[0])
            memo: VerdictMemo | SubsetView | None = owner.memo
            rows = copy
            if kept is not None:
                assert owner.memo is not None
                rows = copy.rows(at)
                memo = SubsetView(owner.memo, copy, at)
        try:
            yield rows, pos, memo
        finally:
            with self._lock:
                owner.in_use = False

    def warm(self, names: Sequence[str]) -> bool:
        """Makes ``names`` a kept list now, with its copy, its memo and the memo's numbered row
        states, so that the first decision over it does not pay for them (gate mode calls this
        while no pod waits, with every node's name). False when the list is too short to keep
        or in use."""
        with self._lock:
            sel, _ = self._find(names)
            if sel.in_use or sel.idx.shape[0] < self.keep_rows_from:
                return False
            if sel.copy is None:  # kept from the second use on: this is one ahead of it
                sel.copy, sel.changed_rows, sel.memo = self._state.arrays.rows(sel.idx), set(), None
            self._refresh(sel)
            if sel.memo is None:
                sel.memo = VerdictMemo(sel.idx.shape[0])
            sel.memo.prepare(sel.copy)
            return True

    def _kept_superset(self, sel: CandidateList) -> tuple[CandidateList, numpy.ndarray[Any, Any]] | None:
        """A kept list with a copy and a memo, not in use, that holds every row of ``sel``, and
        the positions of ``sel``'s rows in it; None when there is none."""
        if sel.idx.shape[0] == 0:
            return None
        top = int(sel.idx.max())
        for other in self._lists:
            if (other is sel or other.copy is None or other.memo is None or other.in_use
                    or other.node_generation != sel.node_generation or other.idx.shape[0] < sel.idx.shape[0]):
                continue
            where = other.where()
            if top >= where.shape[0]:
                continue
            at = where[sel.idx]
            if bool((at >= 0).all()):
                return other, at
        return None

    def all_rows(self) -> tuple[kslots.Slots, list[str]]:
        """A copy of every known node's row, and the node names, sorted."""
        with self._lock:
            self._holds.expire()
            nodes = self._state.nodes
            names = sorted(nodes)
            idx = numpy.asarray([nodes[n].row for n in names], dtype=numpy.int64)
            return self._state.arrays.rows(idx), names

    def node_names(self) -> list[str]:
        """Every known node's name, sorted; the same list object while no node is added or
        removed (so a caller that decides over all nodes again and again hits the kept copy).
        Callers must not change it."""
        with self._lock:
            if self._names is None or self._names[0] != self._state.node_generation:
                self._names = (self._state.node_generation, sorted(self._state.nodes))
            return self._names[1]

    def _find(self, names: Sequence[str]) -> tuple[CandidateList, numpy.ndarray[Any, Any]]:
        """The candidate list of ``names`` and the positions in ``names`` of its rows; after its
        first use its copy is kept (lists seen once, such as prioritize's subsets, and short
        ones keep none). kube-scheduler's filter runs on parallel workers, so it names the same
        nodes pod after pod but never twice in the same order: a list that holds the same rows
        as a kept one, in another order, uses the kept copy (and its memo) with the positions
        mapped to the new order."""
        state = self._state
        for sel in self._lists:
            if sel.node_generation == state.node_generation and sel.names == names:
                self._keep(sel)
                self._to_front(sel)
                return sel, sel.pos
        idx = numpy.array(list(map(state.row_of.get, names, itertools.repeat(-1))), dtype=numpy.int64)
        pos = numpy.nonzero(idx >= 0)[0]
        known = idx[pos]
        if known.shape[0] >= self.keep_rows_from:
            ordered = numpy.sort(known)
            if ordered.shape[0] < 2 or bool((ordered[1:] != ordered[:-1]).all()):  # no name twice
                for sel in self._lists:
                    if (sel.node_generation == state.node_generation and sel.idx.shape[0] == known.shape[0]
                            and numpy.array_equal(sel.sorted_idx(), ordered)):
                        self._keep(sel)
                        self._to_front(sel)
                        at = numpy.empty(int(ordered[-1]) + 1, dtype=numpy.int64)
                        at[known] = pos
                        return sel, at[sel.idx]
        sel = CandidateList(list(names), state.node_generation, known, pos)
        self._lists = [sel, *self._lists[: SELECTIONS - 1]]
        return sel, sel.pos

    def _to_front(self, sel: CandidateList) -> None:
        """The list was used: it is the newest (the oldest is the one a new list pushes out)."""
        if self._lists[0] is not sel:
            self._lists.remove(sel)
            self._lists.insert(0, sel)

    def _keep(self, sel: CandidateList) -> None:
        """From a list's second use on, its rows are kept (when it is long enough)."""
        if sel.copy is None and sel.idx.shape[0] >= self.keep_rows_from:
            sel.copy, sel.changed_rows, sel.memo = self._state.arrays.rows(sel.idx), set(), None

    def _refresh(self, sel: CandidateList) -> None:
        """Copies the rows changed since into the list's kept copy."""
        copy = sel.copy
        if copy is None or not sel.changed_rows:
            return
        arrays = self._state.arrays
        if 4 * len(sel.changed_rows) > sel.idx.shape[0]:
            sel.copy = arrays.rows(sel.idx)
            sel.memo = None
        else:
            at = sel.positions_of(sel.changed_rows)
            src = sel.idx[at]
            for f in dataclasses.fields(copy):
                getattr(copy, f.name)[at] = getattr(arrays, f.name)[src]
            if sel.memo is not None:
                sel.memo.mark(at)
        sel.changed_rows = set()

    def _changed(self, row: int) -> None:
        """Row ``row`` of the arrays was written: the kept copies must copy it again."""
        for sel in self._lists:
            if sel.copy is not None:
                sel.changed_rows.add(row)

    def _drop_copies(self) -> None:
        """The arrays are new (another shape): the kept copies go."""
        for sel in self._lists:
            sel.copy, sel.changed_rows, sel.memo = None, set(), None
