"""``fedsim bench sim``: one simulation workload through four arms, interleaved in one run.

    fedsim bench sim [--clients-per-round 10,50] [--population 100] [--rounds 5] [--repeats 1] [--json]
    fedsim bench sim --device cuda [--cohorts 10,100,1000]          (vectorized vs sequential trainer)
    fedsim bench sim --device cpu --trainer-compare --cohorts 2,4   (the same, on CPU: a correctness check)

Workload: LeNet (``conv5(16)-pool-conv5(32)-pool-fc160-fc``, a small CNN) on Fashion-MNIST split IID into ``population`` clients (600 samples each for
100 clients), K clients a round, each ``ceil(600 / 32) = 19`` plain SGD steps of batch 32 (one local
epoch), FedAvg. The arms, for each K in turn (the order reversed on odd repeats):

1. ``floor`` -- a plain sequential torch loop in one process (``fedsim.bench.floor``): the compute floor;
2. ``pool`` -- the same loop in a ``multiprocessing`` pool, one process per core, the global model
   sent to every worker each round;
3. ``fedsim`` -- ``fedsim run`` of the generated config (``client.workers`` = cores where the config has
   that key);
4. ``flower`` -- ``flwr run`` of this project's Flower app on Flower's simulation runtime (Ray) with
   ``num-supernodes = population`` and ``client-resources-num-cpus = 1``. If it fails, the reason is
   reported and the other arms still run (``--skip-flower`` leaves it out).

Every arm is a fresh process tree, so "time to first round" (start of its first process to the end of
round 1) includes interpreter start, imports and data loading; "steady round" is the median of the
later rounds; "end to end" runs to the exit of the arm's process (for Flower, of ``flwr run --stream``).
Peak memory is the peak of the summed PSS (or RSS where PSS is unreadable) over the arm's process tree
(see ``memory.py``), sampled every 0.2-1 s. Every process runs in its own session and is stopped by
PID / process group on exit, error or Ctrl-C (``processes.py``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

from .memory import PeakMemory
from . import fedsim_cmd, int_list, set_args
from .processes import BenchError, Processes, free_port
from .runtime import round_timings

ARMS = ("floor", "pool", "fedsim", "flower")
WORKLOAD = """\
name = "bench-sim-k{k}"
description = "fedsim bench sim: FedAvg, LeNet on Fashion-MNIST, {k} of {population} clients a round"
rounds = {rounds}
seed = {seed}
eval_every = {rounds}
checkpoint_every = 0
threads = 1

[data]
name = "fashion-mnist"
partition = "iid"
num_clients = {population}
eval_samples = 500
dir = {data_dir}

[model]
name = "lenet"

[client]
lr = {lr}
batch_size = {batch_size}
local_steps = {local_steps}

[strategy]
name = "fedavg"

[participation]
name = "uniform"
clients_per_round = {k}
"""
TARGETS = {"fedsim_first_round_s": ("<", 3.0), "fedsim_steady_vs_pool": ("<=", 1.1),
           "flower_vs_fedsim_end_to_end": (">=", 1.5), "memory_fedsim_vs_flower": ("<", 0.5)}


def add_parser(bsub) -> None:
    r = bsub.add_parser("sim", help="fedsim run vs a torch loop, a process pool and Flower's simulation runtime")
    r.add_argument("--clients-per-round", default="10,50", help="comma-separated cohort sizes K (default 10,50)")
    r.add_argument("--population", type=int, default=100, help="clients N (default 100: 600 samples each)")
    r.add_argument("--rounds", type=int, default=5, help="rounds per arm (>= 2; default 5)")
    r.add_argument("--repeats", type=int, default=1, help="run every arm this many times, alternating the order")
    r.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: compare the vectorized and the sequential trainer on the GPU")
    r.add_argument("--trainer-compare", action="store_true", help="the trainer comparison, also on --device cpu")
    r.add_argument("--cohorts", default="10,100,1000", help="K values of the trainer comparison")
    r.add_argument("--workers", type=int, default=0, help="fedsim client.workers (default: one per core)")
    r.add_argument("--processes", type=int, default=0, help="size of the plain pool (default: one per core)")
    r.add_argument("--samples-per-client", type=int, default=600, help="local steps = ceil(this / batch size)")
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--lr", type=float, default=0.05)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--data-dir", default="", help="Fashion-MNIST idx directory (default: fedsim's)")
    r.add_argument("--arms", default=",".join(ARMS), help=f"arms to run (default {','.join(ARMS)})")
    r.add_argument("--skip-flower", action="store_true", help="leave out Flower's simulation runtime")
    r.add_argument("--app", help="directory of the Flower app for `flwr run` (default: the fedsim source tree)")
    r.add_argument("--out", default=os.path.join("runs", "bench-sim"), help="work and output directory")
    r.add_argument("--timeout", type=float, default=900.0, help="wall seconds allowed per fedsim/floor/pool run")
    r.add_argument("--flower-timeout", type=float, default=1200.0, help="wall seconds allowed per Flower run")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(func=_cli)


def _cli(args) -> int:
    from ..config import ConfigError

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.device == "cuda" or args.trainer_compare:
        from .cohort import compare_trainers, format_trainers

        result = compare_trainers(device=args.device, cohorts=int_list(args.cohorts, "--cohorts"),
                                  samples_per_client=args.samples_per_client, batch_size=args.batch_size,
                                  lr=args.lr, seed=args.seed, data_dir=args.data_dir, log=log)
        print(json.dumps(result, indent=2) if args.json else format_trainers(result))
        return 0
    if args.rounds < 2:
        raise ConfigError("--rounds must be >= 2 (the steady round is the median of rounds after the first)")
    cohorts = int_list(args.clients_per_round, "--clients-per-round")
    if max(cohorts) > args.population:
        raise ConfigError(f"--clients-per-round {max(cohorts)} exceeds --population {args.population}")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or set(arms) - set(ARMS):
        raise ConfigError(f"--arms must name some of {', '.join(ARMS)}, got '{args.arms}'")
    result = bench_sim(cohorts=cohorts, arms=arms, population=args.population, rounds=args.rounds, repeats=args.repeats,
                       workers=args.workers, processes=args.processes, samples_per_client=args.samples_per_client,
                       batch_size=args.batch_size, lr=args.lr, seed=args.seed, data_dir=args.data_dir,
                       skip_flower=args.skip_flower, app=args.app, out=args.out, timeout=args.timeout,
                       flower_timeout=args.flower_timeout, log=log)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    fedsim_ok = all(result["results"][k][a]["ok"] for k in result["results"] for a in arms if a != "flower")
    return 0 if fedsim_ok else 1


def bench_sim(*, cohorts: list[int], arms=ARMS, population: int = 100, rounds: int = 5, repeats: int = 1,
              workers: int = 0, processes: int = 0, samples_per_client: int = 600, batch_size: int = 32, lr: float = 0.05,
              seed: int = 0, data_dir: str = "", skip_flower: bool = False, app: str | None = None,
              out: str | Path = "runs/bench-sim", timeout: float = 900.0, flower_timeout: float = 1200.0,
              log=print) -> dict:
    from ..config import ClientConfig
    from ..experiments.setup import load as load_config

    cores = os.cpu_count() or 1
    workers, processes = workers or cores, processes or cores
    local_steps = math.ceil(samples_per_client / batch_size)
    out = Path(out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    has_workers = "workers" in {f.name for f in dataclasses.fields(ClientConfig)}
    fedsim_sets = [f"client.workers={workers}"] if has_workers else []
    configs = {}
    for k in cohorts:
        configs[k] = out / f"k{k}" / "workload.toml"
        configs[k].parent.mkdir(parents=True)
        configs[k].write_text(WORKLOAD.format(k=k, population=population, rounds=rounds, seed=seed, lr=lr,
                                              batch_size=batch_size, local_steps=local_steps,
                                              data_dir=json.dumps(os.path.abspath(data_dir) if data_dir else "")))
        load_config(str(configs[k]), fedsim_sets)  # a bad workload fails here, before anything starts
    common = dict(population=population, rounds=rounds, local_steps=local_steps, batch_size=batch_size, lr=lr,
                  seed=seed, data_dir=data_dir)
    runners = {
        "floor": lambda k, d: _run_floor("floor", k, d, timeout, processes, **common),
        "pool": lambda k, d: _run_floor("pool", k, d, timeout, processes, **common),
        "fedsim": lambda k, d: _run_fedsim(configs[k], fedsim_sets, d, timeout, local_steps),
        "flower": lambda k, d: _run_flower(configs[k], population, app, d, flower_timeout, local_steps),
    }
    arms = [a for a in ARMS if a in arms and not (skip_flower and a == "flower")]
    load_before = os.getloadavg()
    runs: dict[int, dict[str, list]] = {k: {a: [] for a in arms} for k in cohorts}
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main else None  # unwinds like Ctrl-C: children stop
    try:
        for rep in range(repeats):
            for k in cohorts:
                for arm in (arms if rep % 2 == 0 else arms[::-1]):
                    runs[k][arm].append(_one(arm, k, rep, runners[arm], out / f"k{k}" / f"{arm}-{rep}", log))
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    workload = {"model": "lenet", "dataset": "fashion-mnist", "partition": "iid", "population": population,
                "clients_per_round": cohorts, "rounds": rounds, "samples_per_client": samples_per_client,
                "batch_size": batch_size, "local_steps": local_steps, "lr": lr, "strategy": "fedavg",
                "repeats": repeats, "pool_processes": processes,
                "fedsim_workers": workers if has_workers else None, "fedsim_sets": fedsim_sets,
                "flower": None if skip_flower else f"flwr run, simulation runtime (Ray), num-supernodes={population}, "
                                                   "client-resources-num-cpus=1"}
    results = {str(k): _summarize(runs[k], skip_flower) for k in cohorts}
    result = {"workload": workload,
              "machine": {"cpus": cores, "load_avg_before": [round(v, 2) for v in load_before],
                          "load_avg_after": [round(v, 2) for v in os.getloadavg()]},
              "memory_metric": _memory_metric(results), "results": results,
              "targets": {k: _targets(r) for k, r in results.items()}}
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    return result


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def _one(arm: str, k: int, rep: int, runner, out: Path, log) -> dict:
    log(f"bench sim: K={k} {arm} (repeat {rep + 1}) ...")
    try:
        r = {"ok": True, **runner(k, out), "error": None}
        log(f"bench sim: K={k} {arm}: first round {r['first_round_s']:.2f} s, steady round {r['steady_round_s']:.3f} s, "
            f"end to end {r['total_s']:.1f} s, peak {r['memory']['metric'].upper()} {r['memory']['peak_mib']:.0f} MiB")
    except BenchError as exc:
        r = {"ok": False, "error": str(exc)}
        log(f"bench sim: K={k} {arm} failed: {exc}")
    return r


# --- the arms -------------------------------------------------------------------------------------

def _measured(procs: Processes, name: str, cmd: list[str], out: Path, timeout: float, cwd=None) -> dict:
    """Start ``cmd``, wait for it, sample the memory of everything it started; timings from out/timing.jsonl."""
    with PeakMemory(procs.pids) as mem:
        t0 = time.time()
        p = procs.start(name, cmd, cwd=cwd)
        procs.wait(p, timeout)
        t_end = time.time()
    timings = round_timings(out, t0, t_end)
    walls = [json.loads(line)["wall_time"] for line in (out / "timing.jsonl").read_text().splitlines() if line.strip()]
    first, last = mem.cpu_at(walls[0]), mem.cpu_at(walls[-1])
    cpu = {"cpu_s": mem.result()["cpu_s"], "first_round_cpu_s": None if first is None else round(first, 2),
           "steady_round_cpu_s": None if first is None or last is None else round((last - first) / (len(walls) - 1), 3)}
    return {**timings, **cpu, "memory": mem.result()}


def _run_floor(mode: str, k: int, out: Path, timeout: float, processes: int, *, population, rounds, local_steps,
               batch_size, lr, seed, data_dir) -> dict:
    cmd = [sys.executable, "-m", "fedsim.bench.floor", mode, "--population", str(population),
           "--clients-per-round", str(k), "--rounds", str(rounds), "--local-steps", str(local_steps),
           "--batch-size", str(batch_size), "--lr", str(lr), "--seed", str(seed), "--processes", str(processes),
           "--out", str(out)] + (["--data-dir", data_dir] if data_dir else [])
    with Processes(out) as procs:
        r = _measured(procs, mode, cmd, out, timeout)
    info = json.loads((out / "floor.json").read_text())
    return {**r, "steps": info["steps"], "processes": info["processes"], "final_abs_sum": info["final_abs_sum"]}


def _run_fedsim(config: Path, sets: list[str], out: Path, timeout: float, local_steps: int) -> dict:
    cmd = fedsim_cmd("run", str(config), *set_args(sets), "--out", str(out), "--quiet",
                     "--overwrite")  # the benchmark owns its run directories
    with Processes(out) as procs:
        r = _measured(procs, "fedsim-run", cmd, out, timeout)
    return {**r, "steps": _steps(out, local_steps)}


def _run_flower(config: Path, population: int, app: str | None, out: Path, timeout: float, local_steps: int) -> dict:
    import importlib.util

    if shutil.which("flwr") is None:
        raise BenchError("`flwr` is not installed (pip install 'flwr[simulation]')")
    if importlib.util.find_spec("ray") is None:
        raise BenchError("Flower's simulation runtime needs Ray: pip install 'flwr[simulation]'")
    app_dir = Path(app) if app else Path(__file__).resolve().parents[2]
    pyproject = app_dir / "pyproject.toml"
    if not pyproject.exists() or "[tool.flwr.app]" not in pyproject.read_text():
        raise BenchError(f"{app_dir} has no pyproject.toml with [tool.flwr.app] (pass --app)")
    out.mkdir(parents=True, exist_ok=True)
    env = {"FLWR_HOME": str(out / "flwr-home"), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
           "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
    cmd = ["flwr", "run", str(app_dir), "local", "--stream",
           "--run-config", f"preset={json.dumps(str(config))} out={json.dumps(str(out))}",
           "--federation-config", f"num-supernodes={population} client-resources-num-cpus=1"]
    with Processes(out, env) as procs:
        try:
            r = _measured(procs, "flwr-run", cmd, out, timeout, cwd=app_dir)
            if not (out / "summary.json").exists():
                raise BenchError("`flwr run` exited but the ServerApp wrote no summary.json")
        except BenchError as exc:  # `flwr run --stream` shows the run's log, tracebacks included
            if "flwr-run" in str(exc):
                raise
            raise BenchError(f"{exc}; " + procs.tail("flwr-run", 12)) from None
    return {**r, "steps": _steps(out, local_steps)}


def _steps(out: Path, local_steps: int) -> int:
    """Local steps trained: participants per round (metrics.jsonl) times the local steps of each."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return sum(int(r["participants"]) for r in rows) * local_steps


# --- summary --------------------------------------------------------------------------------------

def _median_run(runs: list[dict]) -> dict:
    ok = [r for r in runs if r["ok"]]
    if not ok:
        return {"ok": False, "error": runs[0]["error"] if runs else "not run", "runs": runs}
    if len(ok) == 1:
        return {**ok[0], "runs": len(runs)}  # "runs": how many times the arm ran (failures included)
    med = lambda key: round(statistics.median(r[key] for r in ok), 4)  # noqa: E731
    mem = dict(ok[0]["memory"], peak_mib=round(statistics.median(r["memory"]["peak_mib"] for r in ok), 1))
    return {"ok": True, "error": None, "first_round_s": med("first_round_s"), "steady_round_s": med("steady_round_s"),
            "total_s": med("total_s"), "last_round_end_s": med("last_round_end_s"), "rounds": ok[0]["rounds"],
            "cpu_s": _med_or_none(ok, "cpu_s"), "first_round_cpu_s": _med_or_none(ok, "first_round_cpu_s"),
            "steady_round_cpu_s": _med_or_none(ok, "steady_round_cpu_s"),
            "steps": ok[0]["steps"], "memory": mem, "runs": len(runs), "each_run": runs}


def _med_or_none(runs: list[dict], key: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(values), 4) if values else None


def _ratio(a, b):
    return float(f"{a / b:.4g}") if a is not None and b else None  # 4 significant digits, also for small ratios


def _summarize(runs: dict[str, list], skip_flower: bool) -> dict:
    arms = {a: _median_run(runs[a]) if a in runs else {"ok": False, "error": "not run (--arms)"} for a in ARMS}
    if skip_flower:
        arms["flower"] = {"ok": False, "error": "skipped (--skip-flower)"}

    def get(arm, key):
        r = arms.get(arm, {})
        return (r["memory"]["peak_mib"] if key == "memory" else r[key]) if r.get("ok") else None

    ratios = {"steady_vs_floor": {a: _ratio(get(a, "steady_round_s"), get("floor", "steady_round_s")) for a in ARMS},
              "steady_vs_pool": {a: _ratio(get(a, "steady_round_s"), get("pool", "steady_round_s")) for a in ARMS},
              "flower_vs_fedsim": {"end_to_end": _ratio(get("flower", "total_s"), get("fedsim", "total_s")),
                                   "steady_round": _ratio(get("flower", "steady_round_s"), get("fedsim", "steady_round_s")),
                                   "first_round": _ratio(get("flower", "first_round_s"), get("fedsim", "first_round_s"))},
              "steady_cpu_vs_floor": {a: _ratio(get(a, "steady_round_cpu_s"), get("floor", "steady_round_cpu_s"))
                                      for a in ARMS},
              "memory_fedsim_vs_flower": _ratio(get("fedsim", "memory"), get("flower", "memory"))}
    return {**arms, "ratios": ratios}


def _targets(r: dict) -> dict:
    values = {"fedsim_first_round_s": r["fedsim"].get("first_round_s"),
              "fedsim_steady_vs_pool": r["ratios"]["steady_vs_pool"]["fedsim"],
              "flower_vs_fedsim_end_to_end": r["ratios"]["flower_vs_fedsim"]["end_to_end"],
              "memory_fedsim_vs_flower": r["ratios"]["memory_fedsim_vs_flower"]}
    out = {}
    for name, (op, bound) in TARGETS.items():
        v = values[name]
        met = None if v is None else {"<": v < bound, "<=": v <= bound, ">=": v >= bound}[op]
        out[name] = {"value": v, "target": f"{op} {bound}", "met": met}
    return out


def _memory_metric(results: dict) -> str:
    metrics = {arm["memory"]["metric"] for r in results.values() for arm in r.values()
               if isinstance(arm, dict) and arm.get("ok") and "memory" in arm}
    return metrics.pop() if len(metrics) == 1 else "mixed" if metrics else "none"


def format_table(result: dict) -> str:
    w, m = result["workload"], result["machine"]
    metric = result["memory_metric"].upper()
    fmt = lambda v, f=".2f": "-" if v is None else format(v, f)  # noqa: E731
    lines = [f"workload: LeNet on Fashion-MNIST, {w['population']} clients (IID), {w['local_steps']} local steps of "
             f"batch {w['batch_size']}, {w['rounds']} rounds, FedAvg; pool {w['pool_processes']} processes, fedsim "
             f"client.workers={w['fedsim_workers'] if w['fedsim_workers'] is not None else '(no such key)'}; "
             f"{m['cpus']} CPUs, load average {m['load_avg_before'][0]:.2f} before, {m['load_avg_after'][0]:.2f} after",
             "", f"| K | arm | first round (s) | steady round (s) | end to end (s) | peak {metric} (MiB) | processes "
                 f"| steady / floor | steady / pool | CPU-s first round | CPU-s / steady round |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for k, r in result["results"].items():
        for arm in ARMS:
            a = r[arm]
            if not a.get("ok"):
                lines.append(f"| {k} | {arm} | - | - | - | - | - | - | - | - | - |")
                notes.append(f"K={k} {arm}: {a['error']}")
                continue
            lines.append(f"| {k} | {arm} | {a['first_round_s']:.2f} | {a['steady_round_s']:.3f} | {a['total_s']:.1f} | "
                         f"{a['memory']['peak_mib']:.0f} | {a['memory']['peak_processes']} | "
                         f"{fmt(r['ratios']['steady_vs_floor'][arm])} | {fmt(r['ratios']['steady_vs_pool'][arm])} | "
                         f"{fmt(a.get('first_round_cpu_s'), '.1f')} | {fmt(a.get('steady_round_cpu_s'), '.2f')} |")
    lines.append("")
    for k, r in result["results"].items():
        fv = r["ratios"]["flower_vs_fedsim"]
        lines.append(f"K={k}: Flower / fedsim end to end {fmt(fv['end_to_end'])}x, steady round {fmt(fv['steady_round'])}x, "
                     f"first round {fmt(fv['first_round'])}x; memory fedsim / Flower "
                     f"{fmt(r['ratios']['memory_fedsim_vs_flower'])}")
        for name, t in result["targets"][k].items():
            verdict = "n/a" if t["met"] is None else "met" if t["met"] else "MISSED"
            lines.append(f"  target {name} {t['target']}: {fmt(t['value'], '.3g')} {verdict}")
    return "\n".join(lines + ([""] if notes else []) + notes)
