"""A small HDR-style histogram: log-linear buckets with a fixed relative precision.

Values are non-negative integers (the harness records microseconds). Like
HdrHistogram, each power-of-two range is split into ``2**precision_bits``
equal sub-buckets, so any recorded value is known within ``2**-precision_bits``
of itself (the default, 7 bits, is better than 1 %) whatever its magnitude,
with a few thousand counters at most. Histograms merge by adding counts, which
is how the figures of several load-generator processes are combined, and
travel between processes as plain JSON (:meth:`to_dict` / :meth:`from_dict`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class Histogram:
    """Counts of values in log-linear buckets; percentiles within the bucket precision."""

    __slots__ = ("_counts", "_sub", "bits", "count", "max", "min", "total")

    def __init__(self, precision_bits: int = 7) -> None:
        self.bits = precision_bits
        self._sub = 1 << precision_bits
        self._counts: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.min = 0
        self.max = 0

    def _index(self, value: int) -> int:
        if value < self._sub:
            return value
        shift = value.bit_length() - self.bits - 1
        return ((shift + 1) << self.bits) + (value >> shift) - self._sub

    def _upper(self, index: int) -> int:
        """The largest value that falls in bucket ``index``."""
        if index < self._sub:
            return index
        shift = (index >> self.bits) - 1
        mantissa = (index & (self._sub - 1)) + self._sub
        return ((mantissa + 1) << shift) - 1

    def record(self, value: int | float, times: int = 1) -> None:
        v = int(value)
        if v < 0:
            v = 0
        index = self._index(v)
        self._counts[index] = self._counts.get(index, 0) + times
        if self.count == 0 or v < self.min:
            self.min = v
        if v > self.max:
            self.max = v
        self.count += times
        self.total += v * times

    def record_many(self, values: Iterable[int | float]) -> None:
        for value in values:
            self.record(value)

    def merge(self, other: Histogram) -> None:
        if other.bits != self.bits:
            raise ValueError("histograms of different precision do not merge")
        if other.count == 0:
            return
        for index, n in other._counts.items():
            self._counts[index] = self._counts.get(index, 0) + n
        self.min = other.min if self.count == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    def percentile(self, p: float) -> int:
        """The value at or below which ``p`` percent of the recorded values fall."""
        if self.count == 0:
            return 0
        rank = max(1, int(self.count * p / 100.0 + 0.999999))
        seen = 0
        for index in sorted(self._counts):
            seen += self._counts[index]
            if seen >= rank:
                return min(self._upper(index), self.max)
        return self.max

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def summary(self, scale: float = 1.0) -> dict[str, float | int]:
        """count, mean, p50, p90, p99, p99.9, max — values divided by ``scale``."""
        return {
            "count": self.count,
            "mean": round(self.mean / scale, 3),
            "p50": round(self.percentile(50) / scale, 3),
            "p90": round(self.percentile(90) / scale, 3),
            "p99": round(self.percentile(99) / scale, 3),
            "p99_9": round(self.percentile(99.9) / scale, 3),
            "max": round(self.max / scale, 3),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "count": self.count,
            "total": self.total,
            "min": self.min,
            "max": self.max,
            "counts": {str(k): v for k, v in self._counts.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        hist = cls(int(data.get("bits", 7)))
        hist._counts = {int(k): int(v) for k, v in data.get("counts", {}).items()}
        hist.count = int(data.get("count", 0))
        hist.total = int(data.get("total", 0))
        hist.min = int(data.get("min", 0))
        hist.max = int(data.get("max", 0))
        return hist

    @classmethod
    def merged(cls, parts: Iterable[dict[str, Any] | Histogram]) -> Histogram:
        out: Histogram | None = None
        for part in parts:
            hist = part if isinstance(part, Histogram) else cls.from_dict(part)
            if out is None:
                out = cls(hist.bits)
            out.merge(hist)
        return out if out is not None else cls()
