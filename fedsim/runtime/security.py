"""TLS material and node tokens for fedsim's gRPC runtime.

``fedsim certs --out DIR`` writes a self-signed CA (``ca.pem``), a server certificate signed by it
(``server.pem``, ``server.key``; SANs 127.0.0.1, ::1, localhost plus ``--host`` names) and, with
``--tokens N``, one token file per node (``node-<i>.token``) and the server's list (``tokens.txt``).

Token list format, one node per line: ``NAME TOKEN [CLIENTS]``; ``CLIENTS`` (``0-49`` or
``1,3,5-7``) limits which virtual clients that node may register; without it any client. Tokens are
compared in constant time; a registration with an unknown token is refused and logged.
"""

from __future__ import annotations

import datetime
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import grpc

CA, SERVER_CERT, SERVER_KEY, TOKENS = "ca.pem", "server.pem", "server.key", "tokens.txt"
NODE_TOKENS = "node-tokens.txt"  # every node's NAME TOKEN, one per line
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def parse_clients(spec: str) -> list[int]:
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]`` (sorted, unique)."""
    out: set[int] = set()
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"bad client list '{spec}': expected ids or ranges like 0-49,60") from None
        if a < 0 or b < a:
            raise ValueError(f"bad client range '{part}' in '{spec}'")
        out.update(range(a, b + 1))
    if not out:
        raise ValueError(f"empty client list '{spec}'")
    return sorted(out)


def format_clients(ids: list[int]) -> str:
    """Inverse of ``parse_clients`` (contiguous runs become ranges)."""
    ids, runs = sorted(set(ids)), []
    for i in ids:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


def host_of(address: str) -> str:
    return address.rsplit(":", 1)[0].strip("[]") if ":" in address else address


def is_loopback(address: str) -> bool:
    host = host_of(address)
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class NodeToken:
    name: str
    token: str
    clients: frozenset[int]  # the only clients this token may register


class TokenBook:
    """The server's list of node tokens."""

    def __init__(self, entries: list[NodeToken]):
        self.entries = entries

    @classmethod
    def load(cls, path: str | Path) -> "TokenBook":
        entries = []
        for n, fields in _token_lines(path):
            if len(fields) != 3:
                raise ValueError(f"{path}:{n}: expected 'NAME TOKEN CLIENTS' (a token without its client range "
                                 "would let one node answer for any other's clients)")
            entries.append(NodeToken(fields[0], fields[1], frozenset(parse_clients(fields[2]))))
        if not entries:
            raise ValueError(f"{path}: no tokens")
        return cls(entries)

    def check(self, token: str) -> NodeToken | None:
        found = None
        for entry in self.entries:  # no early exit: constant time in the position of the match
            if hmac.compare_digest(entry.token.encode(), str(token).encode()):
                found = entry
        return found


def new_token() -> str:
    return secrets.token_urlsafe(24)


def write_tokens(out: str | Path, n: int, ranges: list[list[int]]) -> list[Path]:
    """Write ``node-<i>.token`` and ``node-tokens.txt`` (every node's ``NAME TOKEN``) for the nodes, and
    ``tokens.txt`` for the server, all mode 600; ``ranges[i]`` binds node i to its clients
    (a token is never valid for any client: one node could take over another's)."""
    if len(ranges) != n or not all(ranges):
        raise ValueError(f"every one of the {n} tokens needs its own non-empty client range")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines, files = [], []
    for i in range(n):
        token = new_token()
        path = out / f"node-{i}.token"
        _write_private(path, token + "\n")
        files.append(path)
        lines.append(f"node-{i} {token} {format_clients(ranges[i])}")
    _write_private(out / TOKENS, "\n".join(lines) + "\n")
    # every node's token in one file, for deployments that hand all nodes one secret (k8s Indexed Job)
    _write_private(out / NODE_TOKENS, "".join(" ".join(line.split()[:2]) + "\n" for line in lines))
    return files


def _token_lines(path: str | Path) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` of every non-empty line of a token file, ``#`` comments removed."""
    lines = ((n, line.split("#", 1)[0].split()) for n, line in enumerate(Path(path).read_text().splitlines(), 1))
    return [(n, fields) for n, fields in lines if fields]


def count_tokens(path: str | Path) -> int:
    """How many nodes a ``NAME TOKEN`` list names."""
    return sum(1 for _, fields in _token_lines(path) if len(fields) >= 2)


def read_token_list(path: str | Path, name: str) -> str:
    """The token of node ``name`` from a ``NAME TOKEN`` list (``node-tokens.txt``)."""
    for _, fields in _token_lines(path):
        if len(fields) >= 2 and fields[0] == name:
            return fields[1]
    raise ValueError(f"{path} has no token for {name}")


def read_token(path: str | Path) -> str:
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


def make_certs(out: str | Path, hosts: list[str] = (), days: int = 30) -> Path:
    """Self-signed CA + server certificate (EC P-256), valid for ``days``; the server key mode 600."""
    if days < 1:
        raise ValueError(f"certificate lifetime must be >= 1 day, got {days}")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedsim test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names = {"localhost", *[h for h in hosts if h]}
    sans = [x509.DNSName(h) for h in sorted(names) if not _is_ip(h)]
    sans += [x509.IPAddress(ipaddress.ip_address(h)) for h in sorted(names | {"127.0.0.1", "::1"}) if _is_ip(h)]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedsim server")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    _write_atomic(out / CA, ca.public_bytes(pem), 0o644)
    _write_atomic(out / SERVER_CERT, cert.public_bytes(pem), 0o644)
    _write_private(out / SERVER_KEY, key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()).decode())
    return out


def server_credentials(tls_dir: str | Path) -> grpc.ServerCredentials:
    d = Path(tls_dir)
    return grpc.ssl_server_credentials([((d / SERVER_KEY).read_bytes(), (d / SERVER_CERT).read_bytes())])


def channel_credentials(tls_dir: str | Path) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=(Path(tls_dir) / CA).read_bytes())


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _write_private(path: Path, text: str) -> None:
    """A secret: mode 600 whatever was there before."""
    _write_atomic(path, text.encode(), 0o600)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write a fresh file next to ``path`` (never through a symlink: O_EXCL | O_NOFOLLOW) and rename it
    over ``path``: a symlink or an older file with wider permissions is replaced, not written through."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)  # the umask may have narrowed it; never widened
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
