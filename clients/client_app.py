"""fedsim's Flower ClientApp: wiring only. Each node hosts the client named by its
``partition-id``; data and model come from the experiment in ``context.run_config`` and stay warm in
this process between messages."""

from __future__ import annotations

from functools import lru_cache

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedsim.experiments.flower_config import config_from_run_config
from fedsim.experiments.setup import load_client_data, make_handler
from fedsim.local.handler import ClientHandler

app = ClientApp()


@lru_cache(maxsize=2)
def _handler(preset: str, overrides: str) -> ClientHandler:
    cfg = config_from_run_config({"preset": preset, "set": overrides})
    return make_handler(cfg, load_client_data(cfg))


def handler_for(context: Context) -> ClientHandler:
    return _handler(str(context.run_config.get("preset", "quickstart")), str(context.run_config.get("set", "")))


@app.query()
def query(msg: Message, context: Context) -> Message:
    return handler_for(context).query(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    handler = handler_for(context)
    with handler.client_state(context):  # error-feedback vectors persist in the node's Context
        return handler.train([msg], [context])[0]


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return handler_for(context).evaluate([msg], [context])[0]
