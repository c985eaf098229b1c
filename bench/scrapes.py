"""
Scrapes of a Prometheus ``/metrics`` endpoint over a run, and the little of
PromQL that the README's Grafana queries use (``rate``, ``sum by``,
``max``, ``histogram_quantile``), so that a plot can be drawn from the
scrapes alone, without a Prometheus server.

A scrape file holds one JSON object per line: ``{"at": s, "exposition":
text}`` for each scrape (the endpoint's text, as it came), ``{"at": s,
"mark": "..."}`` for a moment worth drawing (a fault applied), and one
``{"run": {...}}`` saying how the run was made. ``at`` is seconds since
the run started. The exposition text is read with prometheus_client's own
parser.

A series is its label set (sorted pairs) and one value per scrape, in scrape
order; ``nan`` where the scrape had no value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

Labels = tuple[tuple[str, str], ...]
Series = dict[Labels, list[float]]


@dataclass(frozen=True, slots=True)
class Scrape:
    """One scrape: when (seconds since the run started) and every sample it returned."""

    at: float
    samples: tuple[Sample, ...]

    @classmethod
    def parse(cls, at: float, exposition: str) -> Scrape:
        families = text_string_to_metric_families(exposition)
        return cls(at, tuple(sample for family in families for sample in family.samples))


@dataclass(slots=True)
class Run:
    """What a scrape file holds, in the order it was written."""

    scrapes: list[Scrape] = field(default_factory=list)
    marks: list[tuple[float, str]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def times(self) -> list[float]:
        return [scrape.at for scrape in self.scrapes]

    def instant(self, name: str, *, absent: float = math.nan, **matchers: str) -> Series:
        """
        Every series of sample ``name`` whose labels match ``matchers`` (equality),
        with its value at each scrape; ``absent`` where a scrape lacked it. For a
        counter of a run that started from nothing, pass ``absent=0.0``: a series
        appears at its first increment, so before it, it was 0.
        """
        found: Series = {}
        for index, scrape in enumerate(self.scrapes):
            for sample in scrape.samples:
                if sample.name != name:
                    continue
                if any(sample.labels.get(key) != value for key, value in matchers.items()):
                    continue
                labels = tuple(sorted(sample.labels.items()))
                values = found.setdefault(labels, [absent] * len(self.scrapes))
                values[index] = sample.value
        return found


def write_scrape(out: TextIO, at: float, exposition: str) -> None:
    out.write(json.dumps({"at": round(at, 3), "exposition": exposition}) + "\n")


def write_mark(out: TextIO, at: float, text: str) -> None:
    out.write(json.dumps({"at": round(at, 3), "mark": text}) + "\n")


def read(path: Path) -> Run:
    """
    A scrape file, parsed.

    Raises:
        ValueError: a line is not one of the file's three kinds (the message names the line).
    """
    run = Run()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        entry = json.loads(line)
        if "exposition" in entry:
            run.scrapes.append(Scrape.parse(entry["at"], entry["exposition"]))
        elif "mark" in entry:
            run.marks.append((entry["at"], entry["mark"]))
        elif "run" in entry:
            run.info = entry["run"]
        else:
            raise ValueError(f"{path}:{number}: expected exposition, mark or run, got {line!r}")
    return run


# -- PromQL, as far as the plots need it ------------------------------------------------------


def rate(series: Series, times: Sequence[float], window: float) -> Series:
    """
    ``rate(series[window])``: per second, each counter's increase over the
    last ``window`` seconds of scrapes (a counter that went down was reset:
    its new value is its increase, as Prometheus counts it). Unlike
    Prometheus, no extrapolation to the window's edges: the increase between
    the first and last scrape inside it, over the time between them. ``nan``
    until a scrape has an earlier one within the window.
    """
    rates: Series = {}
    for labels, values in series.items():
        out = [math.nan] * len(values)
        for i in range(1, len(values)):
            first = next(j for j in range(i + 1) if times[j] >= times[i] - window)
            first = min(first, i - 1)
            increase = 0.0
            for k in range(first + 1, i + 1):
                before, after = values[k - 1], values[k]
                if math.isnan(before) or math.isnan(after):
                    increase = math.nan
                    break
                increase += after - before if after >= before else after
            out[i] = increase / (times[i] - times[first])
        rates[labels] = out
    return rates


def sum_by(series: Series, by: Iterable[str]) -> Series:
    """``sum by (by) (series)``: ``nan`` values are left out; a group with none is ``nan``."""
    keep = set(by)
    grouped: Series = {}
    for labels, values in series.items():
        key = tuple(pair for pair in labels if pair[0] in keep)
        total = grouped.setdefault(key, [math.nan] * len(values))
        for index, value in enumerate(values):
            if not math.isnan(value):
                total[index] = value if math.isnan(total[index]) else total[index] + value
    return grouped


def max_of(series: Series) -> list[float]:
    """``max(series)``: at each scrape, the largest value of any series (``nan``: none)."""
    columns = zip(*series.values(), strict=True)
    return [max((v for v in column if not math.isnan(v)), default=math.nan) for column in columns]


def histogram_quantile(quantile: float, buckets: Series) -> Series:
    """
    ``histogram_quantile(quantile, buckets)``, as Prometheus computes it:
    ``buckets`` are cumulative ``_bucket`` series (their ``le`` label kept,
    usually rates summed by ``le`` and more); the result has one series per
    label set without ``le``. Within the bucket where the rank falls, the
    value is interpolated linearly (from 0 in the first bucket); a rank in
    the ``+Inf`` bucket gives the highest finite bound. ``nan`` where the
    histogram saw nothing.

    Raises:
        ValueError: ``quantile`` is not within 0 and 1.
    """
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must be within 0 and 1, got {quantile!r}")
    histograms: dict[Labels, list[tuple[float, list[float]]]] = {}
    for labels, values in buckets.items():
        le = dict(labels)["le"]
        key = tuple(pair for pair in labels if pair[0] != "le")
        histograms.setdefault(key, []).append((float(le), values))
    result: Series = {}
    for key, bounds in histograms.items():
        bounds.sort(key=lambda bound: bound[0])
        length = len(bounds[0][1])
        result[key] = [
            _quantile(quantile, [(upper, values[i]) for upper, values in bounds])
            for i in range(length)
        ]
    return result


def _quantile(quantile: float, cumulative: list[tuple[float, float]]) -> float:
    total = cumulative[-1][1]
    if math.isnan(total) or total <= 0 or not math.isinf(cumulative[-1][0]):
        return math.nan
    rank = quantile * total
    lower, below = 0.0, 0.0
    for upper, count in cumulative:
        if count >= rank:
            if math.isinf(upper):
                return lower  # the highest finite bound: nothing is known above it
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return math.nan
