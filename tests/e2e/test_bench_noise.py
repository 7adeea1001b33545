"""`fedsim bench noise`: regenerated dense-factor noise keeps no past noise and gives the same numbers."""

from fedsim.bench.noise import bench_noise, format_table


def test_regenerated_noise_keeps_no_state_and_equals_the_stored_stream():
    result = bench_noise([50, 200], steps=6, mechanism="sqrt-toeplitz")
    for r in result["runs"]:
        assert r["regenerated_state_mib"] == 0.0
        assert r["stored_state_mib"] == r["steps"] * r["dim"] * 8 / 2**20  # every past w, float64
        assert r["max_abs_diff"] < 1e-12
    assert "| 200 | 6 |" in format_table(result)
