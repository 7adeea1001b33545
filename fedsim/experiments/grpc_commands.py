"""CLI of the gRPC runtime: ``fedsim server``, ``fedsim client``, ``fedsim certs``, ``fedsim launch``.

    fedsim certs --out certs/ [--host NAME ...] [--tokens 3 [--num-clients 50]]
    fedsim server CONFIG [--set k=v] [--arm NAME] --address 127.0.0.1:9400 --tls-dir certs/ \\
        --token-file certs/tokens.txt --out runs/s [--resume] [--round-timeout S]
    fedsim client --server 127.0.0.1:9400 --clients 0-49 --tls-dir certs/ --token-file node.token
    fedsim client --server fedsim-server:9400 --shard fedsim-client-1/2 --num-clients 50 --tls-dir certs/ \\
        --token-dir certs/          # node 1 of 2: clients 25-49, token certs/node-1.token
    fedsim launch CONFIG --processes 3 --out runs/g
"""

from __future__ import annotations

import os
import re
import signal
import sys


def _server(args) -> int:
    from ..config import ConfigError, arm_configs
    from .setup import load as load_config
    from .run import check_out_dir, run_id
    from .serve import ServerOptions, run_server

    cfg = load_config(args.config, args.set)
    if cfg.arms:
        arms = arm_configs(cfg)
        if args.arm not in arms:
            raise ConfigError(f"'{args.config}' compares arms {list(arms)}; pick one with --arm")
        cfg = arms[args.arm]
    opts = ServerOptions(address=args.address, tls_dir=args.tls_dir, token_file=args.token_file,
                         insecure=args.insecure, round_timeout=args.round_timeout, wait_nodes=args.wait_nodes,
                         arrival=args.arrival, max_message_mb=args.max_message_mb, health_port=args.health_port)
    out = (args.out or os.path.join("runs", cfg.name)).replace("{run_id}", run_id(cfg))
    check_out_dir(out, resume=args.resume, overwrite=args.overwrite)
    host = args.address.rsplit(":", 1)[0]
    _terminate_as_interrupt()
    try:
        summary = run_server(cfg, out, opts, resume=args.resume, progress=not args.quiet,
                             on_listen=lambda port: print(f"fedsim server listening on {host}:{port}", flush=True))
    except TimeoutError as exc:
        print(f"fedsim server: {exc}", file=sys.stderr)
        return 1
    print(f"final accuracy {summary['final_accuracy']:.4f} after {summary['rounds']} rounds; outputs in {out}/",
          flush=True)
    return 0


def _client(args) -> int:
    from ..config import ConfigError
    from .launch import contiguous
    from ..runtime.node import Node
    from .setup import handler_for_config
    from ..runtime.security import (channel_credentials, count_tokens, is_loopback, parse_clients, read_token,
                                    read_token_list)

    if (args.clients is None) == (args.shard is None):
        raise ConfigError("fedsim client needs exactly one of --clients and --shard")
    if args.shard is not None:
        index, count = parse_shard(args.shard)
        if count is None:  # INDEX alone: as many nodes as the token list names
            if not args.token_list:
                raise ConfigError(f"--shard {args.shard}: give INDEX/COUNT, or INDEX with --token-list (one token per node)")
            count = count_tokens(args.token_list)
            if not 0 <= index < count:
                raise ConfigError(f"--shard {args.shard}: index {index} is not in 0..{count - 1} ({args.token_list} "
                                  f"names {count} nodes)")
        if args.experiment:  # the experiment file the server runs: its data.num_clients
            if args.num_clients:
                raise ConfigError("give one of --num-clients and --experiment")
            from .setup import load as load_config
            args.num_clients = load_config(args.experiment).data.num_clients
        if args.num_clients < 1:
            raise ConfigError("--shard needs --num-clients (the experiment's data.num_clients) or --experiment")
        clients = contiguous(args.num_clients, count)[index]
        name = args.name or f"node-{index}"
    else:
        try:
            clients = parse_clients(args.clients)
        except ValueError as exc:
            raise ConfigError(f"--clients: {exc}") from None
        name = args.name or "node"
    if sum(map(bool, (args.token_dir, args.token_file, args.token_list))) > 1:
        raise ConfigError("give one of --token-file, --token-dir and --token-list")
    if (args.token_dir or args.token_list) and args.shard is None:
        raise ConfigError("--token-dir and --token-list pick node <shard index>'s token: use them with --shard")
    if args.token_dir:
        args.token_file = os.path.join(args.token_dir, f"node-{index}.token")
    if args.insecure and not is_loopback(args.server):
        raise ConfigError(f"--insecure is only allowed for a loopback server, not {args.server}")
    if not args.insecure and not args.tls_dir:
        raise ConfigError("fedsim client needs --tls-dir (the CA of the server) or --insecure on 127.0.0.1")
    creds = None if args.insecure else channel_credentials(args.tls_dir)
    if args.token_list:
        token = read_token_list(args.token_list, f"node-{index}")
    else:
        token = read_token(args.token_file) if args.token_file else ""
    _terminate_as_interrupt()
    device = args.device  # where this node trains: a property of the node, not of the experiment
    build = handler_for_config if device is None else (lambda raw: handler_for_config(raw, device=device))
    node = Node(args.server, clients, token, credentials=creds, max_wait=args.max_wait, name=name,
                build_handler=build, state_dir=args.state_dir)
    return node.run()


def parse_shard(spec: str) -> tuple[int, int | None]:
    """``"1/4"`` or a StatefulSet pod name ``"fedsim-client-1/4"`` -> ``(1, 4)``: node 1 of 4; ``"1"``
    (an Indexed Job's ``$(JOB_COMPLETION_INDEX)``) -> ``(1, None)``: the count comes from the token list."""
    from ..config import ConfigError

    match = re.fullmatch(r"(?:.+-)?(\d+)(?:/(\d+))?", str(spec))
    if match is None:
        raise ConfigError(f"--shard '{spec}': expected INDEX or INDEX/COUNT, INDEX a number or a name ending in "
                          "-<number>")
    i, k = int(match[1]), None if match[2] is None else int(match[2])
    if k is not None and not 0 <= i < k:
        raise ConfigError(f"--shard '{spec}': index {i} is not in 0..{k - 1}")
    return i, k


def _certs(args) -> int:
    from ..config import ConfigError
    from .launch import contiguous
    from ..runtime.security import make_certs, write_tokens

    if args.tokens and args.num_clients < args.tokens:
        raise ConfigError("fedsim certs --tokens N needs --num-clients (>= N): each token is bound to its "
                          "contiguous range of the experiment's clients, so no node can answer for another's")
    make_certs(args.out, args.host, days=args.days)
    print(f"CA and server certificate in {args.out}/ (ca.pem, server.pem, server.key), valid {args.days} days")
    if args.tokens:
        write_tokens(args.out, args.tokens, contiguous(args.num_clients, args.tokens))
        print(f"{args.tokens} node tokens: {args.out}/node-<i>.token; server list: {args.out}/tokens.txt")
    return 0


def _launch(args) -> int:
    from .launch import launch

    _terminate_as_interrupt()
    return launch(args.config, args.set, processes=args.processes, out=args.out, insecure=args.insecure,
                  round_timeout=args.round_timeout, quiet=args.quiet, resume=args.resume, overwrite=args.overwrite)


def _terminate_as_interrupt() -> None:
    """SIGTERM ends the process like Ctrl-C: outputs so far and the last checkpoint are kept."""
    def raise_interrupt(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, raise_interrupt)


def add_parsers(sub) -> None:
    s = sub.add_parser("server", help="serve one federation over gRPC (clients connect with `fedsim client`)")
    s.add_argument("config", help="preset name or TOML file")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override (repeatable)")
    s.add_argument("--arm", help="for a comparison preset: the arm to serve")
    s.add_argument("--address", default="127.0.0.1:9400", help="HOST:PORT to listen on (port 0: any free port)")
    s.add_argument("--tls-dir", help="directory with server.pem and server.key (see `fedsim certs`)")
    s.add_argument("--token-file", help="accepted node tokens, one 'NAME TOKEN CLIENTS' per line")
    s.add_argument("--insecure", action="store_true", help="plaintext without tokens; loopback addresses only")
    s.add_argument("--out", help="output directory (default runs/<name>); '{run_id}' in it becomes <name>-<first 12 "
                                 "hex of the config's SHA-256>, so a changed experiment gets a new directory")
    s.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    s.add_argument("--overwrite", action="store_true", help="replace the run already in OUT (default: refuse)")
    s.add_argument("--round-timeout", type=float, default=120.0, help="wall seconds a round waits for answers")
    s.add_argument("--wait-nodes", type=float, default=300.0, help="wall seconds to wait for all clients")
    s.add_argument("--arrival", choices=("virtual", "wall"), default="virtual",
                   help="answer order: the virtual clock (default; matches `fedsim run`) or real arrival")
    s.add_argument("--max-message-mb", type=float, default=64.0, help="larger replies are refused and counted")
    s.add_argument("--health-port", type=int, help="also serve the standard grpc.health.v1 Health service, "
                   "plaintext, on this port of the --address host (for Kubernetes `grpc:` probes); nothing else "
                   "is served there")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    s.set_defaults(func=_server)

    c = sub.add_parser("client", help="a node process hosting virtual clients for a `fedsim server`")
    c.add_argument("--server", required=True, help="HOST:PORT of the server")
    c.add_argument("--clients", help="virtual client ids, e.g. 0-49 or 0,2,4-9")
    c.add_argument("--shard", metavar="INDEX[/COUNT]",
                   help="host the INDEX-th of COUNT contiguous client ranges (as `fedsim launch` and `fedsim certs "
                        "--tokens COUNT --num-clients N` split them); INDEX may be a StatefulSet pod name "
                        "(fedsim-client-3/8 is node 3 of 8); needs --num-clients")
    c.add_argument("--num-clients", type=int, default=0, help="with --shard: the experiment's data.num_clients")
    c.add_argument("--experiment", help="with --shard: read data.num_clients from this experiment file instead")
    c.add_argument("--tls-dir", help="directory with the CA certificate ca.pem")
    c.add_argument("--token-file", help="file holding this node's token")
    c.add_argument("--token-dir", help="with --shard: read this node's token from DIR/node-<INDEX>.token")
    c.add_argument("--token-list", help="with --shard: read this node's token from the 'node-<INDEX> TOKEN' line of "
                                        "FILE (`fedsim certs` writes node-tokens.txt)")
    c.add_argument("--state-dir", help="save the clients' own state (error feedback, SCAFFOLD's c_i) here after "
                                       "every batch and restore it when the node restarts")
    c.add_argument("--device", choices=("cpu", "cuda", "auto"),
                   help="train this node's clients here, whatever the experiment's client.device says")
    c.add_argument("--insecure", action="store_true", help="plaintext; loopback servers only")
    c.add_argument("--max-wait", type=float, default=60.0, help="give up after this long without a server")
    c.add_argument("--name", help="name in log lines (default node-<INDEX> with --shard, else node)")
    c.set_defaults(func=_client)

    k = sub.add_parser("certs", help="self-signed CA + server certificate (and node tokens) for testing")
    k.add_argument("--out", required=True, help="output directory")
    k.add_argument("--host", action="append", default=[], help="extra server name or IP (repeatable)")
    k.add_argument("--tokens", type=int, default=0, help="also write this many node tokens")
    k.add_argument("--num-clients", type=int, default=0,
                   help="the experiment's data.num_clients: token i is bound to the i-th contiguous client range "
                        "(required with --tokens)")
    k.add_argument("--days", type=int, default=30, help="certificate lifetime in days (default 30)")
    k.set_defaults(func=_certs)

    la = sub.add_parser("launch", help="server + N client processes on 127.0.0.1, one command")
    la.add_argument("config", help="preset name or TOML file")
    la.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override (repeatable)")
    la.add_argument("--processes", type=int, default=2, help="client node processes (clients split evenly)")
    la.add_argument("--out", help="output directory (default runs/<name>-grpc)")
    la.add_argument("--insecure", action="store_true", help="plaintext and no tokens (default: TLS + tokens)")
    la.add_argument("--round-timeout", type=float, default=120.0, help="wall seconds a round waits for answers")
    la.add_argument("--quiet", action="store_true", help="no progress output")
    la.add_argument("--resume", action="store_true", help="continue each run (arm) from its checkpoint in OUT")
    la.add_argument("--overwrite", action="store_true", help="replace the run already in OUT (default: refuse)")
    la.set_defaults(func=_launch)

