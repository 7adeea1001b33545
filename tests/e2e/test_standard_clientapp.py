"""A standard Flower ClientApp, written as in Flower's own tutorial (trained weights back under
``arrays``, ``num-examples`` in its metrics, no QUERY handler, no partition-id in its replies),
trains with fedsim's strategies on the in-process grid."""

import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch.nn import functional as F

from fedsim.experiments.run import run_single
from fedsim.experiments.setup import load as load_config, load_client_data
from fedsim.models import build_model
from fedsim.runtime.inprocess import AppHandler, InProcessGrid

from conftest import tiny_config


def tutorial_app(data) -> ClientApp:
    """The tutorial's shape: load the global model, train on this node's partition, send it back."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        model = build_model("logreg", (10,), 4, seed=0)  # the user's Net
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        idx = torch.as_tensor(data.parts[context.node_config["partition-id"]], dtype=torch.int64)
        x, y = data.dataset.train.take(idx)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        metrics = MetricRecord({"train_loss": float(loss.detach()), "num-examples": len(idx)})
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)

    return app


@pytest.mark.parametrize("strategy", ["fedavg", "fedau"])
def test_a_tutorial_clientapp_trains_with_fedsim_strategies(tmp_path, strategy):
    cfg = load_config(tiny_config(rounds=5, eval_every=5, **{"strategy.name": strategy}))
    data = load_client_data(cfg)
    grid = InProcessGrid(AppHandler(tutorial_app(data)), 8, seed=cfg.seed)
    summary = run_single(cfg, tmp_path, progress=False, grid=grid)
    rows = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and summary["final_accuracy"] > 0.5  # 4 classes: chance is 0.25
    assert '"server/rejected": 0' in rows[-1] and '"participants": 4' in rows[-1]


def test_full_weights_for_an_asynchronous_strategy_are_refused_by_name(tmp_path):
    from fedsim.experiments.run import NoValidAnswers

    cfg = load_config(tiny_config(rounds=2, **{"strategy.name": "fedbuff", "strategy.round_time": 1.0}))
    data = load_client_data(cfg)
    grid = InProcessGrid(AppHandler(tutorial_app(data)), 8, seed=cfg.seed)
    with pytest.raises(NoValidAnswers, match="does not read full-weight answers"):
        run_single(cfg, tmp_path, progress=False, grid=grid)
