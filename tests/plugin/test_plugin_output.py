"""Options, JSON, saved runs, comparison, plot and pytest-xdist of the conc-bench plugin."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pytest_conc_ml.plot
from pytest_conc_ml.storage import commit_info

# pytester's in-process runs drop the modules they import; importing these here keeps one
# copy of each (numpy cannot load twice, and conc_ml's interceptor must be the one _parallel sees).
for _module in (
    "conc_ml._intercept",
    "conc_ml.testing",
    "conc_ml.backends._thread",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "matplotlib.backends.backend_svg",
    "hypothesis",
):
    pytest.importorskip(_module)

SQUARE_TEST = """
    from conc_ml import parallel


    @parallel(backend="thread", chunks=2, combine="concat")
    def square(xs):
        return [x * x for x in xs]


    def test_square():
        assert square([1, 2, 3, 4]) == [1, 4, 9, 16]
"""

FAST = ("--conc-bench", "--conc-bench-rounds=2", "--conc-bench-warmup=0")


@pytest.fixture
def square_test(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester with one test calling one ``@parallel`` function."""
    pytester.makepyfile(test_square=SQUARE_TEST)
    return pytester


def test_options_are_in_their_own_help_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "conc-ml: check parallel == sequential and measure speedups:",
            "  --conc-bench *",
            "  --conc-bench-rounds=N*",
            "  --conc-bench-workers=1,2,4*",
            "  --conc-bench-plot=PATH*",
        ]
    )
    result.stdout.fnmatch_lines(["  conc_bench (bool):*same as --conc-bench", "  conc_bench_rounds (string):*"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--conc-bench-rounds=0"], "*--conc-bench-rounds must be an integer >= 1, got 0"),
        (["--conc-bench", "--conc-bench-json="], "*--conc-bench-json needs a value, got an empty one"),
        (["--conc-bench-warmup=x"], "*--conc-bench-warmup must be an integer >= 0, got 'x'"),
        (["--conc-bench-min-speedup=-2"], "*--conc-bench-min-speedup must be a number >= 0, got '-2'"),
        (["--conc-bench-rtol=nan"], "*--conc-bench-rtol must be a number >= 0, got 'nan'"),
        (["--conc-bench-workers=1,0"], "*--conc-bench-workers must be an integer >= 1, got 0"),
        (["--conc-bench-workers=2,2"], "*--conc-bench-workers lists a worker count twice: 2, 2"),
        (["--conc-bench-backends=thread,prcess"], "*--conc-bench-backends: unknown backend 'prcess'*"),
        (["--conc-bench-backends=,"], "*--conc-bench-backends must list backend names*"),
        (["--conc-bench", "--conc-bench-save=../up"], "*--conc-bench-save must be a name of letters*'../up'"),
        (["--conc-bench", "--conc-bench-plot=speed.pdf"], "*--conc-bench-plot must end in .png or .svg, got*"),
        (["--conc-bench-json=out.json"], "*--conc-bench-json needs --conc-bench (without it nothing is timed)"),
        (["--conc-bench", "--conc-bench-compare-fail=5"], "*--conc-bench-compare-fail needs --conc-bench-compare*"),
        (["--conc-bench", "--conc-bench-compare-fail=0", "--conc-bench-compare=x"], "*must be a number > 0*"),
    ],
)
def test_bad_option_values_are_usage_errors(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_bad_ini_value_names_the_ini_option(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nconc_bench_rounds = many\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini option conc_bench_rounds must be an integer >= 1, got 'many'"])


def test_plot_without_matplotlib_says_how_to_install_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pytest_conc_ml.plot, "matplotlib_missing", lambda: True)
    result = pytester.runpytest("--conc-bench", "--conc-bench-plot=speed.png")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*needs matplotlib, which is not installed; install it with: pip install 'conc-ml[[]plot[]]'"]
    )


def test_json_holds_machine_commit_and_rows(square_test: pytest.Pytester) -> None:
    result = square_test.runpytest(*FAST, "--conc-bench-json=reports/bench.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["conc-bench: JSON written to *reports/bench.json"])
    data = json.loads((square_test.path / "reports" / "bench.json").read_text())
    assert {"version", "datetime", "machine_info", "commit_info", "settings", "benchmarks"} <= set(data)
    assert data["machine_info"]["cpu"]["usable"] >= 1
    assert set(data["commit_info"]) >= {"id", "dirty"}
    assert data["settings"]["rounds"] == 2
    (row,) = data["benchmarks"]
    assert row["name"] == "square"
    assert row["fullname"] == "test_square.py::test_square::square"
    assert (row["backend"], row["workers"], row["chunks"]) == ("thread", 2, 2)
    for side in ("sequential", "parallel"):
        stats = row[side]
        assert set(stats) == {"min", "max", "mean", "median", "stddev", "iqr", "rounds"}
        assert stats["rounds"] == 2
        assert 0 < stats["min"] <= stats["median"] <= stats["max"]
    assert row["speedup"] == pytest.approx(row["sequential"]["median"] / row["parallel"]["median"])
    assert row["efficiency"] == pytest.approx(row["speedup"] / min(2, row["cpus"]))
    assert row["parity"] == {"ok": True, "rtol": 0.0, "atol": 0.0, "max_difference": 0.0}


def test_commit_info_of_a_git_checkout(tmp_path: Path) -> None:
    assert commit_info(tmp_path) == {"id": None, "dirty": None, "branch": None}

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return done.stdout.strip()

    notes = tmp_path / "notes.txt"
    notes.write_text("one\n")
    git("init", "-q", "-b", "trunk")
    git("add", "notes.txt")
    git("commit", "-qm", "one")
    assert commit_info(tmp_path) == {"id": git("rev-parse", "HEAD"), "dirty": False, "branch": "trunk"}
    notes.write_text("two\n")
    assert commit_info(tmp_path)["dirty"] is True


def test_save_then_compare(square_test: pytest.Pytester) -> None:
    saved = square_test.runpytest(*FAST, "--conc-bench-save=base")
    saved.assert_outcomes(passed=1)
    folder = square_test.path / ".conc_bench"
    assert (folder / "base.json").is_file()
    assert (folder / ".gitignore").read_text().splitlines()[-1] == "*"
    saved.stdout.fnmatch_lines(["conc-bench: saved as 'base' (*base.json): 1 row(s) from this run"])

    compared = square_test.runpytest(*FAST, "--conc-bench-compare=base")
    compared.assert_outcomes(passed=1)
    compared.stdout.fnmatch_lines(
        [
            "conc-bench: compared with saved run 'base'",
            "name*backend*wrk*chk*before*now*change*noise",
            "test_square::square*thread*2*2*x*x*%*%",
        ]
    )


#: chunks that sleep: times that hardly scatter, so the compare gate's noise bar stays low
SLEEPY_TEST = """
    import time

    from conc_ml import parallel


    @parallel(backend="thread", chunks=2, combine="concat")
    def nap(xs):
        time.sleep(0.01)
        return list(xs)


    def test_nap():
        assert nap([1, 2]) == [1, 2]
"""


def _scale_saved(path: Path, factor: float, *, iqr: float | None = None) -> None:
    data = json.loads(path.read_text())
    for row in data["benchmarks"]:
        row["sequential"]["median"] *= factor
        if iqr is not None:
            row["sequential"]["iqr"] = iqr * row["sequential"]["median"]
    path.write_text(json.dumps(data))


def test_compare_fail_fails_the_run_on_a_regression(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_nap=SLEEPY_TEST)
    args = ("--conc-bench", "--conc-bench-rounds=3", "--conc-bench-warmup=0")
    pytester.runpytest(*args, "--conc-bench-save=base").assert_outcomes(passed=1)
    path = pytester.path / ".conc_bench" / "base.json"
    # make the saved run a million times faster than anything this run can measure
    _scale_saved(path, 1e6)
    result = pytester.runpytest(*args, "--conc-bench-compare=base", "--conc-bench-compare-fail=10")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # wrapped to the terminal's 80 columns
    result.stdout.fnmatch_lines(
        [
            "conc-bench: REGRESSION test_nap.py::test_nap::nap [[]thread, 2 workers[]]: speedup*",
            "    *bar -10%, noise ±*%)",
        ]
    )
    # a bar the change stays within keeps the run green
    _scale_saved(path, 1e-6)
    assert pytester.runpytest(*args, "--conc-bench-compare=base", "--conc-bench-compare-fail=1e9").ret == 0


def test_compare_fail_allows_for_the_measured_noise(square_test: pytest.Pytester) -> None:
    square_test.runpytest(*FAST, "--conc-bench-save=base").assert_outcomes(passed=1)
    path = square_test.path / ".conc_bench" / "base.json"
    # a saved run a million times faster, but whose sequential rounds scattered over 5 medians:
    # no drop can be told from noise that large, so the gate does not fail on it
    _scale_saved(path, 1e6, iqr=5.0)
    result = square_test.runpytest(*FAST, "--conc-bench-compare=base", "--conc-bench-compare-fail=20")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*test_square::square*thread*2*2*x*x*-*%*±5??%"])
    result.stdout.no_fnmatch_line("*REGRESSION*")


def test_compare_fail_that_matches_nothing_fails_the_run(square_test: pytest.Pytester) -> None:
    square_test.runpytest(*FAST, "--conc-bench-save=base").assert_outcomes(passed=1)
    square_test.makepyfile(test_square="def test_other():\n    pass\n")
    result = square_test.runpytest(*FAST, "--conc-bench-compare=base", "--conc-bench-compare-fail=20")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["conc-bench: GATE NOT CHECKED: --conc-bench-compare-fail=20 checked nothing*"])


def test_compare_with_an_unknown_run_lists_the_saved_ones(square_test: pytest.Pytester) -> None:
    square_test.runpytest(*FAST, "--conc-bench-save=first").assert_outcomes(passed=1)
    result = square_test.runpytest(*FAST, "--conc-bench-compare=second")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*no run saved as 'second' in *.conc_bench; saved runs: first"])


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plot_of_a_worker_sweep(square_test: pytest.Pytester, suffix: str) -> None:
    result = square_test.runpytest(*FAST, "--conc-bench-workers=1,2", f"--conc-bench-plot=out/speed{suffix}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"conc-bench: plot of 1 series written to *speed{suffix}"])
    content = (square_test.path / "out" / f"speed{suffix}").read_bytes()
    assert content.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in content


def test_xdist_checks_parity_and_warns_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_a=SQUARE_TEST,
        test_b="""
            from conc_ml import parallel

            _calls = iter(range(10**9))

            @parallel(backend="thread", chunks=2, combine="concat")
            def drifting(xs):
                offset = next(_calls)
                return [x + offset for x in xs]

            def test_drifting():
                drifting([1, 2, 3])

            def test_more():
                drifting([4, 5])
        """,
    )
    result = pytester.runpytest_subprocess("-n", "2", "--conc-bench", "-p", "no:cacheprovider", timeout=100)
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*conc-bench: WARNING: timing is off under pytest-xdist*",
            "    *parity was still checked*",
            "test_drifting::drifting",
            "*-*FAIL*",
        ]
    )
    assert result.stdout.str().count("timing is off under pytest-xdist") == 1
    result.stdout.fnmatch_lines(["test_square::square", "  thread * -  *-  *ok", "*timing was off*"])


def test_a_run_without_calls_says_so(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_plain():\n    assert True\n")
    result = pytester.runpytest("--conc-bench")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["conc-bench: the tests that ran made no @parallel call"])
    result.stdout.no_fnmatch_line("*timing is off*")


def test_a_run_without_the_flag_does_not_import_conc_ml(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import sys

        import pytest_conc_ml.plugin

        def test_lazy():
            assert pytest_conc_ml.plugin.pytest_configure  # the plugin is loaded...
            assert "conc_ml" not in sys.modules  # ...and conc_ml is not
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=100).assert_outcomes(passed=1)


# -- the report: names, width, order; the JSON; the plot ---------------------------------------


def test_rows_are_named_by_the_shortest_unique_node_id(pytester: pytest.Pytester) -> None:
    body = textwrap.dedent(
        """
        from conc_ml import parallel

        @parallel(backend="thread", chunks=2, combine="concat")
        def fit(xs):
            return list(xs)

        class TestA:
            def test_fit(self):
                fit([1, 2])
        """
    )
    pytester.makepyfile(test_one=body + "\nclass TestB:\n    def test_fit(self):\n        fit([1, 2])\n")
    pytester.makepyfile(test_two=body)
    result = pytester.runpytest(*FAST, "-p", "no:randomly")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["test_one.py::TestA::test_fit::fit", "*", "TestB::test_fit::fit", "*"])
    result.stdout.fnmatch_lines(["test_two.py::TestA::test_fit::fit"])


def test_the_report_fits_80_columns_and_orders_calls_naturally(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_many="""
        from conc_ml import parallel

        @parallel(backend="thread", chunks=2, combine="concat")
        def a_function_with_a_rather_long_name_to_see_how_the_table_copes(xs):
            return list(xs)

        def test_a_test_whose_name_also_runs_long_for_the_purpose_of_this_check():
            for size in range(2, 13):
                a_function_with_a_rather_long_name_to_see_how_the_table_copes(list(range(size)))
        """
    )
    result = pytester.runpytest("--conc-bench", "--conc-bench-rounds=1", "--conc-bench-warmup=0")
    result.assert_outcomes(passed=1)
    section = result.outlines[next(i for i, line in enumerate(result.outlines) if "- conc-bench -" in line) :]
    assert max(len(line) for line in section) <= 80
    calls = [line.rpartition("#")[2] for line in section if "copes#" in line]
    assert calls == [str(n) for n in range(2, 12)]  # #2 ... #11, #10 after #9


def test_the_json_loads_in_pytest_benchmark_compare(square_test: pytest.Pytester) -> None:
    pytest.importorskip("pytest_benchmark")
    result = square_test.runpytest(*FAST, "--conc-bench-json=bench.json")
    result.assert_outcomes(passed=1)
    path = square_test.path / "bench.json"
    (row,) = json.loads(path.read_text())["benchmarks"]
    assert len(row["stats"]["data"]) == row["stats"]["rounds"] == 2
    assert row["times"]["sequential"] == row["extra_info"]["sequential"]["data"]
    assert row["stats"]["median"] == row["parallel"]["median"]
    compare = subprocess.run(
        [sys.executable, "-m", "pytest_benchmark", "compare", "--columns=min,median,rounds", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=square_test.path,
    )
    assert compare.returncode == 0, compare.stderr
    assert "Failed to load" not in compare.stdout + compare.stderr
    assert "square" in compare.stdout


def test_the_plot_has_whole_worker_ticks_and_its_legend_clear_of_the_data() -> None:
    from pytest_conc_ml.plot import speedup_figure
    from pytest_conc_ml.stats import Measurement, Parity, Stats

    def row(workers: int, seconds: float) -> Measurement:
        return Measurement(
            name="fit",
            fullname="t.py::test_fit::fit",
            test="test_fit",
            backend="thread",
            workers=workers,
            chunks=8,
            cpus=8,
            sequential=Stats.from_times([1.0, 1.0]),
            parallel=Stats.from_times([seconds, seconds]),
            parity=Parity(True, 0.0, 0.0, 0.0),
            sweep=True,
        )

    figure, drawn = speedup_figure([row(1, 1.0), row(2, 0.55), row(3, 0.4)])
    assert drawn == 1
    calls = [dataclasses.replace(row(2, 0.5), fullname=f"t.py::test_fit::fit#{n}", call=n) for n in (1, 2, 10)]
    legend_of_calls = speedup_figure(calls)[0].axes[0].get_legend()
    assert legend_of_calls is not None
    # natural order: #2 before #10, as in the table
    assert [text.get_text() for text in legend_of_calls.get_texts()] == [
        "test_fit::fit (thread)",
        "test_fit::fit#2 (thread)",
        "test_fit::fit#10 (thread)",
        "ideal",
    ]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    (axes,) = figure.axes
    low, high = axes.get_xlim()
    ticks = [tick for tick in axes.get_xticks() if low <= tick <= high]
    assert ticks
    assert all(float(tick).is_integer() for tick in ticks)
    legend = axes.get_legend()
    assert legend is not None
    renderer = canvas.get_renderer()
    assert not legend.get_window_extent(renderer).overlaps(axes.get_window_extent(renderer))


def test_importing_conc_ml_before_pytest_main_gives_no_rewrite_warning(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        def pytest_configure(config):
            # What pytest does for each package of an installed (not editable) distribution
            # that has a pytest11 entry point, as conc-ml does: mark it for assert rewriting.
            config.pluginmanager.rewrite_hook.mark_rewrite("conc_ml", "pytest_conc_ml")
        """
    )
    pytester.makepyfile(test_ok="def test_ok():\n    pass\n")
    program = "import sys, conc_ml, pytest_conc_ml.plugin, pytest; sys.exit(pytest.main(['-p', 'no:cacheprovider']))"
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=100, check=False, cwd=pytester.path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    # anyio too: its pytest plugin asks for rewriting, and conc_ml imports it only for io_bound.
    for package in ("conc_ml", "pytest_conc_ml", "anyio"):
        assert f"cannot be rewritten; {package}\n" not in done.stdout + done.stderr
