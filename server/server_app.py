"""fedsim's Flower ServerApp: wiring only. The experiment comes from ``context.run_config``
(see ``fedsim.experiments.flower_config``); the rounds run through fedsim's own loop, so the same
strategies and outputs as ``fedsim run`` come out of whatever Grid Flower (or fedsim) provides."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsim.experiments.flower_config import config_from_run_config
from fedsim.experiments.run import run_single

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = config_from_run_config(context.run_config)
    run_single(cfg, str(context.run_config.get("out") or f"runs/{cfg.name}-flower"), grid=grid, progress=False)
