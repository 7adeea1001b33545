"""Run outputs for other tools and for the record: CSV and TensorBoard exports, the clients'
training loss in every row, versions and command line in summary.json."""

import csv
import json

import pytest

from fedsim.cli import main
from fedsim.experiments.export import export_run
from fedsim.experiments.run import run_single
from fedsim.experiments.setup import load as load_config

from conftest import tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    run_single(load_config(tiny_config(rounds=4, eval_every=2)), out, progress=False)
    return out


def rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_rows_carry_the_clients_training_loss_and_summary_the_versions(run_dir):
    assert all(r["train_loss"] > 0 for r in rows(run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["versions"]["torch"] and summary["versions"]["flwr"].startswith("1.41") and summary["command"]


def test_csv_has_every_row_and_key(run_dir):
    path, = export_run(run_dir, ["csv"])
    table = list(csv.DictReader(path.open()))
    expected = rows(run_dir)
    assert [int(r["round"]) for r in table] == [r["round"] for r in expected]
    assert table[0]["accuracy"] == "" and float(table[1]["accuracy"]) == expected[1]["accuracy"]
    assert set(table[0]) == {k for r in expected for k in r}


def test_tensorboard_scalars_match_the_rows(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path, = export_run(run_dir, ["tensorboard"])
    events = EventAccumulator(str(path))
    events.Reload()
    acc = [(e.step, e.value) for e in events.Scalars("accuracy")]
    assert acc == [(r["round"], pytest.approx(r["accuracy"])) for r in rows(run_dir) if r["accuracy"] is not None]
    assert len(events.Scalars("train_loss")) == 4


def test_export_flag(tmp_path, capsys):
    assert main(["run", "digits-smoke", "--set", "rounds=2", "--out", str(tmp_path), "--quiet", "--export", "csv"]) == 0
    assert (tmp_path / "metrics.csv").read_text().startswith("round,")  # one arm: the run directory itself
    with pytest.raises(SystemExit):
        main(["run", "digits-smoke", "--export", "parquet"])
    assert "--export" in capsys.readouterr().err


def test_per_client_evaluation(tmp_path):
    import torch

    from fedsim.experiments.setup import load_client_data, make_model
    from fedsim.local.evaluate import client_accuracy
    from fedsim.core.params import ParamSpec

    cfg = load_config(tiny_config(rounds=2, eval_every=1, eval_clients=True))
    summary = run_single(cfg, tmp_path, progress=False)
    row = rows(tmp_path)[-1]
    assert 0 <= row["client_accuracy_worst10"] <= row["client_accuracy_mean"] <= 1
    assert summary["client_accuracy_mean"] == row["client_accuracy_mean"]
    # by hand, on the initial model: accuracy on each client's rows, the worst one (8 clients: 10% = 1)
    data = load_client_data(cfg)
    model = make_model(cfg, data.dataset)
    spec = ParamSpec.of(model)
    out = client_accuracy(model, spec, spec.flatten(model.state_dict()), data.dataset.train, data.parts)
    model.eval()
    accs = []
    with torch.no_grad():
        for p in data.parts:
            x, y = data.dataset.train.take(torch.as_tensor(p, dtype=torch.int64))
            accs.append(float((model(x).argmax(1) == y).double().mean()))
    assert out["client_accuracy_mean"] == pytest.approx(sum(accs) / len(accs))
    assert out["client_accuracy_worst10"] == pytest.approx(min(accs))
