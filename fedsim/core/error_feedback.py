"""Error feedback: the client and server halves of EF21 and of the classic EF14, as pure functions.

EF21 (Richtarik, Sokolov, Fatkhullin, NeurIPS 2021, arXiv 2106.05203, Algorithm 1): client i keeps an
estimate g_i of its gradient and sends the compressed *difference* c_i = C(grad_i - g_i), then both
sides set g_i <- g_i + c_i; the server keeps g = (1/n) sum_i g_i and steps x <- x - gamma g.
With partial participation (EF21-PP, Fatkhullin et al., arXiv 2110.03294, Algorithm 4) absent
clients keep g_i and the server's g stays the mean over *all* n clients.
EF21-W (Richtarik, Gasanov, Burlachenko, arXiv 2402.10774, Algorithm 1) is EF21 on the reweighted
targets grad_i / (n w_i) with g = sum_i w_i g_i; ``ef21_step`` serves both through ``target``.

EF14 (Seide et al. 2014; Stich et al., arXiv 1809.07599): client i keeps the residual e_i, sends
m_i = C(e_i + p_i) for its proposed step p_i and keeps e_i <- e_i + p_i - m_i.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fedsim.core.compression import Compressor

Compress = Callable[[torch.Tensor], torch.Tensor]


def ef21_step(g_i: torch.Tensor, target: torch.Tensor, compress: Compress) -> tuple[torch.Tensor, torch.Tensor]:
    """Client half of EF21: returns ``(c_i, g_i + c_i)`` with c_i = C(target - g_i)."""
    c = compress(target - g_i)
    return c, g_i + c


def ef14_step(e_i: torch.Tensor, proposal: torch.Tensor, compress: Compress) -> tuple[torch.Tensor, torch.Tensor]:
    """Client half of EF14: returns ``(m_i, e_i + proposal - m_i)`` with m_i = C(e_i + proposal)."""
    corrected = e_i + proposal
    m = compress(corrected)
    return m, corrected - m


def ef21_server(g: torch.Tensor, messages: torch.Tensor, num_clients: int,
                noise: torch.Tensor | None = None) -> torch.Tensor:
    """Server half of EF21(-PP): g + (1/n) sum of the received c_i (``messages`` [K, D], any K <= n);
    ``noise`` [D] (user-level DP) is added to the sum before the division."""
    total = messages.sum(0)
    return g + (total if noise is None else total + noise.to(total.dtype)) / num_clients


def compress_rows(compressor: Compressor, v: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """``compressor`` applied to each row of ``v`` [K, D], equal to the row-by-row loop (randomness is
    drawn row by row, in order). Top-k runs as one batched stable sort with ``top_k_indices``' tie
    rule (larger magnitude first, then lower index); the other compressors loop over the rows."""
    if compressor.name == "top-k" and compressor.k < compressor.dim:
        idx = torch.sort(v.abs(), dim=-1, descending=True, stable=True).indices[:, : compressor.k]
        return torch.zeros_like(v).scatter_(1, idx, v.gather(1, idx))
    if compressor.name in ("identity", "top-k"):  # Top-d keeps everything
        return v.clone()
    return torch.stack([compressor(row, gen) for row in v]) if len(v) else v.clone()
