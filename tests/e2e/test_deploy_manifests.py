"""deploy/ and k8s/: the manifests render (``kubectl kustomize``), validate against the Kubernetes
schemas offline (``kubernetes-validate``, strict), and run the same ``fedsim`` commands as the compose
file; the Dockerfile's entry point is ``fedsim``. Plus the deploy flags: ``fedsim client --shard``,
``--token-dir`` and ``fedsim server --health-port``."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fedsim.cli import main
from fedsim.experiments.grpc_commands import parse_shard
from fedsim.experiments.launch import contiguous

from conftest import tiny_config


def _toml(raw: dict) -> str:
    import tomli_w

    return tomli_w.dumps(raw)

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.30.0"  # oldest supported minor with GA gRPC probes and everything used here
OVERLAYS = ("cpu", "gpu")


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (needed for `kubectl kustomize`; it is not in Debian's apt)")
    return kubectl


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """Each overlay rendered, after `fedsim certs` made the git-ignored TLS material, as a user does."""
    kubectl = _kubectl()
    work = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(ROOT / "k8s", work, ignore=shutil.ignore_patterns("certs"))
    assert main(["certs", "--out", str(work / "base" / "certs"), "--host", "fedsim-server",
                 "--tokens", "2", "--num-clients", "50"]) == 0
    out = {}
    for overlay in OVERLAYS:
        text = subprocess.run([kubectl, "kustomize", str(work / "overlays" / overlay)], check=True,
                              capture_output=True, text=True, timeout=60).stdout
        out[overlay] = [d for d in yaml.safe_load_all(text) if d]
    return out


def _find(docs, kind, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def _container(docs, kind, name):
    spec = _find(docs, kind, name)["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


def test_manifests_validate_against_the_kubernetes_schemas(rendered):
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (deploy/setup.sh does)")
    for overlay, docs in rendered.items():
        kinds = sorted(d["kind"] for d in docs)
        assert kinds == ["ConfigMap", "Job", "Job", "PersistentVolumeClaim", "Secret", "Secret", "Service"], overlay
        for doc in docs:
            kv.validate(doc, K8S_VERSION, strict=True)
    bad = _find(rendered["cpu"], "Job", "fedsim-server")
    bad = {**bad, "spec": {**bad["spec"], "replicas": "one"}}
    with pytest.raises(kv.ValidationError):  # the validator does reject a broken manifest
        kv.validate(bad, K8S_VERSION, strict=True)


def test_generated_names_are_wired_and_the_secrets_hold_what_each_side_needs(rendered):
    for docs in rendered.values():
        names = {(d["kind"], d["metadata"]["name"]) for d in docs}
        for kind, name in (("Job", "fedsim-server"), ("Job", "fedsim-client")):
            spec, container = _container(docs, kind, name)
            for vol in spec["volumes"]:
                ref = vol.get("secret", {}).get("secretName") or vol.get("configMap", {}).get("name")
                if ref:
                    assert ("Secret", ref) in names or ("ConfigMap", ref) in names, ref
        server_tls = _find(docs, "Secret", "fedsim-server-tls")["data"]
        node = _find(docs, "Secret", "fedsim-node-tokens")["data"]
        assert set(server_tls) == {"server.pem", "server.key", "tokens.txt"}
        assert set(node) == {"ca.pem", "node-tokens.txt"}  # no server key in client pods
        clients = _find(docs, "Job", "fedsim-client")["spec"]
        assert clients["completionMode"] == "Indexed" and clients["completions"] == clients["parallelism"] == 2
        server = _find(docs, "Job", "fedsim-server")["spec"]
        assert server["completions"] == 1 and server["template"]["spec"]["restartPolicy"] == "OnFailure"
        svc = _find(docs, "Service", "fedsim-server")
        assert svc["spec"]["ports"][0]["port"] == 9400


def test_server_probes_use_the_grpc_health_port(rendered):
    for docs in rendered.values():
        _, server = _container(docs, "Job", "fedsim-server")
        health = [a for a in server["args"] if a.startswith("--health-port=")]
        assert health == ["--health-port=9401"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert server[probe]["grpc"]["port"] == 9401
        assert server["resources"]["requests"]["cpu"]
    _, gpu_client = _container(rendered["gpu"], "Job", "fedsim-client")
    assert gpu_client["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu_client["image"] == "fedsim:cuda" and gpu_client["args"][-1] == "--device=cuda"  # trains on the GPU
    _, cpu_client = _container(rendered["cpu"], "Job", "fedsim-client")
    assert cpu_client["image"] == "fedsim:cpu" and gpu_client["args"][:-1] == cpu_client["args"]


def _compose():
    return yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"]


def _expand(args: list[str], index: int) -> list[str]:
    """An Indexed Job pod's args: ``$(JOB_COMPLETION_INDEX)`` is the pod's index."""
    return [a.replace("$(JOB_COMPLETION_INDEX)", str(index)) for a in args]


def test_pods_run_the_same_commands_as_the_compose_file(rendered):
    services = _compose()
    for overlay, docs in rendered.items():
        _, server = _container(docs, "Job", "fedsim-server")
        assert "command" not in server  # the image's ENTRYPOINT (fedsim), as in compose
        assert server["args"] == services["fedsim-server"]["command"]
        job = _find(docs, "Job", "fedsim-client")
        _, client = _container(docs, "Job", "fedsim-client")
        assert "command" not in client
        args = client["args"][:-1] if overlay == "gpu" else client["args"]  # gpu adds --device=cuda
        compose_clients = sorted(k for k in services if k.startswith("client-"))
        assert len(compose_clients) == job["spec"]["completions"]
        for i, name in enumerate(compose_clients):
            assert _expand(args, i) == services[name]["command"], name
        # the mounts behind the paths in those commands match too
        mounts = {m["mountPath"] for m in client["volumeMounts"]}
        targets = [v.split(":")[1] for v in services["client-0"]["volumes"]]  # compose mounts the toml file itself
        assert mounts == {t.rsplit("/", 1)[0] if t.endswith(".toml") else t for t in targets}


def test_compose_shards_cover_every_client_once_and_match_the_experiment():
    import tomllib

    services = _compose()
    n = tomllib.loads((ROOT / "k8s" / "base" / "experiment.toml").read_text())["data"]["num_clients"]
    shards = [dict(a.lstrip("-").split("=", 1) for a in services[k]["command"][1:])
              for k in sorted(services) if k.startswith("client-")]
    assert {s["experiment"] for s in shards} == {"/etc/fedsim/config/experiment.toml"}
    count = len(shards)  # the token list names one node per client service
    covered = [c for s in shards for c in contiguous(n, count)[parse_shard(s["shard"])[0]]]
    assert sorted(covered) == list(range(n))
    certs = services["certs"]["command"][0]
    assert f"--tokens {len(shards)} --num-clients {n}" in certs and "--host fedsim-server" in certs


def test_dockerfile_entrypoint_is_fedsim_and_installs_the_pinned_torch():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["fedsim"\]$', text, re.M)
    assert "ARG TORCH_VERSION=2.13.0" in text and "ARG TORCH_INDEX=" in text
    assert re.search(r"^USER 10001$", text, re.M)
    for path in ("/etc/fedsim/config", "/etc/fedsim/tls", "/etc/fedsim/node", "/runs"):
        assert path in text  # mount points the manifests use exist in the image
    for src in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / src).exists(), src
    for svc in _compose().values():
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"


# --- the deploy flags --------------------------------------------------------------------------

def test_parse_shard_reads_indexes_and_statefulset_pod_names():
    from fedsim.config import ConfigError

    assert parse_shard("1/4") == (1, 4)
    assert parse_shard("fedsim-client-3/8") == (3, 8)
    assert parse_shard("3") == (3, None)  # an Indexed Job's $(JOB_COMPLETION_INDEX): the count from the tokens
    for bad in ("4/4", "client/2", "-1/2", "fedsim-client/2", ""):
        with pytest.raises(ConfigError):
            parse_shard(bad)


def test_client_shard_picks_its_range_and_token(tmp_path, monkeypatch, capsys):
    import fedsim.runtime.node as node_mod

    started = {}

    class FakeNode:
        def __init__(self, server, clients, token, **kw):
            started.update(server=server, clients=clients, token=token, name=kw["name"])

        def run(self):
            return 0

    monkeypatch.setattr(node_mod, "Node", FakeNode)
    assert main(["certs", "--out", str(tmp_path), "--tokens", "2", "--num-clients", "50"]) == 0
    args = ["client", "--server", "fedsim-server:9400", "--num-clients", "50", "--tls-dir", str(tmp_path),
            "--token-dir", str(tmp_path)]
    assert main([*args, "--shard", "fedsim-client-1/2"]) == 0
    assert started["clients"] == list(range(25, 50)) and started["name"] == "node-1"
    assert started["token"] == (tmp_path / "node-1.token").read_text().strip()
    assert (tmp_path / "tokens.txt").read_text().split("\n")[1].split() == ["node-1", started["token"], "25-49"]
    assert main([*args, "--shard", "2/2"]) == 2
    assert main([*args, "--shard", "0/2", "--clients", "0-24"]) == 2
    assert main(["client", "--server", "h:1", "--shard", "0/2", "--tls-dir", str(tmp_path)]) == 2
    assert "needs --num-clients" in capsys.readouterr().err
    # an Indexed Job pod: its index alone, the experiment file for N, the one token list for its token
    experiment = tmp_path / "exp.toml"
    experiment.write_text(_toml(tiny_config(**{"data.num_clients": 50})))
    listed = ["client", "--server", "fedsim-server:9400", "--experiment", str(experiment), "--tls-dir", str(tmp_path),
              "--token-list", str(tmp_path / "node-tokens.txt")]
    assert main([*listed, "--shard", "1"]) == 0
    assert started["clients"] == list(range(25, 50)) and started["token"] == (tmp_path / "node-1.token").read_text().strip()
    assert main([*listed, "--shard", "2"]) == 2 and "names 2 nodes" in capsys.readouterr().err


def test_the_client_count_is_one_number(tmp_path):
    """Editing the client Job's completions is the only change a scale-out needs in the manifests."""
    kubectl = _kubectl()
    work = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", work, ignore=shutil.ignore_patterns("certs"))
    assert main(["certs", "--out", str(work / "base" / "certs"), "--host", "fedsim-server",
                 "--tokens", "5", "--num-clients", "50"]) == 0
    client = work / "base" / "client.yaml"
    client.write_text(client.read_text().replace("completions: 2", "completions: 5", 1))
    docs = [d for d in yaml.safe_load_all(subprocess.run([kubectl, "kustomize", str(work / "overlays" / "cpu")],
                                                         check=True, capture_output=True, text=True).stdout) if d]
    spec = _find(docs, "Job", "fedsim-client")["spec"]
    assert spec["completions"] == spec["parallelism"] == 5


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_rendered_commands_run_a_federation_as_local_processes(rendered, tmp_path):
    """The server and client containers' args of the rendered cpu overlay, with the rendered Secrets and
    ConfigMap written where the pods mount them (under tmp_path) and the addresses on 127.0.0.1, run as
    local processes for two rounds; both Jobs' pods would complete (exit 0)."""
    import base64
    import json
    import os
    import sys

    docs = rendered["cpu"]
    root = tmp_path / "pod"
    port, health = _free_port(), _free_port()
    mounts = {"/etc/fedsim/config": root / "config", "/etc/fedsim/tls": root / "tls", "/etc/fedsim/node": root / "node",
              "/runs": root / "runs", "/var/lib/fedsim": root / "state"}
    experiment = _find(docs, "ConfigMap", "fedsim-experiment")["data"]["experiment.toml"]
    (root / "config").mkdir(parents=True)
    (root / "config" / "experiment.toml").write_text(experiment.replace("rounds = 30", "rounds = 2"))
    for name, where in (("fedsim-server-tls", "tls"), ("fedsim-node-tokens", "node")):
        (root / where).mkdir()
        for key, value in _find(docs, "Secret", name)["data"].items():
            (root / where / key).write_bytes(base64.b64decode(value))
            (root / where / key).chmod(0o440)

    def local(args: list[str], index: int | None = None) -> list[str]:
        out = []
        for a in args:
            for path, here in mounts.items():
                a = a.replace(path, str(here))
            a = a.replace("0.0.0.0:9400", f"127.0.0.1:{port}").replace("fedsim-server:9400", f"127.0.0.1:{port}")
            a = a.replace("--health-port=9401", f"--health-port={health}")
            if index is not None:
                a = a.replace("$(JOB_COMPLETION_INDEX)", str(index))
            out.append(a)
        return [sys.executable, "-m", "fedsim", *out]

    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    _, server = _container(docs, "Job", "fedsim-server")
    _, client = _container(docs, "Job", "fedsim-client")
    nodes = _find(docs, "Job", "fedsim-client")["spec"]["completions"]
    procs = [subprocess.Popen(local(server["args"]), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)]
    procs += [subprocess.Popen(local(client["args"], i), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
              for i in range(nodes)]
    try:
        codes = [p.wait(180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    logs = [p.stdout.read().decode(errors="replace")[-1500:] for p in procs]
    assert codes == [0] * (1 + nodes), logs
    (run,) = (root / "runs").iterdir()  # /runs/{run_id}: <name>-<config hash>
    assert run.name.startswith("quickstart-") and len(run.name) == len("quickstart-") + 12
    assert [json.loads(x)["round"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_server_health_port_answers_the_standard_grpc_health_check():
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from fedsim.experiments.serve import serve_health

    with socket_port() as port:
        server = serve_health(f"127.0.0.1:{port}")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", "fedsim.Fleet"):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as err:  # nothing else is served on the plaintext port
                channel.unary_unary("/fedsim.Fleet/Register")(b"{}", timeout=10)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(grace=None)


class socket_port:
    """A free loopback port (closed again before use)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc):
        return False
