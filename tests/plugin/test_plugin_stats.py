"""Statistics, derived figures, the difference walker and the table of the conc-bench plugin."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from pytest_conc_ml.fixture import BenchPlan
from pytest_conc_ml.parity import max_difference
from pytest_conc_ml.report import format_seconds, report_lines, short_names
from pytest_conc_ml.stats import Measurement, Parity, Stats, karp_flatt


def test_stats_of_known_times() -> None:
    stats = Stats.from_times([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (stats.min, stats.max, stats.mean, stats.median, stats.rounds) == (1.0, 5.0, 3.0, 3.0, 5)
    assert stats.stddev == pytest.approx(math.sqrt(2.5))
    assert stats.iqr == pytest.approx(2.0)  # quartiles 2 and 4 (inclusive method)
    assert Stats.from_dict(stats.as_dict()) == stats


def test_stats_of_one_round_and_of_none() -> None:
    single = Stats.from_times([0.5])
    assert (single.median, single.stddev, single.iqr) == (0.5, 0.0, 0.0)
    with pytest.raises(ValueError, match="at least one round"):
        Stats.from_times([])


def test_karp_flatt() -> None:
    assert karp_flatt(4.0, 4) == pytest.approx(0.0)  # perfect scaling
    assert karp_flatt(1.0, 4) == pytest.approx(1.0)  # no scaling at all
    assert karp_flatt(2.0, 4) == pytest.approx((0.5 - 0.25) / 0.75)
    assert karp_flatt(2.0, 1) is None
    assert karp_flatt(0.0, 4) is None


def _row(**changes: object) -> Measurement:
    row = Measurement(
        name="f",
        fullname="t.py::test_f::f",
        test="test_f",
        backend="thread",
        workers=4,
        chunks=3,
        cpus=8,
        sequential=Stats.from_times([0.9, 1.0, 1.1]),
        parallel=Stats.from_times([0.4, 0.5, 0.6]),
        parity=Parity(True, 0.0, 0.0, 0.0),
    )
    return dataclasses.replace(row, **changes)  # type: ignore[arg-type]


def test_measurement_figures() -> None:
    row = _row()
    assert row.ideal == 3  # min(workers=4, chunks=3, cpus=8)
    assert row.speedup == pytest.approx(2.0)
    assert row.efficiency == pytest.approx(2 / 3)
    assert row.serial_fraction == pytest.approx(karp_flatt(2.0, 3))
    assert row.spread == pytest.approx(row.parallel.iqr / 0.5)  # type: ignore[union-attr]
    assert _row(backend="sequential").ideal == 1
    assert _row(chunks=None, cpus=2).ideal == 2
    untimed = _row(sequential=None, parallel=None)
    assert (untimed.speedup, untimed.efficiency, untimed.spread) == (None, None, None)


def test_measurement_json_round_trip() -> None:
    row = _row(sweep=True)
    data = row.as_dict()
    assert data["speedup"] == pytest.approx(2.0)
    assert data["parity"] == {"ok": True, "rtol": 0.0, "atol": 0.0, "max_difference": 0.0}
    assert Measurement.from_dict(data) == row


def test_plan_configurations() -> None:
    assert BenchPlan(timing=True).configurations() == [{}]
    assert BenchPlan(timing=True, backends=("thread", "process"), workers=(1, 2)).configurations() == [
        {"backend": "thread", "workers": 1},
        {"backend": "thread", "workers": 2},
        {"backend": "process", "workers": 1},
        {"backend": "process", "workers": 2},
    ]


@pytest.mark.parametrize(
    ("actual", "expected", "difference"),
    [
        (1.0, 1.5, 0.5),
        (3, 3, 0.0),
        (np.array([1.0, np.nan, 3.0]), np.array([1.0, np.nan, 2.5]), 0.5),
        (np.array([np.inf]), np.array([np.inf]), 0.0),
        ([1, {"a": (2.0, 3.0)}], [1, {"a": (2.0, 3.25)}], 0.25),
        ({"a": "x"}, {"a": "x"}, 0.0),
        ([1, 2], [1, 2, 3], None),
        ({"a": 1}, {"b": 1}, None),
        (np.zeros(2), np.zeros(3), None),
        ("x", "y", None),
    ],
)
def test_max_difference(actual: object, expected: object, difference: float | None) -> None:
    found = max_difference(actual, expected)
    if difference is None:
        assert found is None
    else:
        assert found == pytest.approx(difference)


def test_max_difference_of_dataclasses() -> None:
    @dataclasses.dataclass
    class Fit:
        coef: np.ndarray
        name: str

    assert max_difference(Fit(np.ones(2), "a"), Fit(np.ones(2) * 1.25, "a")) == pytest.approx(0.25)


def test_format_seconds() -> None:
    assert [format_seconds(s) for s in (2.5, 0.0123, 4.5e-5, 3e-9, None)] == ["2.5 s", "12.3 ms", "45 us", "3 ns", "-"]


def test_report_highlights_slow_rows_and_parity_failures() -> None:
    slow = _row(sequential=Stats.from_times([1.0]), parallel=Stats.from_times([2.0]))
    failed = _row(fullname="t.py::test_f::g", name="g", parity=Parity(False, 0.0, 0.0, 1.0))
    lines = report_lines([slow, failed, _row(fullname="t.py::test_f::h", name="h")], header="H", timing=True)
    by_name = {text.split()[0]: markup for text, markup in lines if text.startswith("test_f::")}
    assert by_name == {"test_f::f": {"yellow": True}, "test_f::g": {"red": True, "bold": True}, "test_f::h": {}}
    assert any("FAIL" in text for text, _ in lines)
    assert lines[0] == ("H", {})


def test_short_names_add_parts_until_unique() -> None:
    names = short_names(
        [
            "tests/a/test_x.py::TestA::test_fit",
            "tests/a/test_x.py::TestB::test_fit",
            "tests/b/test_x.py::TestA::test_fit",
            "tests/b/test_y.py::test_other[1-2]",
        ]
    )
    assert names == {
        "tests/a/test_x.py::TestA::test_fit": "a/test_x.py::TestA::test_fit",
        "tests/a/test_x.py::TestB::test_fit": "TestB::test_fit",
        "tests/b/test_x.py::TestA::test_fit": "b/test_x.py::TestA::test_fit",
        "tests/b/test_y.py::test_other[1-2]": "test_other[1-2]",
    }


def test_report_warns_about_efficiency_above_one() -> None:
    # 3x on an ideal of 2 (two workers): more than the workers can give
    superlinear = _row(workers=2, sequential=Stats.from_times([3.0]), parallel=Stats.from_times([1.0]))
    lines = report_lines([superlinear, _row(fullname="t.py::test_f::g", name="g")], header="H", timing=True)
    texts = [text for text, _ in lines]
    assert any("150%!" in text.split() for text in texts)
    (warning,) = [(text, markup) for text, markup in lines if "efficiency above 100% on 1 row(s)" in text]
    assert warning[1] == {"yellow": True}


def test_a_worker_sweep_table_fits_80_columns() -> None:
    # wide figures: a sweep's serial column, the process backend, 3-digit chunks, spreads
    # above 100%, efficiency above 100%, ten rounds, a numeric difference, changed arguments
    rows = [
        _row(
            fullname=f"tests/test_models.py::TestForest::test_fit_many[{n}]::train_members",
            nodeid=f"tests/test_models.py::TestForest::test_fit_many[{n}]",
            name="train_members",
            backend="process",
            workers=n,
            chunks=128,
            cpus=16,
            sweep=True,
            sequential=Stats.from_times([0.5, 0.9, 1.0, 1.1, 9.9] * 2),
            parallel=Stats.from_times([0.05, 0.08, 0.09, 0.1, 0.9] * 2),
            parity=Parity(True, 0.0, 0.0, 1.2e-15),
            changed_arguments=True,
        )
        for n in (1, 2, 16)
    ]
    lines = report_lines(rows, header="H", timing=True, width=80)
    assert max(len(text) for text, _ in lines) <= 80
    assert any(text.split()[-1] == "serial" for text, _ in lines)  # the column is there, not dropped


def test_the_warnings_and_gate_lines_of_the_section_fit_its_width() -> None:
    from pytest_conc_ml.options import Settings
    from pytest_conc_ml.session import BenchSession

    session = BenchSession(Settings(enabled=True, min_speedup=1.5), xdist_controller=True)
    session.rows.append(_row())
    session.unchecked_gates.append("--conc-bench-min-speedup=1.5 checked nothing: " + "no call was timed " * 6)
    written: list[tuple[str, dict[str, bool]]] = []
    session.display(lambda text="", **markup: written.append((text, markup)), 80)
    assert max(len(text) for text, _ in written) <= 80
    assert any("timing is off under pytest-xdist" in text for text, _ in written)
    gate = [markup for text, markup in written if "GATE NOT CHECKED" in text or "no call was timed" in text]
    assert len(gate) >= 2
    assert all(markup == {"red": True, "bold": True} for markup in gate)
