"""``pytest --conc-bench`` on tests as they are: what the test sees, gates that check, other plugins."""

from __future__ import annotations

import json

import pytest

# pytester's in-process runs drop the modules they import; importing these here keeps one
# copy of each (numpy cannot load twice, and conc_ml's interceptor must be the one _parallel sees).
for _module in ("conc_ml._intercept", "conc_ml.testing", "conc_ml.backends._thread", "hypothesis", "numpy"):
    pytest.importorskip(_module)

FUNCTIONS = """
    import threading

    import numpy as np

    from conc_ml import parallel

    CALLS = []


    @parallel(backend="thread", chunks=2, combine="sum")
    def double_in_place(rows):
        rows *= 2  # changes the caller's array: a view of it reaches each chunk
        return float(rows.sum())


    @parallel(backend="thread", chunks=2, combine="concat")
    def fill_on_main_thread(xs, out):
        # an out-parameter that only the sequential run fills, as on the process backend
        if threading.current_thread() is threading.main_thread():
            out[: len(xs)] = xs
        return list(xs)


    @parallel(backend="thread", workers=2, combine="list")
    def per_chunk(xs):
        return sum(xs)


    @parallel(backend="thread", chunks=2, combine="concat")
    def counted(xs):
        CALLS.append(len(xs))
        return [x + 1 for x in xs]


    @parallel(backend="thread", chunks=2, combine="concat")
    def with_lock(xs, lock):
        with lock:
            return list(xs)
"""


@pytest.fixture
def functions(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester with the module ``promised`` of decorated functions."""
    pytester.makepyfile(promised=FUNCTIONS)
    return pytester


FAST = ("--conc-bench", "--conc-bench-rounds=2", "--conc-bench-warmup=0")


# -- what the test receives, and the arguments it is left with --------------------------------


def test_arguments_end_as_the_call_as_written_leaves_them(functions: pytest.Pytester) -> None:
    functions.makepyfile(
        """
        import numpy as np
        import promised

        def test_double():
            rows = np.arange(4.0)
            assert promised.double_in_place(rows) == 12.0
            # doubled once, as by the call as written: the other rounds ran on copies
            np.testing.assert_array_equal(rows, [0.0, 2.0, 4.0, 6.0])
        """
    )
    result = functions.runpytest(*FAST)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "test_double::double_in_place args!",
            "*ok",
            "conc-bench: these functions change the arguments they are given (in place):",
            "    double_in_place (test_double). The test saw the arguments as the call as",
        ]
    )


def test_an_out_parameter_only_sequential_fills_fails_as_without_the_plugin(functions: pytest.Pytester) -> None:
    functions.makepyfile(
        """
        import numpy as np
        import promised

        def test_fill():
            out = np.zeros(4)
            promised.fill_on_main_thread(np.arange(4.0), out)
            np.testing.assert_array_equal(out, np.arange(4.0))
        """
    )
    functions.runpytest().assert_outcomes(failed=1)
    result = functions.runpytest(*FAST)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*ParityError: conc-bench: fill_on_main_thread() *: the parallel run (*) left its "
            "arguments different from .sequential()*",
            "test_fill::fill_on_main_thread",
            "*FAIL*",
        ]
    )


def test_the_extra_rounds_side_effects_are_not_seen_by_the_test(functions: pytest.Pytester) -> None:
    functions.makepyfile(
        """
        import promised

        @promised.parallel(backend="thread", chunks=2, combine="sum")
        def write_lines(items, path):
            with open(path, "a") as f:
                f.writelines(f"{i}\\n" for i in items)
            return len(items)

        def test_global_list():
            promised.CALLS.clear()
            assert promised.counted([1, 2, 3, 4]) == [2, 3, 4, 5]
            assert promised.counted([5, 6]) == [6, 7]
            assert promised.CALLS == [2, 2, 1, 1]  # two calls of two chunks, as without the flag

        def test_file(tmp_path):
            path = tmp_path / "lines.txt"
            assert write_lines(list(range(10)), str(path)) == 10
            assert len(path.read_text().splitlines()) == 10
        """
    )
    functions.runpytest("-p", "no:randomly").assert_outcomes(passed=2)
    result = functions.runpytest(*FAST, "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    # the rounds did run, after each test's body
    result.stdout.fnmatch_lines(["test_global_list::counted", "  thread*2*2*ok", "test_file::write_lines"])


def test_async_calls_side_effects_are_not_seen_on_asyncio_or_trio(pytester: pytest.Pytester) -> None:
    pytest.importorskip("trio")
    pytester.makepyfile(
        """
        import anyio
        import pytest

        from conc_ml import parallel

        CALLS = []

        @parallel(backend="async", chunks=2, combine="concat")
        async def shout(words):
            CALLS.append(len(words))
            await anyio.sleep(0)
            return [w.upper() for w in words]

        @pytest.fixture(params=["asyncio", "trio"])
        def anyio_backend(request):
            return request.param

        @pytest.mark.anyio
        async def test_shout():
            CALLS.clear()
            assert await shout(["a", "b", "c"]) == ["A", "B", "C"]
            assert sorted(CALLS) == [1, 2]  # two chunks, in whatever order they ran
        """
    )
    result = pytester.runpytest(*FAST, "-p", "anyio", "-p", "no:asyncio")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["test_shout?asyncio?::shout", "  async*2*2*ok", "test_shout?trio?::shout"])


def test_a_result_the_test_changes_is_compared_as_the_call_returned_it(functions: pytest.Pytester) -> None:
    functions.makepyfile(
        """
        import promised

        def test_sorts_its_result():
            result = promised.counted([3, 1, 2])
            result.sort(reverse=True)
            result.append(0)
            assert result == [4, 3, 2, 0]
        """
    )
    result = functions.runpytest(*FAST)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["test_sorts_its_result::counted", "  thread*ok"])


def test_a_parity_failure_in_a_property_test_is_shrunk_by_hypothesis(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import threading

        from hypothesis import given, settings, strategies as st

        from conc_ml import parallel

        @parallel(backend="thread", chunks=2, combine="concat")
        def order(xs):
            # reversed off the main thread: parallel != sequential as soon as a chunk has two items
            return list(xs) if threading.current_thread() is threading.main_thread() else list(xs)[::-1]

        @settings(max_examples=50, database=None)
        @given(st.lists(st.integers(0, 9), max_size=8))
        def test_order(xs):
            assert len(order(xs)) == len(xs)
        """
    )
    result = pytester.runpytest(*FAST)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ParityError: conc-bench: order()*", "*test_order(", "*xs=[[]*],"])
    # shrunk (the check ran inside the example): a short list with two different items in a chunk
    shown = next(line for line in result.outlines if "xs=[" in line)
    example = json.loads(shown.split("xs=", 1)[1].rstrip(","))
    assert 3 <= len(example) <= 4
    assert sorted(set(example)) == [0, 1]


def test_a_worker_sweep_does_not_change_what_the_test_receives(functions: pytest.Pytester) -> None:
    functions.makepyfile(
        """
        import promised

        def test_sweep():
            # workers=2 as written: two chunks, whatever the sweep measures
            assert promised.per_chunk([1, 2, 3, 4]) == [3, 7]
        """
    )
    result = functions.runpytest(*FAST, "--conc-bench-workers=1,2")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["test_sweep::per_chunk", "  thread*1*1*ok*", "  thread*2*2*ok*"])


def test_calls_can_be_opted_out_by_marker_and_option(functions: pytest.Pytester) -> None:
    functions.makepyfile(
        """
        import pytest
        import promised

        @pytest.mark.conc_bench(exclude=True)
        def test_whole_test():
            promised.counted([1, 2])
            assert len(promised.CALLS) == 2  # one run of two chunks

        @pytest.mark.conc_bench(exclude=[promised.counted])
        def test_one_function():
            promised.counted([1, 2])
            assert len(promised.CALLS) == 4

        def test_by_option():
            promised.counted([1, 2])
            assert len(promised.CALLS) == 6
        """
    )
    result = functions.runpytest(*FAST, "-p", "no:randomly", "--conc-bench-exclude=promised.count*")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["conc-bench: left alone 3 call(s) of counted (excluded with exclude=)"])


def test_arguments_that_cannot_be_copied_run_once_and_say_so(functions: pytest.Pytester) -> None:
    functions.makepyfile(
        """
        import threading
        import promised

        def test_lock():
            assert promised.with_lock([1, 2, 3], threading.Lock()) == [1, 2, 3]
        """
    )
    result = functions.runpytest(*FAST)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "test_lock::with_lock",
            "  thread*skip",
            "conc-bench: test_lock::with_lock: its arguments cannot be copied (TypeError:",
        ]
    )


# -- gates that cannot check say so ----------------------------------------------------------


@pytest.mark.parametrize(
    "gate", ["--conc-bench-min-speedup=50", "--conc-bench-save=base", "--conc-bench-compare-fail=5"]
)
def test_timing_gates_under_xdist_are_usage_errors(functions: pytest.Pytester, gate: str) -> None:
    pytest.importorskip("xdist")
    functions.makepyfile("import promised\n\ndef test_call():\n    promised.counted([1])\n")
    if gate.startswith("--conc-bench-compare-fail"):
        functions.runpytest(*FAST, "--conc-bench-save=base").assert_outcomes(passed=1)
        gate_args: tuple[str, ...] = (gate, "--conc-bench-compare=base")
    else:
        gate_args = (gate,)
    result = functions.runpytest("-n", "2", *FAST, *gate_args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*cannot work under pytest-xdist*Run the timed job without -n*"])


def test_a_speedup_bar_with_nothing_timed_fails_the_run(functions: pytest.Pytester) -> None:
    functions.makepyfile(test_other="def test_plain():\n    pass\n")
    result = functions.runpytest(*FAST, "--conc-bench-min-speedup=1.5")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["conc-bench: GATE NOT CHECKED: --conc-bench-min-speedup=1.5 checked nothing*"])


def test_a_save_keeps_the_rows_this_run_did_not_measure(functions: pytest.Pytester) -> None:
    functions.makepyfile(
        """
        import promised

        def test_first():
            promised.counted([1, 2])

        def test_second():
            promised.per_chunk([1, 2])
        """
    )
    path = functions.path / ".conc_bench" / "base.json"
    functions.runpytest(*FAST, "--conc-bench-save=base").assert_outcomes(passed=2)
    before = {row["fullname"] for row in json.loads(path.read_text())["benchmarks"]}
    assert len(before) == 2

    subset = functions.runpytest(*FAST, "--conc-bench-save=base", "-k", "test_first")
    subset.assert_outcomes(passed=1, deselected=1)
    subset.stdout.fnmatch_lines(["conc-bench: saved as 'base' (*): 1 row(s) from this run, 1 kept from before"])
    assert {row["fullname"] for row in json.loads(path.read_text())["benchmarks"]} == before

    collected = functions.runpytest(*FAST, "--conc-bench-save=base", "--collect-only")
    collected.stdout.fnmatch_lines(["conc-bench: nothing timed, so the saved run 'base' was left as it was"])
    assert {row["fullname"] for row in json.loads(path.read_text())["benchmarks"]} == before


# -- other plugins ---------------------------------------------------------------------------


def test_calls_through_pytest_benchmark_are_left_alone(functions: pytest.Pytester) -> None:
    pytest.importorskip("pytest_benchmark")
    functions.makepyfile(
        """
        import promised

        def test_timed_by_pytest_benchmark(benchmark):
            assert benchmark.pedantic(promised.counted, args=([1, 2],), rounds=3, iterations=1) == [2, 3]
            assert len(promised.CALLS) == 3 * 2  # three rounds of two chunks, nothing more
        """
    )
    result = functions.runpytest(*FAST)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["conc-bench: left alone 3 call(s) of counted (made through pytest-benchmark's"])
    result.stdout.no_fnmatch_line("*::counted*")


def test_hypothesis_tests_get_no_deadline_and_one_row_per_call_site(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time

        from hypothesis import given, settings, strategies as st

        from conc_ml import parallel


        @parallel(backend="thread", chunks=2, combine="concat")
        def slow(xs):
            time.sleep(0.03)
            return list(xs)


        @settings(max_examples=4, database=None)
        @given(st.lists(st.integers(), min_size=2, max_size=4))
        def test_property(xs):
            assert slow(xs) == xs
        """
    )
    result = pytester.runpytest("--conc-bench", "--conc-bench-rounds=3", "--conc-bench-warmup=1")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["test_property::slow (4 calls)", "  thread*2*2*3*ok"])
    result.stdout.no_fnmatch_line("*slow#2*")
