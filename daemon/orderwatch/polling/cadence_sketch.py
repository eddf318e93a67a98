"""What the daemon has seen of its orders' completion times: a log-spaced histogram of
completion ages (seconds from an order's adding to its completion), small enough to keep in
the store's meta table and to merge between replicas.

A completion is known only to lie between two polls: after the last one that said
PROCESSING and by the one that said final. It is spread evenly (in time) over that interval,
not put at the final poll: learned from the poll that saw it, every completion would sit on
the schedule that was polling, and a cadence learned from a back-off could never be finer
than that back-off. (Spreading it as the sketch already said completions fall there was
tried: it leaks weight toward where earlier, equally coarse, intervals put it, and shrank
the tail it learned; docs/polling.md has the figures.)

The histogram forgets: every completion added scales what came before by
(1 - 1/WINDOW), so the last WINDOW or so completions carry most of the weight, whatever the
traffic, and a change in the account's behaviour shows within a few hundred completions.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

BIN_RATIO = 1.05  # each bin 5% wider than the last: 5% resolution at every age
AGE_MIN_S = 0.01  # the first bin's lower edge; younger ages count there
N_BINS = 430  # up to 0.01 * 1.05^430 s, about 150 days: past any give_up_after
SMOOTH_BINS = 2  # planning sees each bin's weight spread over 2 bins either side (+-10%)
WINDOW = 1000  # completions: the weight before the last WINDOW has faded to 1/e
FORMAT = 1  # the stored format; another one is discarded (the cadence is learned again)
_LOG_R = math.log(BIN_RATIO)


def edge(i: int) -> float:
    """The lower edge of bin i (its upper edge is edge(i + 1))."""
    return AGE_MIN_S * BIN_RATIO**i


def bin_of(age: float) -> int:
    if age <= AGE_MIN_S:
        return 0
    return min(N_BINS - 1, int(math.log(age / AGE_MIN_S) / _LOG_R))


@dataclass
class Sketch:
    """Weights by bin (sparse). `seen` counts every completion ever added (it does not fade):
    it says how much the sketch is based on, the weights say what it shows."""

    weights: dict[int, float] = field(default_factory=dict)
    seen: int = 0

    @property
    def total(self) -> float:
        return sum(self.weights.values())

    def add(self, intervals: Iterable[tuple[float, float]]) -> Sketch:
        """A new sketch with these completions added, each (lo, hi]: after the age `lo`, by
        the age `hi`, spread evenly over that interval. Each fades the weight before it, the
        earlier ones of the batch too."""
        batch = list(intervals)
        out = Sketch(dict(self.weights), self.seen + len(batch))
        out._fade(len(batch))
        keep = 1.0 - 1.0 / WINDOW
        for k, (lo, hi) in enumerate(batch):
            lo = max(0.0, lo)
            out._spread(lo, max(hi, lo), keep ** (len(batch) - 1 - k))
        return out

    def merged(self, newer: Sketch) -> Sketch:
        """This sketch faded by the completions in `newer`, plus `newer`: how a replica's new
        completions join the shared sketch (each replica sends only what it added since)."""
        out = Sketch(dict(self.weights), self.seen + newer.seen)
        out._fade(newer.seen)
        for i, w in newer.weights.items():
            out.weights[i] = out.weights.get(i, 0.0) + w
        return out

    def _fade(self, completions: int) -> None:
        if not completions:
            return
        keep = (1.0 - 1.0 / WINDOW) ** completions
        faded = {i: w * keep for i, w in self.weights.items()}
        self.weights = {i: w for i, w in faded.items() if w > 1e-6}  # gone, not noise

    def _spread(self, lo: float, hi: float, weight: float) -> None:
        if hi - lo < 1e-9:  # a point: its bin
            i = bin_of(hi)
            self.weights[i] = self.weights.get(i, 0.0) + weight
            return
        for i in range(bin_of(lo), bin_of(hi) + 1):
            a, b = max(lo, edge(i)), min(hi, edge(i + 1))
            if b > a:
                self.weights[i] = self.weights.get(i, 0.0) + weight * (b - a) / (hi - lo)

    # -- stored form -------------------------------------------------------------------
    def to_json(self) -> str:
        """Compact: the first used bin, then every weight from it to the last used one."""
        if not self.weights:
            return json.dumps({"format": FORMAT, "seen": self.seen, "first": 0, "w": []})
        first, last = min(self.weights), max(self.weights)
        w = [float(f"{self.weights.get(i, 0.0):.4g}") for i in range(first, last + 1)]
        return json.dumps(
            {"format": FORMAT, "seen": self.seen, "first": first, "w": w},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str | None) -> Sketch:
        """The stored sketch; an empty one for None. ValueError when unreadable."""
        if raw is None:
            return cls()
        try:
            d = json.loads(raw)
            if d.get("format") != FORMAT:
                raise ValueError(f"format {d.get('format')!r}")
            first, seen = int(d["first"]), int(d["seen"])
            ws = [float(w) for w in d["w"]]
        except (TypeError, KeyError, AttributeError, json.JSONDecodeError) as e:
            raise ValueError(f"unreadable cadence sketch ({type(e).__name__})") from None
        if first < 0 or first + len(ws) > N_BINS or seen < 0:
            raise ValueError("cadence sketch out of range")
        weights = {first + i: w for i, w in enumerate(ws) if w > 0 and math.isfinite(w)}
        return cls(weights, seen)


def _smoothed(weights: dict[int, float], k: int) -> dict[int, float]:
    """Each bin's weight shared with k bins either side (a triangle): a stretch where a few
    hundred completions happened to leave a hole is not taken for one where none come."""
    if k <= 0:
        return weights
    kernel = [k + 1 - abs(d) for d in range(-k, k + 1)]
    norm = sum(kernel)
    out: dict[int, float] = {}
    for i, w in weights.items():
        for d, kw in zip(range(-k, k + 1), kernel, strict=True):
            j = i + d
            if 0 <= j < N_BINS:
                out[j] = out.get(j, 0.0) + w * kw / norm
    return out


class Distribution:
    """The sketch as a distribution of completion ages, uniform within each bin: its CDF F,
    the latest age by which a share of completions has come (`age_at`), and partial means."""

    def __init__(self, sketch: Sketch, smooth: int = SMOOTH_BINS) -> None:
        weights = _smoothed(sketch.weights, smooth)
        total = sum(weights.values())
        if total <= 0:
            raise ValueError("an empty sketch has no distribution")
        first, last = min(weights), max(weights)
        self.xs = [edge(i) for i in range(first, last + 2)]
        cs, ms, c, m = [0.0], [0.0], 0.0, 0.0
        for i in range(first, last + 1):
            p = weights.get(i, 0.0) / total
            c += p
            m += p * (edge(i) + edge(i + 1)) / 2  # the bin's mass at its middle (uniform)
            cs.append(c)
            ms.append(m)
        cs[-1] = 1.0
        self.cs, self.ms = cs, ms
        self.end = self.xs[-1]  # no completion later than this

    def cdf(self, t: float) -> float:
        xs = self.xs
        if t <= xs[0]:
            return 0.0
        if t >= self.end:
            return 1.0
        j = bisect.bisect_right(xs, t) - 1
        c0, c1 = self.cs[j], self.cs[j + 1]
        return c0 + (c1 - c0) * (t - xs[j]) / (xs[j + 1] - xs[j])

    def age_at(self, share: float) -> float:
        """The latest age by which at most `share` of completions have come (so a stretch
        without completions is skipped, not split)."""
        if share >= 1.0:
            return self.end
        cs = self.cs
        j = bisect.bisect_right(cs, share) - 1
        j = min(j, len(cs) - 2)
        c0, c1 = cs[j], cs[j + 1]
        x0, x1 = self.xs[j], self.xs[j + 1]
        return x0 + (x1 - x0) * (share - c0) / (c1 - c0) if c1 > c0 else x1

    def mean_below(self, t: float) -> float:
        """The integral of age over completions up to `t` (E[T; T <= t])."""
        xs = self.xs
        if t <= xs[0]:
            return 0.0
        if t >= self.end:
            return self.ms[-1]
        j = bisect.bisect_right(xs, t) - 1
        x0, x1 = xs[j], xs[j + 1]
        density = (self.cs[j + 1] - self.cs[j]) / (x1 - x0)
        return self.ms[j] + density * (t * t - x0 * x0) / 2

    def mean(self) -> float:
        return self.ms[-1]
