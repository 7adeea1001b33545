"""``fedsim bench runtime``: one small workload through three runtimes, side by side, in one run.

1. ``fedsim run`` (in-process, one Python process);
2. ``fedsim launch --processes P`` (fedsim's gRPC runtime: a server and P node processes, TLS);
3. Flower's Deployment Runtime (``flower-superlink --insecure`` + one ``flower-supernode`` per client,
   each with its ``partition-id``, all on 127.0.0.1 with free ports, then ``flwr run`` of this
   project's Flower app with ``preset``/``set``/``out`` in the run config). Skipped with
   ``--skip-flower``; if it fails, the reason is reported and the other two still are.

Every runtime runs the same experiment (a config file plus ``--set`` overrides) and writes
``timing.jsonl`` (wall clock at the end of each round) next to ``metrics.jsonl``. Reported per
runtime: time to the first round (from starting the runtime's first process to the end of round 1,
so start-up, imports and data loading are included), the steady round (median of the round times
after the first) and, as ratios of steady rounds, gRPC / in-process and Flower / gRPC, plus the ratio of
the times to the first round, gRPC / in-process.

Every process the bench starts gets its own session; on exit, error or Ctrl-C each one's process
group is stopped (SIGINT/SIGTERM, then SIGKILL), which also reaches the processes it started (the
node processes of ``fedsim launch``, Flower's SuperExecs and ClientApp processes).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import time
from pathlib import Path

from . import cli_setup, fedsim_cmd, set_args
from .processes import BenchError, Processes, free_port

# A quickstart-like workload small enough for Flower's deployment runtime, which cold-starts a
# process per message: LeNet on Fashion-MNIST, every client trains every round.
WORKLOAD = """\
name = "bench-runtime"
description = "fedsim bench runtime: FedAvg, LeNet on Fashion-MNIST, {clients} clients, all of them every round"
rounds = {rounds}
seed = 0
eval_every = 1000
checkpoint_every = 0

[data]
name = "fashion-mnist"
partition = "dirichlet"
alpha = 0.5
num_clients = {clients}
eval_samples = 1000

[model]
name = "lenet"

[client]
lr = 0.05
batch_size = 32
local_steps = 10

[strategy]
name = "fedavg"

[participation]
name = "uniform"
clients_per_round = {clients}
"""

RUNTIMES = ("in-process", "grpc", "flower")


def add_parser(bsub) -> None:
    r = bsub.add_parser("runtime", help="time per round: fedsim run vs fedsim launch vs Flower's deployment runtime")
    r.add_argument("--rounds", type=int, default=5, help="rounds per runtime (>= 2; default 5)")
    r.add_argument("--clients", type=int, default=3,
                   help="clients of the built-in workload, all trained every round (default 3)")
    r.add_argument("--processes", type=int, default=3, help="node processes of `fedsim launch` (default 3)")
    r.add_argument("--config", help="run this preset or TOML instead of the built-in workload (--clients is ignored)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override (repeatable)")
    r.add_argument("--skip-flower", action="store_true", help="do not run Flower's deployment runtime")
    r.add_argument("--app", help="directory of the Flower app for `flwr run` (default: the fedsim source tree)")
    r.add_argument("--out", default=os.path.join("runs", "bench-runtime"), help="work and output directory")
    r.add_argument("--timeout", type=float, default=600.0, help="wall seconds allowed per fedsim runtime")
    r.add_argument("--flower-timeout", type=float, default=1200.0, help="wall seconds allowed for Flower's runtime")
    r.add_argument("--json", action="store_true", help="print the results as JSON")
    r.set_defaults(func=_cli)


def _cli(args) -> int:
    log = cli_setup(args)
    result = bench_runtime(rounds=args.rounds, clients=args.clients, processes=args.processes, config=args.config,
                           overrides=args.set, skip_flower=args.skip_flower, app=args.app, out=args.out,
                           timeout=args.timeout, flower_timeout=args.flower_timeout, log=log)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0 if all(result["runtimes"][k]["ok"] for k in ("in-process", "grpc")) else 1


def bench_runtime(*, rounds: int = 5, clients: int = 3, processes: int = 3, config: str | None = None,
                  overrides: list[str] = (), skip_flower: bool = False, app: str | None = None,
                  out: str | Path = "runs/bench-runtime", timeout: float = 600.0, flower_timeout: float = 1200.0,
                  log=print) -> dict:
    from ..experiments.setup import load as load_config

    out = Path(out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if config is None:
        config = str(out / "workload.toml")
        Path(config).write_text(WORKLOAD.format(rounds=rounds, clients=clients))
    overrides = [*overrides, f"rounds={rounds}"]
    cfg = load_config(config, overrides)  # fails early on a bad config
    if cfg.arms:
        from ..config import ConfigError
        raise ConfigError(f"'{config}' compares arms {list(cfg.arms)}; choose one with --set strategy.name=...")
    workload = {"config": config, "overrides": overrides, "name": cfg.name, "rounds": cfg.rounds,
                "dataset": cfg.data.name, "model": cfg.model.name, "num_clients": cfg.data.num_clients,
                "processes": processes, "cpus": os.cpu_count()}
    runners = {"in-process": lambda: _run_inprocess(config, overrides, out / "in-process", timeout),
               "grpc": lambda: _run_grpc(config, overrides, processes, out / "grpc", timeout)}
    if not skip_flower:
        runners["flower"] = lambda: _run_flower(config, overrides, cfg.data.num_clients, app, out / "flower",
                                                flower_timeout)
    runtimes = {}
    for name, runner in runners.items():
        log(f"bench runtime: {name} ...")
        try:
            runtimes[name] = {"ok": True, **runner(), "error": None}
            r = runtimes[name]
            log(f"bench runtime: {name}: first round {r['first_round_s']:.2f} s, steady round {r['steady_round_s']:.3f} s")
        except BenchError as exc:
            runtimes[name] = {"ok": False, "error": str(exc)}
            log(f"bench runtime: {name} failed: {exc}")
    if skip_flower:
        runtimes["flower"] = {"ok": False, "error": "skipped (--skip-flower)"}
    result = {"workload": workload, "runtimes": runtimes, "ratios": _ratios(runtimes),
              "metrics_identical_grpc": _same_metrics(out / "in-process", out / "grpc")}
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    return result


# --- the three runtimes ---------------------------------------------------------------------------

def _run_inprocess(config, overrides, out: Path, timeout: float) -> dict:
    with Processes(out) as procs:
        t0 = time.time()
        p = procs.start("fedsim-run", fedsim_cmd("run", config, *set_args(overrides), "--out", str(out), "--quiet",
                                                "--overwrite"))
        procs.wait(p, timeout)
        return round_timings(out, t0, time.time())


def _run_grpc(config, overrides, processes: int, out: Path, timeout: float) -> dict:
    with Processes(out) as procs:
        t0 = time.time()
        p = procs.start("fedsim-launch", fedsim_cmd("launch", config, *set_args(overrides), "--processes", str(processes),
                                                 "--out", str(out), "--quiet", "--overwrite"))
        procs.wait(p, timeout)
        return round_timings(out, t0, time.time())


def _run_flower(config, overrides, nodes: int, app: str | None, out: Path, timeout: float) -> dict:
    for exe in ("flower-superlink", "flower-supernode", "flwr"):
        if shutil.which(exe) is None:
            raise BenchError(f"`{exe}` is not installed (pip install flwr)")
    app_dir = Path(app) if app else Path(__file__).resolve().parents[2]
    pyproject = app_dir / "pyproject.toml"
    if not pyproject.exists() or "[tool.flwr.app]" not in pyproject.read_text():
        raise BenchError(f"{app_dir} has no pyproject.toml with [tool.flwr.app] (pass --app)")
    out.mkdir(parents=True, exist_ok=True)
    home = out / "flwr-home"
    home.mkdir()
    env = {"FLWR_HOME": str(home), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
           "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
    link_port = free_port()
    with Processes(out, env) as procs:
        # Set-up, not timed: the first `flwr` call writes $FLWR_HOME/config.toml; add a connection to it
        # (never [tool.flwr.federations] in pyproject.toml: the CLI would rewrite that file).
        procs.wait(procs.start("flwr-config", ["flwr", "config", "ls"]), 120)
        conf = home / "config.toml"
        text = conf.read_text() if conf.exists() else '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
        conf.write_text(text.rstrip("\n") + f'\n\n[superlink.fedsim-bench]\naddress = "127.0.0.1:{link_port}"\n'
                        "insecure = true\n")
        run_config = out / "run_config.toml"
        run_config.write_text(f"preset = {json.dumps(str(Path(config).resolve()) if Path(config).exists() else config)}\n"
                              f"set = {json.dumps(';'.join(overrides))}\nout = {json.dumps(str(out))}\n")

        t0 = time.time()
        procs.start("superlink", ["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link_port),
                                  "--disable-runtime-dependency-installation"])
        for i in range(nodes):
            procs.start(f"supernode-{i}", ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                                           "--node-config", f"partition-id={i} num-partitions={nodes}",
                                           "--host", "127.0.0.1", "--port", str(free_port())])
        _wait_port(link_port, 60.0, procs)
        run = procs.start("flwr-run", ["flwr", "run", str(app_dir), "fedsim-bench", "--run-config", str(run_config),
                                       "--stream"], cwd=app_dir)
        deadline = time.monotonic() + timeout
        summary = out / "summary.json"
        while not summary.exists():  # the ServerApp writes summary.json last
            if run.poll() is not None:
                time.sleep(1.0)  # the file may land just after the log stream ends
                if summary.exists():
                    break
                raise BenchError(f"`flwr run` exited with code {run.returncode} before the run finished; "
                                 + procs.tail("flwr-run") + procs.tail("superlink"))
            if time.monotonic() > deadline:
                raise BenchError(f"Flower's run did not finish within {timeout:.0f} s; " + procs.tail("flwr-run"))
            time.sleep(0.5)
        t_end = time.time()
        return round_timings(out, t0, t_end)


# --- measurements ---------------------------------------------------------------------------------

def round_timings(out: Path, t0: float, t_end: float) -> dict:
    """From ``out/timing.jsonl`` (one ``wall_time`` per round) and the wall clock ``t0`` at which the
    runtime's first process started: time to the end of round 1, median of the later rounds, total."""
    path = out / "timing.jsonl"
    if not path.exists():
        raise BenchError(f"no {path} (the runtime wrote no round)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if len(rows) < 2:
        raise BenchError(f"{path} has {len(rows)} round(s); need at least 2")
    walls = [r["wall_time"] for r in rows]
    rounds_s = [b - a for a, b in zip(walls, walls[1:])]
    return {"first_round_s": round(walls[0] - t0, 3), "steady_round_s": round(statistics.median(rounds_s), 4),
            "round_s": [round(s, 4) for s in rounds_s], "rounds": len(rows), "total_s": round(t_end - t0, 3),
            "last_round_end_s": round(walls[-1] - t0, 3)}


def _ratios(runtimes: dict) -> dict:
    def steady(name):
        r = runtimes.get(name, {})
        return r.get("steady_round_s") if r.get("ok") else None

    def first(name):
        r = runtimes.get(name, {})
        return r.get("first_round_s") if r.get("ok") else None

    def ratio(a, b):
        return round(a / b, 3) if a is not None and b else None

    return {"first_round grpc/in-process": ratio(first("grpc"), first("in-process")),
            "grpc/in-process": ratio(steady("grpc"), steady("in-process")),
            "flower/grpc": ratio(steady("flower"), steady("grpc")),
            "flower/in-process": ratio(steady("flower"), steady("in-process"))}


def _same_metrics(a: Path, b: Path) -> bool | None:
    fa, fb = a / "metrics.jsonl", b / "metrics.jsonl"
    if not (fa.exists() and fb.exists()):
        return None
    return fa.read_bytes() == fb.read_bytes()


def format_table(result: dict) -> str:
    w = result["workload"]
    lines = [f"workload: {w['name']} ({w['dataset']}, {w['model']}, {w['num_clients']} clients, {w['rounds']} rounds), "
             f"gRPC with {w['processes']} node processes, {w['cpus']} CPUs",
             "",
             "| runtime | time to first round (s) | steady round (s, median of rounds 2..) | rounds |",
             "|---|---|---|---|"]
    labels = {"in-process": "`fedsim run` (in-process)", "grpc": f"`fedsim launch --processes {w['processes']}` (gRPC)",
              "flower": "Flower deployment runtime"}
    notes = []
    for name in RUNTIMES:
        r = result["runtimes"].get(name)
        if r is None:
            continue
        if r["ok"]:
            lines.append(f"| {labels[name]} | {r['first_round_s']:.2f} | {r['steady_round_s']:.3f} | {r['rounds']} |")
        else:
            lines.append(f"| {labels[name]} | - | - | - |")
            notes.append(f"{name}: {r['error']}")
    ratios = result["ratios"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines += ["", f"steady-round ratios: gRPC / in-process = {fmt(ratios['grpc/in-process'])} (target <= 1.3), "
                  f"Flower / gRPC = {fmt(ratios['flower/grpc'])} (target >= 10)",
              f"time to first round: gRPC / in-process = {fmt(ratios['first_round grpc/in-process'])} (target <= 1.5)"]
    if result.get("metrics_identical_grpc") is not None:
        lines.append(f"metrics.jsonl identical in-process vs gRPC: {result['metrics_identical_grpc']}")
    lines += notes
    return "\n".join(lines)


def _wait_port(port: int, timeout: float, procs: Processes) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise BenchError(f"the SuperLink did not listen on 127.0.0.1:{port} within {timeout:.0f} s; "
                     + procs.tail("superlink"))
