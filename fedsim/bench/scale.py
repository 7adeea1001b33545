"""``fedsim bench scale``: how round latency, memory and traffic grow with the population N and with
the number of node processes.

One workload (FedAvg, logistic regression on synthetic data with 20 rows per client, K clients a
round, every client its own Flower node id) at each N of ``--sizes``: once through ``fedsim run``
(the in-process reference) and once through ``fedsim server`` plus P ``fedsim client`` processes on
127.0.0.1 for each P of ``--processes``, each process a fresh interpreter started and stopped by
PID. Per run it reports the time to register every client (gRPC), the steady round (median of the
rounds after the first, from ``timing.jsonl``), the peak RSS of the server process and of the
largest node process (sampled every 0.2 s), messages and MB per round (``metrics.jsonl`` and the
transport counters), and whether ``metrics.jsonl`` is byte-identical to the in-process run. It
writes ``scale.json``, ``scale.md`` and ``scale.png`` (cost against N, one line per runtime) to
``--out``.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from . import cli_setup, fedsim_cmd, int_list, set_args
from .memory import PeakMemory
from .processes import BenchError, Processes, free_port

WORKLOAD = """\
name = "bench-scale-{n}"
description = "fedsim bench scale: FedAvg, logistic regression, {n} clients, {k} a round"
rounds = {rounds}
seed = 0
eval_every = {rounds}
checkpoint_every = 0

[data]
name = "synthetic"
partition = "iid"
num_clients = {n}
eval_samples = 2000
options = {{n = {rows}, dim = 20, classes = 4}}

[model]
name = "logreg"

[client]
lr = 0.1
batch_size = 8
local_steps = 2

[strategy]
name = "fedavg"

[participation]
name = "uniform"
clients_per_round = {k}
"""


def add_parser(bsub) -> None:
    s = bsub.add_parser("scale", help="round latency, memory and traffic against N and the number of node processes")
    s.add_argument("--sizes", default="1000,10000,100000", help="populations N (comma-separated)")
    s.add_argument("--processes", default="1,2,4", help="node process counts (comma-separated; 0: in-process only)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override of the workload, e.g. --set strategy.name=fedau (repeatable)")
    s.add_argument("--clients-per-round", type=int, default=100, help="K (default 100)")
    s.add_argument("--rounds", type=int, default=5, help="rounds per run (>= 2; default 5)")
    s.add_argument("--out", default=os.path.join("runs", "bench-scale"), help="work and output directory")
    s.add_argument("--timeout", type=float, default=900.0, help="wall seconds allowed per run")
    s.add_argument("--json", action="store_true", help="print the results as JSON")
    s.set_defaults(func=_cli)


def _cli(args) -> int:
    log = cli_setup(args)
    processes = [] if args.processes.strip() in ("0", "none") else int_list(args.processes, "--processes")
    result = bench_scale(int_list(args.sizes, "--sizes"), processes, args.clients_per_round, args.rounds,
                         Path(args.out), args.timeout, log, overrides=args.set)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0 if all(r["ok"] for r in result["runs"]) else 1


def bench_scale(sizes: list[int], processes: list[int], per_round: int, rounds: int, out: Path, timeout: float,
                log=print, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for n in sizes:
        k = min(per_round, n)
        config = out / f"n{n}" / "experiment.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(WORKLOAD.format(n=n, k=k, rounds=rounds, rows=25 * n))  # 80% train: 20 rows a client
        reference = out / f"n{n}" / "in-process"
        runs.append(_measure(lambda procs: _inprocess(procs, config, reference, overrides), "in-process", n, 0,
                             reference, None, timeout, log))
        for p in processes:
            run_dir = out / f"n{n}" / f"grpc-{p}"
            runs.append(_measure(lambda procs, p=p, d=run_dir: _grpc(procs, config, d, n, p, overrides), "grpc", n, p,
                                 run_dir, reference, timeout, log))
    result = {"workload": {"model": "logreg", "dim": 20, "classes": 4, "rows_per_client": 20,
                           "clients_per_round": per_round, "rounds": rounds, "cpus": os.cpu_count(),
                           "overrides": list(overrides), "strategy": _strategy(overrides)},
              "runs": runs}
    (out / "scale.json").write_text(json.dumps(result, indent=2))
    (out / "scale.md").write_text(format_table(result) + "\n")
    _plot(result, out / "scale.png")
    return result


def _strategy(overrides) -> str:
    named = [o.split("=", 1)[1] for o in overrides if o.startswith("strategy.name=")]
    return named[-1] if named else "fedavg"


def _inprocess(procs: Processes, config: Path, run_dir: Path, overrides=()) -> dict:
    return {"in-process": procs.start("fedsim-run", fedsim_cmd("run", str(config), *set_args(overrides), "--out",
                                                               str(run_dir), "--quiet", "--overwrite"))}


def _grpc(procs: Processes, config: Path, run_dir: Path, n: int, p: int, overrides=()) -> dict:
    from ..experiments.launch import contiguous

    port = free_port()
    started = {"server": procs.start("server", fedsim_cmd(
        "server", str(config), *set_args(overrides), "--address", f"127.0.0.1:{port}", "--insecure", "--out",
        str(run_dir), "--quiet", "--overwrite", "--wait-nodes", "900", "--round-timeout", "300"))}
    for i, clients in enumerate(contiguous(n, p)):
        started[f"node-{i}"] = procs.start(f"node-{i}", fedsim_cmd(
            "client", "--server", f"127.0.0.1:{port}", "--insecure", "--clients", f"{clients[0]}-{clients[-1]}",
            "--name", f"node-{i}", "--max-wait", "600"))
    return started


def _measure(start, runtime: str, n: int, p: int, run_dir: Path, reference: Path | None, timeout: float, log) -> dict:
    row = {"runtime": runtime, "n": n, "processes": p, "ok": False}
    try:
        with Processes(run_dir.parent / f"{run_dir.name}-work") as procs:
            t0 = time.time()
            started = start(procs)
            samplers = {name: PeakMemory(lambda proc=proc: {proc.pid} if proc.poll() is None else set())
                        for name, proc in started.items()}
            for s in samplers.values():
                s.__enter__()
            try:
                for proc in started.values():
                    procs.wait(proc, timeout)
            finally:
                for s in samplers.values():
                    s.__exit__(None, None, None)
            t_end = time.time()
        peaks = {name: s.peak_rss / 2**20 for name, s in samplers.items()}
        row.update(_rounds(run_dir, t0, t_end))
        main = "in-process" if runtime == "in-process" else "server"
        row["server_peak_rss_mib"] = round(peaks[main], 1)
        nodes = [v for k, v in peaks.items() if k.startswith("node-")]
        row["node_peak_rss_mib"] = round(max(nodes), 1) if nodes else None
        summary = json.loads((run_dir / "summary.json").read_text())
        transport = summary.get("transport") or {}
        row["registered_s"] = transport.get("registered_s")
        row["messages_per_round"] = round(transport["replies"] / row["rounds"], 1) if "replies" in transport else None
        row["final_accuracy"] = summary["final_accuracy"]
        # the end-of-run checkpoint: the server's whole state (in-process it also holds the clients' own state)
        row["checkpoint_mib"] = round((run_dir / "checkpoint.pt").stat().st_size / 2**20, 3)
        if reference is not None:
            row["same_metrics_as_in_process"] = ((run_dir / "metrics.jsonl").read_bytes()
                                                 == (reference / "metrics.jsonl").read_bytes())
        row["ok"] = True
        log(f"bench scale: N = {n} {runtime}{f' x {p}' if p else ''}: steady round {row['steady_round_s']:.3f} s, "
            f"server peak {row['server_peak_rss_mib']:.0f} MiB")
    except (BenchError, OSError, KeyError, ValueError) as exc:
        row["error"] = str(exc)
        log(f"bench scale: N = {n} {runtime} x {p}: failed: {exc}")
    return row


def _rounds(run_dir: Path, t0: float, t_end: float) -> dict:
    walls = [json.loads(x)["wall_time"] for x in (run_dir / "timing.jsonl").read_text().splitlines() if x.strip()]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steady = [b - a for a, b in zip(walls, walls[1:])]
    versions = [r["server/model_versions"] for r in rows if "server/model_versions" in r]  # FedAsync, repair
    return {"model_versions_max": max(versions) if versions else None,
            "rounds": len(rows), "first_round_s": round(walls[0] - t0, 3), "total_s": round(t_end - t0, 3),
            "steady_round_s": round(statistics.median(steady), 4) if steady else None,
            "mb_per_round": round(sum(r["bytes_up"] + r["bytes_down"] for r in rows) / len(rows) / 1e6, 3)}


def format_table(result: dict) -> str:
    w = result["workload"]
    lines = [f"workload: {w.get('strategy', 'fedavg')}, logistic regression (D = {w['dim'] * w['classes'] + w['classes']}), "
             f"{w['rows_per_client']} rows a client, K = {w['clients_per_round']} a round, {w['rounds']} rounds, "
             f"{w['cpus']} CPUs",
             "",
             "| N | runtime | node processes | register all (s) | first round (s) | steady round (s) | server peak RSS "
             "(MiB) | largest node peak RSS (MiB) | checkpoint (MiB) | messages / round | MB / round | "
             "metrics = in-process | past models kept (max) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    if w.get("overrides"):
        lines.insert(1, f"overrides: {' '.join(w['overrides'])}")
    fmt = lambda v, f="{:.2f}": "-" if v is None else f.format(v)  # noqa: E731
    for r in result["runs"]:
        if not r["ok"]:
            lines.append(f"| {r['n']} | {r['runtime']} | {r['processes'] or '-'} | failed: {r.get('error', '')[:80]} "
                         "| | | | | | | | | |")
            continue
        same = r.get("same_metrics_as_in_process")
        lines.append(f"| {r['n']} | {r['runtime']} | {r['processes'] or '-'} | {fmt(r['registered_s'])} | "
                     f"{fmt(r['first_round_s'])} | {fmt(r['steady_round_s'], '{:.3f}')} | "
                     f"{fmt(r['server_peak_rss_mib'], '{:.0f}')} | {fmt(r['node_peak_rss_mib'], '{:.0f}')} | "
                     f"{fmt(r.get('checkpoint_mib'), '{:.3f}')} | "
                     f"{fmt(r['messages_per_round'], '{:.0f}')} | {fmt(r['mb_per_round'], '{:.3f}')} | "
                     f"{'-' if same is None else same} | {fmt(r.get('model_versions_max'), '{:d}')} |")
    return "\n".join(lines)


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in result["runs"] if r["ok"]]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key, ax, label in (("steady_round_s", axes[0], "steady round (s)"),
                           ("server_peak_rss_mib", axes[1], "server peak RSS (MiB)"),
                           ("registered_s", axes[2], "time to register every client (s)")):
        for runtime, p in sorted({(r["runtime"], r["processes"]) for r in ok}):
            pts = sorted((r["n"], r[key]) for r in ok if (r["runtime"], r["processes"]) == (runtime, p)
                         and r.get(key) is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=runtime if not p else f"gRPC, {p} node processes")
        ax.set_xscale("log")
        ax.set_xlabel("clients N")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("fedsim bench scale")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
