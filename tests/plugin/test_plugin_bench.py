"""``pytest --conc-bench``: interception, parity, the fixture, the marker and the speedup gate."""

from __future__ import annotations

import json

import pytest

# pytester's in-process runs drop the modules they import; importing these here keeps one
# copy of each (numpy cannot load twice, and conc_ml's interceptor must be the one _parallel sees).
pytest.importorskip("conc_ml._intercept")
for _module in ("conc_ml.testing", "conc_ml.backends._thread", "conc_ml.backends._async", "anyio", "hypothesis"):
    pytest.importorskip(_module)

#: the functions the inner test sessions call; thread and sequential backends keep them quick
FUNCTIONS = """
    import threading

    from conc_ml import parallel

    CHUNK_CALLS = []


    @parallel(backend="thread", chunks=2, combine="concat")
    def square(xs):
        CHUNK_CALLS.append(len(xs))
        return [x * x for x in xs]


    @parallel(backend="thread", chunks=2, combine="sum")
    def noisy_sum(xs, rng):
        return float(rng.normal(size=len(xs)).sum())


    _counter = iter(range(10**9))


    @parallel(backend="thread", chunks=2, combine="concat")
    def not_reproducible(xs):
        # each call sees a new offset: parallel and sequential runs disagree
        offset = next(_counter)
        return [x + offset for x in xs]


    @parallel(backend="thread", chunks=2, combine="concat")
    def off_in_threads(xs):
        # a tiny difference, only where the chunk runs in a worker thread
        tiny = 1e-9 if threading.current_thread() is not threading.main_thread() else 0.0
        return [x + tiny for x in xs]


    @parallel(backend="thread", chunks=2, combine="concat")
    def rejects_negatives(xs):
        if any(x < 0 for x in xs):
            raise ValueError("negative input")
        return list(xs)


    @parallel(backend="thread", chunks=2, combine="concat")
    def outer(xs):
        return [sum(square(list(range(x + 1)))) for x in xs]


    @parallel(backend="thread", chunks=2, combine="concat")
    def with_stream(xs, stream):
        return list(xs)


    @parallel(backend="async", chunks=2, combine="concat")
    async def async_square(xs):
        return [x * x for x in xs]
"""


@pytest.fixture
def functions(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester with the module ``cbfuncs`` of decorated functions."""
    pytester.makepyfile(cbfuncs=FUNCTIONS)
    return pytester


def test_calls_are_checked_timed_and_reported(functions: pytest.Pytester) -> None:
    functions.makepyfile(
        """
        import cbfuncs

        def test_square():
            assert cbfuncs.square([1, 2, 3, 4]) == [1, 4, 9, 16]
            # the test sees the call as written only: 2 chunks
            assert len(cbfuncs.CHUNK_CALLS) == 2

        def test_seeded():
            assert isinstance(cbfuncs.noisy_sum(list(range(40))), float)
            # after test_square's body: warmup 1 + rounds 3 of the parallel path and .sequential, 2 chunks each
            assert len(cbfuncs.CHUNK_CALLS) == (1 + (1 + 3) * 2) * 2
        """
    )
    result = functions.runpytest("--conc-bench", "--conc-bench-rounds=3", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*- conc-bench -*",
            "conc-bench: * usable CPUs, rounds=3, warmup=1, rtol=0, atol=0*",
            "name",
            "*backend*wrk*chk*seq*par*speedup*eff*±seq*±par*n*parity",
            "test_square::square",
            "  thread*2*2*s*s*x*%*%*%*3*ok",
            "test_seeded::noisy_sum",
            "  thread*2*2*s*s*x*%*%*%*3*ok",
            "Legend:",
            "*eff: speedup / ideal, ideal =*",
        ]
    )


def test_without_the_flag_nothing_is_intercepted(functions: pytest.Pytester) -> None:
    functions.makepyfile(
        """
        import cbfuncs

        def test_square():
            assert cbfuncs.square([1, 2, 3, 4]) == [1, 4, 9, 16]
            assert len(cbfuncs.CHUNK_CALLS) == 2

        def test_not_reproducible_passes_unchecked():
            cbfuncs.not_reproducible([1, 2, 3])
        """
    )
    result = functions.runpytest()
    result.assert_outcomes(passed=2)
    result.stdout.no_fnmatch_line("*conc-bench*")


def test_ini_option_turns_it_on(functions: pytest.Pytester) -> None:
    functions.makeini("[pytest]\nconc_bench = true\nconc_bench_rounds = 2\n")
    functions.makepyfile("import cbfuncs\n\ndef test_square():\n    cbfuncs.square([1, 2, 3])\n")
    result = functions.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*rounds=2*", "test_square::square", "*2*ok"])


def test_a_non_reproducible_function_fails_its_test(functions: pytest.Pytester) -> None:
    functions.makepyfile(
        """
        import cbfuncs

        def test_unstable():
            cbfuncs.not_reproducible([1, 2, 3])

        def test_stable():
            cbfuncs.square([1, 2, 3])
        """
    )
    result = functions.runpytest("--conc-bench", "--conc-bench-rounds=2")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*ParityError: conc-bench: not_reproducible() [[]backend=thread, workers=2, chunks=2, seed=*]: "
            "parallel result differs from .sequential()*",
            "*result[[]0[]]: actual *, expected *",
            "test_unstable::not_reproducible",
            "*thread*FAIL*",
            "FAILED test_*.py::test_unstable - *",
        ]
    )


def test_parity_failures_are_red(functions: pytest.Pytester) -> None:
    functions.makepyfile("import cbfuncs\n\ndef test_unstable():\n    cbfuncs.not_reproducible([1, 2])\n")
    result = functions.runpytest("--conc-bench", "--conc-bench-rounds=1", "--color=yes")
    result.assert_outcomes(failed=1)
    index = next(i for i, line in enumerate(result.outlines) if "test_unstable::not_reproducible" in line)
    row = result.outlines[index + 1]
    assert "\x1b[31m" in row
    assert "FAIL" in row


def test_tolerances_come_from_options_and_marker(functions: pytest.Pytester) -> None:
    functions.makepyfile(
        """
        import pytest
        import cbfuncs

        def test_plain():
            cbfuncs.off_in_threads([1.0, 2.0])

        @pytest.mark.conc_bench(atol=1e-6)
        def test_marked():
            cbfuncs.off_in_threads([1.0, 2.0])
        """
    )
    strict = functions.runpytest("--conc-bench", "--conc-bench-rounds=1")
    strict.assert_outcomes(passed=1, failed=1)
    strict.stdout.fnmatch_lines(["E *ParityError: conc-bench: off_in_threads() *", "FAILED *::test_plain - *"])
    loose = functions.runpytest("--conc-bench", "--conc-bench-rounds=1", "--conc-bench-rtol=1e-6")
    loose.assert_outcomes(passed=2)
    # the largest difference is shown even when within the tolerance
    loose.stdout.fnmatch_lines(["test_plain::off_in_threads", "*ok (1.0e-09)*"])


def test_user_errors_reach_the_test_unchanged(functions: pytest.Pytester) -> None:
    functions.makepyfile(
        """
        import pytest
        import cbfuncs

        def test_raises():
            with pytest.raises(ValueError, match="negative input"):
                cbfuncs.rejects_negatives([1, -1])
        """
    )
    functions.runpytest("--conc-bench").assert_outcomes(passed=1)


def test_calls_inside_workers_are_not_intercepted(functions: pytest.Pytester) -> None:
    functions.makepyfile(
        """
        import cbfuncs

        def test_nested():
            assert cbfuncs.outer([1, 2]) == [1, 5]
        """
    )
    result = functions.runpytest("--conc-bench", "--conc-bench-rounds=1")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["test_nested::outer", "*ok"])
    result.stdout.no_fnmatch_line("*::square*")


def test_async_functions_are_benchmarked_in_the_callers_loop(functions: pytest.Pytester) -> None:
    functions.makepyfile(
        """
        import anyio
        import cbfuncs

        def test_async():
            assert anyio.run(cbfuncs.async_square, [1, 2, 3]) == [1, 4, 9]

        def test_async_fixture(conc_bench):
            assert anyio.run(lambda: conc_bench(cbfuncs.async_square, [1, 2], name="explicit")) == [1, 4]
        """
    )
    result = functions.runpytest("--conc-bench", "--conc-bench-rounds=2")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["test_async::async_square", "  async*2*2*ok", "test_async_fixture::explicit", "  async*2*2*ok"]
    )


def test_iterator_inputs_are_replayed(functions: pytest.Pytester) -> None:
    functions.makepyfile(
        """
        import cbfuncs

        def test_generator():
            assert cbfuncs.square(x for x in range(5)) == [0, 1, 4, 9, 16]
        """
    )
    result = functions.runpytest("--conc-bench", "--conc-bench-rounds=2")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["test_generator::square", "*ok"])


def test_an_iterator_passed_whole_is_run_once_unchecked(functions: pytest.Pytester) -> None:
    functions.makepyfile(
        """
        import cbfuncs

        def test_stream():
            assert cbfuncs.with_stream([1, 2, 3], iter([])) == [1, 2, 3]
        """
    )
    result = functions.runpytest("--conc-bench")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["test_stream::with_stream", "  thread*2*2*-*-*skip"])


def test_fixture_checks_parity_without_the_flag(functions: pytest.Pytester) -> None:
    functions.makepyfile(
        """
        import cbfuncs

        def test_stable(conc_bench):
            assert conc_bench(cbfuncs.square, [1, 2, 3]) == [1, 4, 9]
            # one untimed round: the parallel path and .sequential, 2 chunks each
            assert len(cbfuncs.CHUNK_CALLS) == 4

        def test_unstable(conc_bench):
            conc_bench(cbfuncs.not_reproducible, [1, 2, 3])

        def test_not_parallel(conc_bench):
            conc_bench(sorted, [3, 1, 2])
        """
    )
    result = functions.runpytest()
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "E *ParityError: conc-bench: not_reproducible() *",
            "E *TypeError: conc_bench() takes a function decorated with @conc_ml.parallel, not *",
        ]
    )
    result.stdout.no_fnmatch_line("*- conc-bench -*")


def test_fixture_names_rows_and_is_callable_several_times(functions: pytest.Pytester) -> None:
    functions.makepyfile(
        """
        import cbfuncs

        def test_twice(conc_bench):
            assert conc_bench(cbfuncs.square, [1, 2], name="small") == [1, 4]
            assert conc_bench(cbfuncs.square, list(range(6)), name="small") == [x * x for x in range(6)]
            conc_bench(cbfuncs.square, [5])
        """
    )
    result = functions.runpytest("--conc-bench", "--conc-bench-rounds=1", "--conc-bench-json=out.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["test_twice::small", "*", "test_twice::small#2", "*", "test_twice::square", "*1*1*"])
    names = [row["fullname"] for row in json.loads((functions.path / "out.json").read_text())["benchmarks"]]
    assert names == [
        "test_fixture_names_rows_and_is_callable_several_times.py::test_twice::small",
        "test_fixture_names_rows_and_is_callable_several_times.py::test_twice::small#2",
        "test_fixture_names_rows_and_is_callable_several_times.py::test_twice::square",
    ]


def test_marker_sets_rounds(functions: pytest.Pytester) -> None:
    functions.makepyfile(
        """
        import pytest
        import cbfuncs

        @pytest.mark.conc_bench(rounds=2)
        def test_marked():
            cbfuncs.square([1, 2, 3])
        """
    )
    result = functions.runpytest("--conc-bench", "--conc-bench-rounds=4")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["test_marked::square", "*2  *ok"])


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        (
            "rounds=2, roundz=3",
            "*unknown keyword(s) 'roundz'; allowed: atol, backends, exclude, min_speedup, rounds, rtol, warmup, "
            "workers",
        ),
        ("3", "*takes keywords only*"),
        ("rounds=0", "*rounds= must be an integer >= 1, got 0"),
        ("rtol=-1", "*rtol= must be a number >= 0, got -1"),
        ("backends=['prcess']", "*unknown backend 'prcess'*"),
        ("workers=[2, 2]", "*lists a worker count twice*"),
    ],
)
def test_bad_marker_is_an_error_naming_the_problem(functions: pytest.Pytester, marker: str, message: str) -> None:
    functions.makepyfile(
        f"""
        import pytest
        import cbfuncs

        @pytest.mark.conc_bench({marker})
        def test_marked():
            cbfuncs.square([1, 2, 3])
        """
    )
    # the marker is checked with and without --conc-bench
    for args in ((), ("--conc-bench",)):
        result = functions.runpytest(*args)
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines([message])


def test_min_speedup_gate(functions: pytest.Pytester) -> None:
    functions.makepyfile(
        """
        import pytest
        import cbfuncs

        def test_option():
            cbfuncs.square([1, 2, 3])

        @pytest.mark.conc_bench(min_speedup=0)
        def test_marker_lowers_the_bar():
            cbfuncs.square([1, 2, 3])
        """
    )
    failing = functions.runpytest("--conc-bench", "--conc-bench-rounds=1", "--conc-bench-min-speedup=1000000")
    failing.assert_outcomes(passed=1, failed=1)
    failing.stdout.fnmatch_lines(
        [
            "*conc-bench: median speedup below the bar (--conc-bench-min-speedup / min_speedup=):",
            "*square [[]thread, 2 workers, 2 chunks[]]: median speedup *x < required 1000000.00x",
        ]
    )
    passing = functions.runpytest("--conc-bench", "--conc-bench-rounds=1", "--conc-bench-min-speedup=0")
    passing.assert_outcomes(passed=2)


def test_min_speedup_marker_fails_a_test(functions: pytest.Pytester) -> None:
    functions.makepyfile(
        """
        import pytest
        import cbfuncs

        @pytest.mark.conc_bench(min_speedup=1e6, rounds=1)
        def test_marked(conc_bench):
            conc_bench(cbfuncs.square, [1, 2, 3])
        """
    )
    functions.runpytest("--conc-bench").assert_outcomes(failed=1)
    # untimed without --conc-bench: nothing to hold against the bar
    functions.runpytest().assert_outcomes(passed=1)


def test_backend_and_worker_sweep(functions: pytest.Pytester) -> None:
    functions.makepyfile(
        """
        import cbfuncs

        def test_sweep():
            assert cbfuncs.square([1, 2, 3, 4]) == [1, 4, 9, 16]
        """
    )
    result = functions.runpytest(
        "--conc-bench",
        "--conc-bench-rounds=1",
        "--conc-bench-warmup=0",
        "--conc-bench-backends=sequential,thread",
        "--conc-bench-workers=1,2",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*backends=sequential,thread, workers=1,2*",
            "*parity*serial",
            "test_sweep::square",
            "  sequential*1*2*ok*",
            "  sequential*2*2*ok*",
            "  thread*1*2*ok*",
            "  thread*2*2*ok*",
            "*serial: the Karp-Flatt serial fraction*",
        ]
    )


def test_hypothesis_profile_is_registered(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from hypothesis import settings

        def test_profile():
            assert settings.get_profile("conc-bench").deadline is None
        """
    )
    pytester.runpytest("--conc-bench").assert_outcomes(passed=1)
    # a fresh process: hypothesis loads the profile in its pytest_configure
    pytester.runpytest_subprocess("--hypothesis-profile=conc-bench", "-p", "no:cacheprovider").assert_outcomes(passed=1)
