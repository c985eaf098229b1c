"""
``bench/scrapes.py``: scrape files read back through prometheus_client's
parser, and its PromQL (``rate``, ``sum by``, ``max``,
``histogram_quantile``) against values worked out by hand.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest

from bench import scrapes

EXPOSITION = """\
# HELP shop_calls_total Calls.
# TYPE shop_calls_total counter
shop_calls_total{{listener="ups",status="ok"}} {ups_ok}
shop_calls_total{{listener="dhl",status="ok"}} {dhl_ok}
# HELP shop_waiting Waiting.
# TYPE shop_waiting gauge
shop_waiting {waiting}
"""


def scrape_file(tmp_path: Path, rows: list[tuple[float, float, float, float]]) -> Path:
    out = io.StringIO()
    out.write('{"run": {"users": 3}}\n')
    for at, ups_ok, dhl_ok, waiting in rows:
        text = EXPOSITION.format(ups_ok=ups_ok, dhl_ok=dhl_ok, waiting=waiting)
        scrapes.write_scrape(out, at, text)
    scrapes.write_mark(out, 1.5, "dhl hangs")
    path = tmp_path / "scrapes.jsonl"
    path.write_text(out.getvalue())
    return path


def test_a_scrape_file_reads_back_its_samples_marks_and_run(tmp_path: Path) -> None:
    run = scrapes.read(scrape_file(tmp_path, [(0.0, 1, 2, 0), (1.0, 3, 2, 4)]))
    assert run.times == [0.0, 1.0]
    assert run.marks == [(1.5, "dhl hangs")]
    assert run.info == {"users": 3}
    calls = run.instant("shop_calls_total", status="ok")
    assert calls == {
        (("listener", "ups"), ("status", "ok")): [1.0, 3.0],
        (("listener", "dhl"), ("status", "ok")): [2.0, 2.0],
    }
    assert run.instant("shop_calls_total", listener="dhl") == {
        (("listener", "dhl"), ("status", "ok")): [2.0, 2.0]
    }
    assert run.instant("shop_waiting") == {(): [0.0, 4.0]}


def test_a_line_of_another_kind_is_named(tmp_path: Path) -> None:
    path = tmp_path / "scrapes.jsonl"
    path.write_text('{"at": 1}\n')
    with pytest.raises(ValueError, match=r"scrapes.jsonl:1: expected exposition, mark or run"):
        scrapes.read(path)


def test_a_series_missing_from_a_scrape_takes_the_absent_value(tmp_path: Path) -> None:
    out = io.StringIO()
    scrapes.write_scrape(out, 0.0, "")
    scrapes.write_scrape(out, 1.0, EXPOSITION.format(ups_ok=5, dhl_ok=1, waiting=2))
    path = tmp_path / "scrapes.jsonl"
    path.write_text(out.getvalue())
    run = scrapes.read(path)
    assert run.instant("shop_calls_total", absent=0.0, listener="ups") == {
        (("listener", "ups"), ("status", "ok")): [0.0, 5.0]
    }
    [waiting] = run.instant("shop_waiting").values()
    assert math.isnan(waiting[0])
    assert waiting[1] == 2.0


def test_rate_is_the_increase_over_the_window_per_second() -> None:
    times = [0.0, 1.0, 2.0, 3.0, 4.0]
    series = {(): [0.0, 10.0, 30.0, 30.0, 70.0]}
    [rates] = scrapes.rate(series, times, window=2.0).values()
    assert math.isnan(rates[0])
    assert rates[1:] == [10.0, 15.0, 10.0, 20.0]  # (30-0)/2, (30-10)/2, (70-30)/2


def test_rate_counts_a_reset_counter_from_zero() -> None:
    [rates] = scrapes.rate({(): [5.0, 8.0, 2.0]}, [0.0, 1.0, 2.0], window=2.0).values()
    assert rates[2] == (3.0 + 2.0) / 2  # 5 -> 8, then reset: 0 -> 2


def test_sum_by_adds_the_series_of_each_group_and_skips_nan() -> None:
    series = {
        (("listener", "ups"), ("status", "ok")): [1.0, math.nan],
        (("listener", "dhl"), ("status", "ok")): [2.0, 3.0],
        (("listener", "dhl"), ("status", "timeout")): [math.nan, math.nan],
    }
    assert scrapes.sum_by(series, ["status"]) == {
        (("status", "ok"),): [3.0, 3.0],
        (("status", "timeout"),): [pytest.approx(math.nan, nan_ok=True)] * 2,
    }
    assert scrapes.sum_by(series, []) == {(): [3.0, 3.0]}
    assert scrapes.max_of(series) == [2.0, 3.0]


def buckets(counts: dict[str, float], **labels: str) -> scrapes.Series:
    return {tuple(sorted({**labels, "le": le}.items())): [count] for le, count in counts.items()}


def test_histogram_quantile_interpolates_within_the_bucket_as_prometheus_does() -> None:
    # 100 observations: 50 up to 0.1 s, 40 in (0.1, 0.5], 10 in (0.5, 1].
    histogram = buckets({"0.1": 50, "0.5": 90, "1.0": 100, "+Inf": 100}, listener="ups")
    assert scrapes.histogram_quantile(0.5, histogram) == {(("listener", "ups"),): [0.1]}
    [[p75]] = scrapes.histogram_quantile(0.75, histogram).values()
    assert p75 == pytest.approx(0.1 + 0.4 * (75 - 50) / 40)
    [[p99]] = scrapes.histogram_quantile(0.99, histogram).values()
    assert p99 == pytest.approx(0.5 + 0.5 * (99 - 90) / 10)
    [[p10]] = scrapes.histogram_quantile(0.1, histogram).values()
    assert p10 == pytest.approx(0.1 * 10 / 50)  # the first bucket starts at 0


def test_histogram_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    histogram = buckets({"0.1": 1, "2.5": 2, "+Inf": 10})
    assert scrapes.histogram_quantile(0.99, histogram) == {(): [2.5]}


def test_histogram_quantile_of_nothing_is_nan() -> None:
    [[value]] = scrapes.histogram_quantile(0.99, buckets({"0.1": 0, "+Inf": 0})).values()
    assert math.isnan(value)
    with pytest.raises(ValueError, match="quantile must be within 0 and 1, got 99"):
        scrapes.histogram_quantile(99, buckets({"+Inf": 1}))
