"""A /dev/shm too small for the arrays (64 MB in a default container) is no crash and no hang."""

from __future__ import annotations

from typing import Any


def test_a_small_dev_shm_falls_back_to_the_temporary_folder_with_one_warning(run_scenario: Any) -> None:
    # The scenario's temporary folder is private: run_scenario fails if a file is left in it.
    result = run_scenario("small-dev-shm")
    assert result["outcomes"] == [[3.0, 7.0]] * 20 + ["die", "hang", [3.0, 7.0]]
    assert len(result["warnings"]) == 1, result["warnings"]
    assert result["warnings"][0].startswith("SharedMemoryFallbackWarning: conc-ml: /dev/shm has")
    assert result["leaked"] == {}
