"""``fedsim run``: one federation (or every arm of a comparison preset) in this process.

Outputs per run, in ``out``: ``metrics.jsonl`` (one object per round, flushed as it is written),
``summary.json``, ``curves.png``, ``timing.jsonl`` (wall-clock time of each round's end and the
strategy's ``time/*`` metrics, e.g. the server compute of staleness repair, kept apart so that
``metrics.jsonl`` stays byte-identical across runtimes) and ``checkpoint.pt`` (written atomically every
``checkpoint_every`` rounds and at the end; ``resume=True`` continues from it and gives the same
result as an uninterrupted run). A comparison writes each arm to ``out/<arm>/`` plus
``comparison.md``, ``comparison.json`` and one figure with all arms.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord

from ..config import ConfigError, ExperimentConfig, arm_configs
from ..core.params import ParamSpec
from ..local.adversary import TARGETED
from ..local.evaluate import client_accuracy, evaluate_classes
from ..runtime.grid import as_fedsim_grid
from ..runtime.inprocess import InProcessGrid
from ..runtime.loop import RoundResult, run_rounds
from .delay import DelayGrid
from .oracle import OracleGrid
from .progress import Progress
from .report import aggregate_seeds, budget_table, comparison_table, mean_rows, plot_curves, read_rows, seed_table
from .setup import delayed_clients, load_client_data, make_adversary, make_handler, make_model, make_strategy

log = logging.getLogger("fedsim")

CHECKPOINT_VERSION = 3  # 3: checksummed file, loaded as data only; 2: stage state in the strategy, arrival queue in the grid
MAGIC = b"FEDSIM-CHECKPOINT-3\n"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the run directory is left untouched."""


class NoValidAnswers(RuntimeError):
    """Answers arrived in a round and every one was rejected: the federation does not speak the
    protocol (or every client misbehaves), so the run stops instead of going on with an unchanged model."""


def run_id(cfg: ExperimentConfig) -> str:
    """``<name>-<12 hex digits of the SHA-256 of the config>``: a changed experiment gets another id."""
    digest = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    return f"{cfg.name}-{digest}"


def check_out_dir(out: str | Path, *, resume: bool, overwrite: bool) -> None:
    """The command-line rule for ``--out``: a directory that already holds a run is continued
    (``--resume``) or replaced (``--overwrite``), never silently replaced."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    found = next(iter(sorted(Path(out).rglob("metrics.jsonl"))), None) if Path(out).is_dir() else None
    if found is not None and not resume and not overwrite:
        raise ConfigError(f"{out} already holds a run ({found}); --resume continues it, --overwrite replaces it, "
                          "or choose another --out")


def run_config(cfg: ExperimentConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
               echo=print) -> dict[str, dict]:
    """Run every arm of ``cfg``; returns ``{arm: summary}`` and prints a table when there are several.
    With ``seeds`` (two or more) every arm runs once per seed: see :func:`run_seeds`."""
    out = Path(out)
    if len(cfg.seeds) > 1:
        return run_seeds(cfg, out, resume=resume, progress=progress, echo=echo)
    arms = _arms_with_seed(cfg, cfg.seeds[0]) if cfg.seeds else arm_configs(cfg)
    if len(arms) == 1:
        (arm, arm_cfg), = arms.items()
        summary = run_single(arm_cfg, out, resume=resume, progress=progress)
        echo(comparison_table({arm: summary}))
        return {arm: summary}
    summaries = {arm: run_single(arm_cfg, out / arm, resume=_arm_resume(out / arm, resume), progress=progress,
                                 label=arm, keep_going=True) for arm, arm_cfg in arms.items()}
    table = comparison_table(summaries)
    runs = {arm: read_rows(out / arm / "metrics.jsonl") for arm in arms}
    if any("final_accuracy_stale_classes" in s for s in summaries.values()):  # slow clients: accuracy vs time
        horizon = max(s["virtual_time"] for s in summaries.values())
        table += "\n\n" + budget_table(runs, [round(horizon * q, 1) for q in (0.25, 0.5, 0.75, 1.0)])
    (out / "comparison.md").write_text(f"# {cfg.name}\n\n{cfg.description}\n\n{table}\n")
    (out / "comparison.json").write_text(json.dumps(summaries, indent=2))
    plot_curves(runs, out / "curves.png", cfg.name)
    echo(table)
    return summaries


def run_seeds(cfg: ExperimentConfig, out: Path, *, resume: bool = False, progress: bool = True,
              echo=print) -> dict[str, dict]:
    """Every arm once per seed in ``cfg.seeds`` (``OUT/<arm>/seed-<s>/``); writes ``comparison.md``
    (mean ± sample std), ``comparison.json`` (``per_seed`` and ``aggregate``) and the mean curves.
    Returns the aggregate ``{arm: {field: {mean, std, values}}}``."""
    per_seed: dict[str, dict[int, dict]] = {}
    for seed in cfg.seeds:
        for arm, arm_cfg in _arms_with_seed(cfg, seed).items():
            run_dir = out / arm / f"seed-{seed}"
            per_seed.setdefault(arm, {})[seed] = run_single(arm_cfg, run_dir, resume=_arm_resume(run_dir, resume),
                                                            progress=progress, label=f"{arm} seed {seed}",
                                                            keep_going=True)
    agg = aggregate_seeds(per_seed)
    table = seed_table(agg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(f"# {cfg.name}\n\n{cfg.description}\n\nseeds {cfg.seeds}: mean ± sample "
                                       f"std\n\n{table}\n")
    (out / "comparison.json").write_text(json.dumps({"per_seed": per_seed, "aggregate": agg}, indent=2))
    plot_curves({arm: mean_rows([read_rows(out / arm / f"seed-{s}" / "metrics.jsonl") for s in cfg.seeds])
                 for arm in per_seed}, out / "curves.png", f"{cfg.name} (mean of {len(cfg.seeds)} seeds)")
    echo(table)
    return agg


def _arm_resume(run_dir: Path, resume: bool) -> bool:
    """Resuming a comparison: an arm with a checkpoint continues; one that never reached its first
    checkpoint starts over, its partial rows moved to ``metrics.jsonl.partial`` (nothing is deleted)."""
    if not resume or (run_dir / "checkpoint.pt").exists():
        return resume
    rows = run_dir / "metrics.jsonl"
    if rows.exists():
        rows.replace(run_dir / "metrics.jsonl.partial")
        log.warning("%s: no checkpoint to resume from; starting this arm over (its partial rows are in "
                    "metrics.jsonl.partial)", run_dir)
    return False


def _arms_with_seed(cfg: ExperimentConfig, seed: int) -> dict[str, ExperimentConfig]:
    """Every arm of ``cfg`` run with ``seed`` (each arm's config was resolved at load time, so the seed is
    set on the arms, not on the base)."""
    return {arm: dataclasses.replace(arm_cfg, seed=seed, seeds=[]) for arm, arm_cfg in arm_configs(cfg).items()}


def run_single(cfg: ExperimentConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
               label: str | None = None, grid=None, keep_going: bool = False) -> dict:
    """Run one federation and write its outputs; ``grid`` defaults to a fresh in-process grid.

    With another Flower ``Grid`` (e.g. under ``flwr run``) clients train wherever that grid puts
    them; checkpoints then hold the server's state only. A run that diverges (every answer rejected,
    or a non-finite aggregate) raises, unless ``keep_going`` (the arms of a comparison): then it stops
    there and its summary says ``failed`` with the reason, so the other arms still run.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    t_start = time.monotonic()
    data = load_client_data(cfg)
    strategy = make_strategy(cfg, data)
    own_grid = grid is None  # ours to close: it may hold worker processes (client.workers)
    # experiment-only settings of the in-process grid: slow clients handed delayed models, the oracle
    delay = {"stale": delayed_clients(cfg, data), "delay": cfg.stale_model_delay} if cfg.stale_model_delay else {}
    if delay and hasattr(strategy, "keep_recent"):
        strategy.keep_recent = cfg.stale_model_delay  # the models the delayed answers were computed on
    if grid is None and cfg.staleness_oracle:
        grid = OracleGrid(make_handler(cfg, data), cfg.data.num_clients, seed=cfg.seed, current=strategy.global_arrays,
                          **delay)
    elif grid is None and delay:
        grid = DelayGrid(make_handler(cfg, data), cfg.data.num_clients, seed=cfg.seed, **delay)
    elif grid is None:
        grid = InProcessGrid(make_handler(cfg, data), cfg.data.num_clients, seed=cfg.seed)
    elif cfg.staleness_oracle or delay:
        key = "staleness_oracle" if cfg.staleness_oracle else "stale_model_delay"
        raise ConfigError(f"config key '{key}' needs fedsim's in-process runtime (fedsim run)")
    grid = as_fedsim_grid(grid)
    eval_model = make_model(cfg, data.dataset)
    spec = ParamSpec.of(eval_model)
    arrays = ArrayRecord(torch_state_dict=eval_model.state_dict())
    limit = cfg.data.eval_samples or None
    try:
        strategy.bind(arrays)
    except ValueError as exc:  # e.g. compression.k larger than the model
        raise ConfigError(str(exc)) from None

    metrics_path, ckpt_path, timing_path = out / "metrics.jsonl", out / "checkpoint.pt", out / "timing.jsonl"
    first = 1
    if resume and ckpt_path.exists():
        first, arrays = _restore(ckpt_path, cfg, strategy, grid, metrics_path)
        if isinstance(grid, DelayGrid):
            grid.round = first - 1
    elif resume and metrics_path.exists():  # rows without a checkpoint: starting over would delete them
        raise CheckpointError(f"--resume: {out} has metrics.jsonl but no checkpoint.pt to continue from; "
                              "run without --resume to start over (the rows are then replaced) or use another --out")
    elif metrics_path.exists():
        metrics_path.unlink()
    if not resume and timing_path.exists():
        timing_path.unlink()
    bar = Progress(cfg.rounds, label or cfg.name, enabled=progress)
    slow_classes = cfg.participation.get("slow_classes")  # the slow clients' classes: tracked apart
    adversary = make_adversary(cfg, data)  # the experiment knows who attacks; the strategy does not

    with metrics_path.open("a") as sink, timing_path.open("a") as timing:
        def on_round(res: RoundResult, new_arrays: ArrayRecord) -> bool:
            last = res.round == cfg.rounds or 0 < cfg.max_virtual_time <= res.virtual_time
            row = {"round": res.round, "accuracy": None, "loss": None, "virtual_time": res.virtual_time,
                   "participants": res.participants, "bytes_up": res.bytes_up, "bytes_down": res.bytes_down}
            if res.round % cfg.eval_every == 0 or last:
                ev = evaluate_classes(eval_model, spec, strategy.params, data.dataset.test, limit=limit,
                                      classes=slow_classes)
                row.update(loss=ev["loss"], accuracy=ev["accuracy"])
                if cfg.eval_clients:
                    row.update(client_accuracy(eval_model, spec, strategy.params, data.dataset.train, data.parts))
                if slow_classes is not None:
                    row["accuracy_stale_classes"] = ev["accuracy_classes"]
                if adversary is not None and adversary.behaviour in TARGETED:
                    row["attack_success"] = adversary.attack_success(eval_model, spec, strategy.params,
                                                                     data.dataset.test, limit=limit)
            clocks = {k: v for k, v in res.metrics.items() if k.startswith("time/")}  # wall clock: timing.jsonl
            row.update({k: v for k, v in res.metrics.items() if k not in clocks})
            row.update(strategy.row_fields(res.metrics))
            if isinstance(grid, OracleGrid):
                row["oracle/replaced"] = grid.replaced
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            timing.write(json.dumps({"round": res.round, "wall_time": time.time(),
                                     "elapsed": round(time.monotonic() - t_start, 6), **clocks}) + "\n")
            timing.flush()
            bar.update(res.round, row["accuracy"], first)
            rejections = getattr(strategy, "rejections", [])
            if rejections and not res.participants:
                raise NoValidAnswers(f"round {res.round}: all {len(rejections)} answers were rejected, the first "
                                     f"because {rejections[0]} (metrics up to this round are in {metrics_path})")
            if last or (cfg.checkpoint_every and res.round % cfg.checkpoint_every == 0):
                _save(ckpt_path, cfg, res.round, strategy, grid, finished=last)
                _durable(strategy)
            elif not cfg.checkpoint_every:  # no checkpoint until the end: nothing to go back to
                _durable(strategy)
            return last

        failed = None
        try:
            run_rounds(strategy, grid, arrays, first_round=first, last_round=cfg.rounds, on_round=on_round)
        except (NoValidAnswers, FloatingPointError) as exc:
            if not keep_going:
                raise
            failed = str(exc)
            log.warning("%s stopped: %s", label or cfg.name, failed)
        finally:
            if own_grid:
                grid.close()
    bar.close()
    rows = read_rows(metrics_path)
    wall = time.monotonic() - t_start
    if first > cfg.rounds and (out / "summary.json").exists():  # only re-summarised: keep the run's own time
        wall = json.loads((out / "summary.json").read_text()).get("wall_seconds", wall)
    if failed is not None and not any(r["accuracy"] is not None for r in rows):  # stopped before an evaluation
        ev = evaluate_classes(eval_model, spec, strategy.params, data.dataset.test, limit=limit)
        rows = rows or [{"round": 0, "virtual_time": 0.0, "bytes_up": 0, "bytes_down": 0}]
        rows[-1] = {**rows[-1], "accuracy": ev["accuracy"], "loss": ev["loss"]}
    summary = _summary(cfg, rows, wall)
    if failed is not None:
        summary["failed"] = failed
    if adversary is not None:
        summary["adversary"] = {"behaviour": adversary.behaviour, "malicious_clients": len(adversary.clients)}
    summary["runtime"] = _runtime(grid)
    transport = grid.transport_stats()  # answers the transport refused (auth, foreign, oversized, late)
    if transport is not None:
        summary["transport"] = transport
    summary.update(strategy.summary_fields(summary["rounds"]))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_curves({label or cfg.strategy.name: rows}, out / "curves.png", cfg.name)
    return summary


def _summary(cfg: ExperimentConfig, rows: list[dict], wall: float) -> dict:
    evals = [r for r in rows if r["accuracy"] is not None]
    tail = [r["accuracy"] for r in evals[-5:]]
    return {"final_accuracy": evals[-1]["accuracy"], "best_accuracy": max(r["accuracy"] for r in evals),
            "tail_accuracy": sum(tail) / len(tail),
            "final_loss": evals[-1]["loss"], "rounds": rows[-1]["round"], "wall_seconds": round(wall, 3),
            "virtual_time": rows[-1]["virtual_time"], "bytes_up": sum(r["bytes_up"] for r in rows),
            "bytes_down": sum(r["bytes_down"] for r in rows), "seed": cfg.seed, "strategy": cfg.strategy.name,
            "config": cfg.to_dict(), **_stale_summary(evals), **_attack_summary(evals),
            **{k: evals[-1][k] for k in ("client_accuracy_mean", "client_accuracy_worst10") if k in evals[-1]},
            "versions": _versions(), "command": shlex.join(sys.argv)}


def _versions() -> dict:
    """The versions a result was produced with (summary.json)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("fedsim", "torch", "flwr"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # e.g. run from a source tree that is not installed
            out[pkg] = None
    return out


def _attack_summary(evals: list[dict]) -> dict:
    """The targeted attack's success rate: final and mean of the last 5 evaluations."""
    rates = [r["attack_success"] for r in evals if r.get("attack_success") is not None]
    if not rates:
        return {}
    return {"final_attack_success": rates[-1], "tail_attack_success": sum(rates[-5:]) / len(rates[-5:])}


def _stale_summary(evals: list[dict]) -> dict:
    """Accuracy on the slow clients' classes (when the participation model has ``slow_classes``)."""
    stale = [r["accuracy_stale_classes"] for r in evals if r.get("accuracy_stale_classes") is not None]
    if not stale:
        return {}
    return {"final_accuracy_stale_classes": stale[-1], "best_accuracy_stale_classes": max(stale),
            "tail_accuracy_stale_classes": sum(stale[-5:]) / len(stale[-5:])}


def write_checkpoint(path: Path, state: dict) -> None:
    """``MAGIC``, the SHA-256 of the payload (hex), a newline, then the ``torch.save`` payload; written
    to a temporary file, flushed to disk and renamed, so a crash or a full disk keeps the previous one."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        why = "no space left on device" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        raise CheckpointError(f"cannot write checkpoint {path}: {why}; the previous checkpoint and the metrics "
                              "so far are kept") from None


def read_checkpoint(path: Path) -> dict:
    """A checkpoint's state, checked against its SHA-256 and loaded as data only (``weights_only``:
    tensors and plain containers; a crafted file cannot run code)."""
    try:
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable ({exc.strerror or exc})") from None
    head = len(MAGIC) + 65
    if not blob.startswith(MAGIC) or len(blob) < head or blob[head - 1:head] != b"\n":
        raise CheckpointError(f"checkpoint {path} is unreadable (not a fedsim v{CHECKPOINT_VERSION} checkpoint); "
                              "delete it to start over")
    digest, payload = blob[len(MAGIC):head - 1].decode("ascii", "replace"), blob[head:]
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"checkpoint {path} is damaged (its checksum does not match: the file changed "
                              "after it was written); delete it to start over")
    try:
        state = torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - anything a damaged or foreign payload raises
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path} is not a fedsim v{CHECKPOINT_VERSION} checkpoint")
    return state


def _save(path: Path, cfg: ExperimentConfig, rnd: int, strategy, grid, finished: bool) -> None:
    write_checkpoint(path, {"version": CHECKPOINT_VERSION, "round": rnd, "finished": finished, "runtime": _runtime(grid),
                            "config": cfg.to_dict(), "strategy": strategy.state_dict(), "grid": grid.state_dict()})


def _durable(strategy) -> None:
    if hasattr(strategy, "checkpointed"):  # fedsim's strategies (Flower's keep no client state)
        strategy.checkpointed()


def _runtime(grid) -> str:
    return "in-process" if isinstance(grid, InProcessGrid) else type(grid).__name__


def _differing_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differing_keys(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}")
    return out


def _restore(path: Path, cfg: ExperimentConfig, strategy, grid, metrics_path: Path):
    state = read_checkpoint(path)
    if state.get("runtime", _runtime(grid)) != _runtime(grid):  # client state and queues differ between runtimes
        raise CheckpointError(f"checkpoint {path} was written by the {state['runtime']} runtime; a checkpoint resumes "
                              "on the runtime that wrote it (fedsim run, or fedsim server / launch --resume)")
    keys = _differing_keys(state["config"], cfg.to_dict())
    extended = keys == ["rounds"] and cfg.rounds > state["config"]["rounds"]
    if extended and (cfg.privacy.user_level or cfg.client.lr_schedule == "cosine"):
        raise CheckpointError(f"checkpoint {path}: rounds cannot be extended from {state['config']['rounds']} to "
                              f"{cfg.rounds} here: the {'user-level DP noise' if cfg.privacy.user_level else 'cosine lr schedule'}"
                              " was planned for the original number of rounds; use another --out")
    if keys and not extended:
        raise CheckpointError(f"checkpoint {path} was written by a different config (differs in "
                              f"{', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''}); use another --out "
                              "(only rounds may grow on --resume)")
    try:
        strategy.load_state_dict(state["strategy"])
        grid.load_state_dict(state["grid"])
    except (KeyError, ValueError, TypeError) as exc:  # e.g. a gRPC server's checkpoint resumed in-process
        raise CheckpointError(f"checkpoint {path} does not fit this run ({type(exc).__name__}: {exc}); a checkpoint "
                              "resumes on the runtime that wrote it (fedsim run, or fedsim server / launch)") from None
    rnd = int(state["round"])
    if metrics_path.exists():  # drop rows written after the checkpoint
        rows = [r for r in read_rows(metrics_path) if r["round"] <= rnd]
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # a finished run is only re-summarised, unless rounds grew past where it stopped
    done = state["finished"] and not (extended and rnd == state["config"]["rounds"])
    return (cfg.rounds + 1 if done else rnd + 1), strategy.global_arrays()
