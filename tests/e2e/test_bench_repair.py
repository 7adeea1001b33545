"""`fedsim bench repair`: the curves it promises (cold, warm at each --warm-step, cold again) and its
flag errors."""

import json

import pytest

from fedsim.bench import fraction_list, int_list
from fedsim.config import ConfigError
from fedsim.data import DatasetUnavailable


@pytest.mark.slow  # ~15 CPU-s: 16 rounds of the scenario's model, 5 inversions
def test_bench_repair_records_every_curve_and_writes_its_files(tmp_path):
    from fedsim.bench.repair import bench_repair, format_tables

    try:
        result = bench_repair("mlp", steps=3, delay=2, warmup=1, batches=[2], batch_steps=2, samples=4,
                              device="cpu", out=tmp_path, log=lambda *_: None, warm_steps=[1.0, 0.1])
    except DatasetUnavailable as exc:
        pytest.skip(str(exc))
    assert list(result["curves"]) == ["cold", "next update, warm", "next update, warm, step x0.1", "next update, cold"]
    for curve in result["curves"].values():
        assert [p["step"] for p in curve["points"]] == [1, 3] and curve["direct_error"] > 0
        assert all(p["residual"] >= 0 and p["repair_error"] >= 0 for p in curve["points"])
    # both warm curves start from the same set: their first residual is the same, their steps differ after
    warm, small = result["curves"]["next update, warm"]["points"], result["curves"]["next update, warm, step x0.1"]["points"]
    assert warm[0]["residual"] == pytest.approx(small[0]["residual"], rel=1e-6)
    assert result["batched"][0]["answers"] == 2 and result["warm_steps"] == [1.0, 0.1]
    assert json.loads((tmp_path / "repair.json").read_text())["curves"].keys() == result["curves"].keys()
    assert (tmp_path / "repair.png").stat().st_size > 0 and "step x0.1" in format_tables(result)


def test_list_flags_name_the_flag_and_the_bad_value():
    assert int_list("10,100", "--cohorts") == [10, 100] and fraction_list("1,0.1", "--warm-step") == [1.0, 0.1]
    for fn, text, match in [(int_list, "10,x", "--cohorts must be comma-separated integers, got '10,x'"),
                            (int_list, "0,4", "--cohorts must be positive integers"),
                            (fraction_list, "", "--warm-step must be comma-separated numbers"),
                            (fraction_list, "1,2", r"--warm-step must be numbers in \(0, 1\]")]:
        with pytest.raises(ConfigError, match=match):
            fn(text, "--cohorts" if fn is int_list else "--warm-step")
