"""D2's message passing on a kNN graph kept on disk (``knn.sharded.GraphFiles``), in bounded memory and
with the same result as the one-process heap.

Forward messages: ``g_i = s_i + sum_j exp(-gamma_forward d_ij) s_j`` for each run of rows (a task
each), reading the rows' neighbours and the neighbours' node scores from the spill folder.

Greedy selection with reverse messages. The sequential algorithm repeatedly takes the unselected row
with the largest current ``g`` (ties: the lower row) and lowers each unselected neighbour ``j`` of the
taken row ``i`` by ``g_i exp(-gamma_reverse d_ij)``. Here it runs in rounds over workers that each
hold a contiguous range of rows (current ``g``, selected marks, and the rows ordered by an upper bound
of ``g``, resorted when stale):

1. every worker proposes its ``batch`` best rows with their neighbours, and the best value left;
2. the driver merges the proposals and replays the sequential algorithm on the best ``batch`` rows while
   it provably agrees with it: values only decrease, so every row outside the batch stays at or below
   the best value ``T`` left outside it; a batch row is taken while its current value exceeds ``T``
   (the first one always: it is the global maximum);
3. every worker applies the round's messages to its rows in the order they were sent (the same float
   operations, in the same order, as the sequential loop) and marks its taken rows.

The selection is the sequential one, row for row. Workers are Ray actors spread over the nodes (about
25 bytes per row of their range) or one object in this process; the driver holds the selection order
(8 bytes per selected row) and one round's proposals.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from poolsieve.core.progress import Progress

from ._spill import DiskArray

FIRST_BATCH = 256
MIN_BATCH = 64
MAX_BATCH = 1 << 16
FORWARD_ROWS = 1 << 18  # rows per forward-message task


def forward_messages(pool, folder: Path, n: int, gamma_forward: float) -> None:
    """Write ``g.npy`` (n float64) from ``node_scores.npy`` and the graph in ``folder``."""
    DiskArray.create(folder / "g.npy", (n,), np.float64)
    units = [(lo, min(n, lo + FORWARD_ROWS)) for lo in range(0, n, FORWARD_ROWS)]
    pool.runtime.map(_forward(folder, gamma_forward), units, "D2 forward messages")


def _forward(folder: Path, gamma_forward: float):
    def forward(unit: tuple[int, int]) -> int:
        lo, hi = unit
        neighbors = DiskArray(folder / "neighbors.npy").rows(lo, hi)
        distances = DiskArray(folder / "distances.npy").rows(lo, hi)
        scores = DiskArray(folder / "node_scores.npy")
        valid = neighbors >= 0
        weights = np.where(valid, np.exp(-gamma_forward * distances.astype(np.float64)), 0.0)
        g = scores.rows(lo, hi) + (weights * scores.take(np.where(valid, neighbors, 0))).sum(axis=1)
        DiskArray(folder / "g.npy").write(slice(lo, hi), g)
        return hi - lo

    return forward


@dataclass
class Proposal:
    """A worker's best unselected rows (pool rows, current values, neighbours, reverse weights) and the
    best value among its other unselected rows (``-inf`` when none)."""

    ids: np.ndarray
    values: np.ndarray
    neighbors: np.ndarray
    weights: np.ndarray
    rest: float


class GreedyRange:
    """A contiguous range of rows in the greedy selection (one per worker; see the module docstring)."""

    def __init__(self, folder: str, gamma_reverse: float):
        self.folder = Path(folder)
        self.gamma = gamma_reverse
        self.lo = self.hi = 0

    def load(self, bounds: tuple[int, int]) -> int:
        self.lo, self.hi = bounds
        self.g = DiskArray(self.folder / "g.npy").rows(self.lo, self.hi)
        self.selected = np.zeros(self.hi - self.lo, dtype=bool)
        self._sort()
        return self.hi - self.lo

    def _sort(self) -> None:
        live = np.flatnonzero(~self.selected)
        self.order = live[np.lexsort((live, -self.g[live]))]
        self.bound = self.g[self.order]
        self.cursor = 0

    def propose(self, count: int) -> Proposal:
        """The ``count`` best unselected rows, exactly, and the best value of the rest."""
        ids = np.zeros(0, dtype=np.int64)
        vals = np.zeros(0, dtype=np.float64)
        pos, stale = self._skip_selected(), 0
        chunk = max(2 * count, 1024)
        while pos < len(self.order):
            b, idx = self.bound[pos:pos + chunk], self.order[pos:pos + chunk]
            cut_short = False
            if len(ids) > count:
                cut = vals[count]  # the (count + 1)-th best so far: rows bounded below it cannot enter
                if b[0] < cut:
                    break
                keep = int(np.searchsorted(-b, -cut, side="right"))
                cut_short = keep < len(b)
                b, idx = b[:keep], idx[:keep]
            pos += len(idx)
            live = ~self.selected[idx]
            idx, b = idx[live], b[live]
            v = self.g[idx]
            stale += int((v < b).sum())
            ids, vals = np.concatenate([ids, idx]), np.concatenate([vals, v])
            best = np.lexsort((ids, -vals))[:count + 1]
            ids, vals = ids[best], vals[best]
            if cut_short:
                break
        rest = float(vals[count]) if len(vals) > count else -np.inf
        if pos < len(self.order):
            rest = max(rest, float(self.bound[pos]))
        ids, vals = ids[:count], vals[:count]
        if stale > 4 * count + 4096 or self.cursor > len(self.order) // 2:
            self._sort()
        rows = self.lo + ids
        neighbors = DiskArray(self.folder / "neighbors.npy").take(rows)
        distances = DiskArray(self.folder / "distances.npy").take(rows)
        return Proposal(rows, vals, neighbors, np.exp(-self.gamma * distances.astype(np.float64)), rest)

    def _skip_selected(self) -> int:
        """Move the cursor past the selected rows at the front of the order."""
        pos = self.cursor
        while pos < len(self.order):
            block = self.selected[self.order[pos:pos + 4096]]
            if not block.all():
                pos += int(np.argmin(block))
                break
            pos += len(block)
        self.cursor = pos
        return pos

    def apply(self, round_: tuple[np.ndarray, np.ndarray, np.ndarray]) -> int:
        """Apply a round: lower the unselected targets (in order), then mark the taken rows."""
        taken, targets, decrements = round_
        local = targets - self.lo
        ok = ~self.selected[local]
        np.subtract.at(self.g, local[ok], decrements[ok])
        self.selected[taken - self.lo] = True
        return len(taken)


def greedy_select(pool, folder: Path, n: int, n_select: int, gamma_reverse: float) -> np.ndarray:
    """Pool rows in the order the sequential greedy selection takes them (see the module docstring)."""
    with pool.runtime.actor_pool(GreedyRange, len(pool.runtime.node_resources()), str(folder), gamma_reverse, spread=True) as workers:
        return select(workers, n, n_select)


def select(workers, n: int, n_select: int, desc: str = "D2 selection") -> np.ndarray:
    """The selection over ``workers`` (an actor pool of ``GreedyRange``: ``call_all`` / ``call_each``),
    each given an equal range of the ``n`` rows."""
    bounds = np.linspace(0, n, len(workers) + 1).astype(np.int64)
    workers.call_each("load", [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    chunks: list[np.ndarray] = []
    taken, batch = 0, FIRST_BATCH
    progress = Progress(desc, total=n_select, unit="rows")
    while taken < n_select:
        proposals = workers.call_all("propose", batch)
        sel, targets, decrements, whole = _round(proposals, batch, n_select - taken)
        if not len(sel):
            break
        owner = np.searchsorted(bounds, targets, side="right") - 1
        mine = np.searchsorted(bounds, sel, side="right") - 1
        workers.call_each("apply", [(sel[mine == w], targets[owner == w], decrements[owner == w])
                                    for w in range(len(workers))])
        chunks.append(sel)
        taken += len(sel)
        progress.update(len(sel))
        batch = min(MAX_BATCH, 2 * batch) if whole else max(MIN_BATCH, min(MAX_BATCH, 4 * len(sel)))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)


def _round(proposals: list[Proposal], batch: int, room: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(taken rows, message targets, decrements, whether the whole batch was taken) of one round."""
    ids = np.concatenate([p.ids for p in proposals])
    if len(ids) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), False
    vals = np.concatenate([p.values for p in proposals])
    order = np.lexsort((ids, -vals))
    threshold = max([p.rest for p in proposals] + ([float(vals[order[batch]])] if len(order) > batch else []))
    order = order[:batch]
    ids, cur = ids[order].tolist(), vals[order].tolist()
    neighbors = np.concatenate([p.neighbors for p in proposals])[order].tolist()
    weights = np.concatenate([p.weights for p in proposals])[order].tolist()
    where = {i: p for p, i in enumerate(ids)}
    heap = [(-v, i) for v, i in zip(cur, ids, strict=True)]  # sorted already: a heap
    taken: list[int] = []
    done: set[int] = set()
    targets: list[int] = []
    decrements: list[float] = []
    while heap and len(taken) < room:
        neg, i = heapq.heappop(heap)
        p = where[i]
        if i in done or -neg != cur[p]:
            continue  # taken already, or a stale value
        v = cur[p]
        if taken and not v > threshold:
            break  # a row outside the batch may come first now
        taken.append(i)
        done.add(i)
        for j, w in zip(neighbors[p], weights[p], strict=True):
            if j < 0 or j in done:
                continue
            d = v * w
            targets.append(j)
            decrements.append(d)
            q = where.get(j)
            if q is not None:
                cur[q] -= d
                heapq.heappush(heap, (-cur[q], j))
    whole = len(taken) == len(ids)
    return (np.asarray(taken, dtype=np.int64), np.asarray(targets, dtype=np.int64),
            np.asarray(decrements, dtype=np.float64), whole)
