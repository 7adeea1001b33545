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
        assert kinds == ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Secret", "Secret", "Service",
                         "Service", "StatefulSet"], overlay
        for doc in docs:
            kv.validate(doc, K8S_VERSION, strict=True)
    bad = _find(rendered["cpu"], "Deployment", "fedsim-server")
    bad = {**bad, "spec": {**bad["spec"], "replicas": "one"}}
    with pytest.raises(kv.ValidationError):  # the validator does reject a broken manifest
        kv.validate(bad, K8S_VERSION, strict=True)


def test_generated_names_are_wired_and_the_secrets_hold_what_each_side_needs(rendered):
    for docs in rendered.values():
        names = {(d["kind"], d["metadata"]["name"]) for d in docs}
        for kind, name in (("Deployment", "fedsim-server"), ("StatefulSet", "fedsim-client")):
            spec, container = _container(docs, kind, name)
            for vol in spec["volumes"]:
                ref = vol.get("secret", {}).get("secretName") or vol.get("configMap", {}).get("name")
                if ref:
                    assert ("Secret", ref) in names or ("ConfigMap", ref) in names, ref
        server_tls = _find(docs, "Secret", "fedsim-server-tls")["data"]
        node = _find(docs, "Secret", "fedsim-node-tokens")["data"]
        assert set(server_tls) == {"server.pem", "server.key", "tokens.txt"}
        assert set(node) == {"ca.pem", "node-0.token", "node-1.token"}  # no server key in client pods
        sts = _find(docs, "StatefulSet", "fedsim-client")
        assert sts["spec"]["replicas"] == 2 and sts["spec"]["serviceName"] == "fedsim-client"
        svc = _find(docs, "Service", "fedsim-server")
        assert svc["spec"]["ports"][0]["port"] == 9400


def test_server_probes_use_the_grpc_health_port(rendered):
    for docs in rendered.values():
        _, server = _container(docs, "Deployment", "fedsim-server")
        health = [a for a in server["args"] if a.startswith("--health-port=")]
        assert health == ["--health-port=9401"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert server[probe]["grpc"]["port"] == 9401
        assert server["resources"]["requests"]["cpu"]
    _, gpu_client = _container(rendered["gpu"], "StatefulSet", "fedsim-client")
    assert gpu_client["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu_client["image"] == "fedsim:cuda"
    assert _container(rendered["cpu"], "StatefulSet", "fedsim-client")[1]["image"] == "fedsim:cpu"


def _compose():
    return yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"]


def _normalize(args: list[str], pod_name: str | None = None) -> list[str]:
    """``fedsim`` args with a StatefulSet's $(POD_NAME) expanded and --shard reduced to INDEX/COUNT."""
    out = []
    for a in args:
        if pod_name is not None:
            a = a.replace("$(POD_NAME)", pod_name)
        if a.startswith("--shard="):
            i, k = parse_shard(a.split("=", 1)[1])
            a = f"--shard={i}/{k}"
        out.append(a)
    return out


def test_pods_run_the_same_commands_as_the_compose_file(rendered):
    services = _compose()
    for docs in rendered.values():
        _, server = _container(docs, "Deployment", "fedsim-server")
        assert "command" not in server  # the image's ENTRYPOINT (fedsim), as in compose
        assert server["args"] == services["fedsim-server"]["command"]
        sts = _find(docs, "StatefulSet", "fedsim-client")
        _, client = _container(docs, "StatefulSet", "fedsim-client")
        assert "command" not in client
        assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in client["env"]
        compose_clients = sorted(k for k in services if k.startswith("client-"))
        assert len(compose_clients) == sts["spec"]["replicas"]
        for i, name in enumerate(compose_clients):
            pod = f"{sts['metadata']['name']}-{i}"  # StatefulSet pod names: <name>-<ordinal>
            assert _normalize(client["args"], pod) == _normalize(services[name]["command"]), name
        # the mounts behind the paths in those commands match too
        mounts = {m["mountPath"] for m in client["volumeMounts"]}
        assert mounts == {v.split(":")[1] for v in services["client-0"]["volumes"]}


def test_compose_shards_cover_every_client_once_and_match_the_experiment():
    import tomllib

    services = _compose()
    n = tomllib.loads((ROOT / "k8s" / "base" / "experiment.toml").read_text())["data"]["num_clients"]
    shards = [dict(a.lstrip("-").split("=", 1) for a in services[k]["command"][1:])
              for k in sorted(services) if k.startswith("client-")]
    assert {int(s["num-clients"]) for s in shards} == {n}
    covered = [c for s in shards for c in contiguous(n, parse_shard(s["shard"])[1])[parse_shard(s["shard"])[0]]]
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
    for bad in ("4/4", "client/2", "1", "-1/2", "fedsim-client/2"):
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
