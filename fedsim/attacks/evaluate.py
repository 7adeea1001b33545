"""Attack x defense x batch-size evaluation: one result row per cell.

With ``state = "round-R"`` the model is not at initialisation: one FedAvg federation per (model,
defense) trains ``max(R, utility.rounds)`` rounds with the defense in place (``utility.*`` sets
its clients), the victims train on its global model after round R, and the row's utility is that
run's final accuracy, so leakage and utility come from the same run.

A cell runs ``trials`` times (rows: PSNR over all images, and the 95% t-interval of the mean over
the trials' mean PSNRs, ``psnr_ci95``). Each trial draws the victims' images (the same images for every
attack and defense at that batch size and trial), builds the attack's model at initialisation
(state "init": the optimistic case, stated in every row), lets the clients train and send through
the defense (:func:`fedsim.attacks.observations.observe`), runs the attack on the observation
alone, and scores the reconstruction against the ground truth after Hungarian matching. Every row
carries the no-information floor of its own images beside its PSNR.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.params import ParamSpec
from ..core.stats import ci95
from ..local.reference import job_seed
from . import metrics
from .analytic import analytic_fc
from .config import AttackRunConfig
from .cpa import SCALINGS, PixelPrior, cpa
from .imprint import imprint, imprint_model
from .data import Pool, load_pool, sample_clients
from .defenses import DefenseConfig, dp_epsilon
from .dlg import dlg
from .inverting import ig, sme, unrolled
from ..inversion.labels import recover_labels
from ..inversion.observation import Observation
from .models import build_attack_model
from .observations import observe
from .utility import train_federation

__all__ = ["Example", "evaluate", "run_attack"]


@dataclass
class Example:
    """Images of one cell for the figure: truths and matched reconstructions in pixel space."""

    title: str
    truth: list = field(default_factory=list)
    recon: list = field(default_factory=list)
    psnr: list = field(default_factory=list)
    label: list = field(default_factory=list)


def run_attack(attack: str, model, obs: Observation, pool: Pool, cfg: AttackRunConfig,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, str, dict]:
    """Run ``attack`` on ``obs``: ``(x_hat model-input space, labels, label method, info)``."""
    shape, classes, box = pool.input_shape, pool.num_classes, pool.normalizer.box
    fam = cfg.attack.family(attack)
    if attack == "dlg":
        x, y, info = dlg(model, obs, input_shape=shape, num_classes=classes, cfg=fam, gen=gen)
        return x, y, "joint", info
    labels = recover_labels(model, obs, shape, gen)
    how = "idlg" if obs.num_samples == 1 else "counts"
    if attack == "idlg":
        x, _, info = dlg(model, obs, input_shape=shape, num_classes=classes, cfg=fam, gen=gen, labels=labels)
    elif attack == "ig":
        x, info = ig(model, obs, input_shape=shape, labels=labels, cfg=fam, gen=gen, box=box)
    elif attack in ("sme", "ig-update"):  # ig-update: the family has alpha fixed at 0
        x, info = sme(model, obs, input_shape=shape, labels=labels, cfg=fam, gen=gen, box=box)
    elif attack == "unrolled":
        x, info = unrolled(model, obs, input_shape=shape, labels=labels, cfg=fam, gen=gen, box=box)
    elif attack == "cpa":
        x, info = cpa(model, obs, input_shape=shape, cfg=fam, gen=gen, box=box,
                      prior=PixelPrior.of(pool.images))
    elif attack == "analytic":
        x, info = analytic_fc(model, obs, input_shape=shape), {}
    elif attack == "imprint":
        x, info = imprint(model, obs, input_shape=shape)
    else:
        raise ValueError(f"unknown attack {attack!r}")
    return x, labels, how, info


def _victim_training(cfg: AttackRunConfig, attack: str) -> tuple[int, int, float, str]:
    """``(local steps, local batch size, lr, view)`` of the victims an attack observes: the multi-step
    attacks (SME, unrolled) see the weight update of their own family's local training, the others
    the gradient of ``[client]``'s."""
    if attack in ("sme", "ig-update", "unrolled"):
        fam = cfg.attack.family(attack)
        return fam.local_steps, fam.local_batch_size, fam.client_lr, "update"
    c = cfg.client
    return c.local_steps, c.local_batch_size, c.lr, "gradient"


def _observe(attack: str, model, params, clients, pool: Pool, cfg: AttackRunConfig,
             defense: DefenseConfig, gen: torch.Generator, seed: int) -> Observation:
    in_model = [(pool.normalizer.to_model(u), y) for u, y in clients]
    steps, local_b, lr, view = _victim_training(cfg, attack)
    return observe(model, params, in_model, lr=lr, local_steps=steps,
                   local_batch_size=local_b, view=view, defense=defense, gen=gen, seed=seed)


def _cell(cfg: AttackRunConfig, pool: Pool, attack: str, defense: DefenseConfig, b: int,
          floor_value: np.ndarray, bar, federation) -> tuple[dict, Example]:
    """``federation(model_name, defense) -> (utility, params after round R or None)``: the run that
    gives ``state = "round-R"`` its model and the row its utility."""
    model_name = cfg.model_for(attack)
    at_round, utility = None, None
    # the imprint attacker sends its own malicious model whatever the federation's state: its rows say so
    state = "malicious model" if attack == "imprint" else cfg.state
    if cfg.train_rounds and attack != "imprint":
        if cfg.data.name == "photos":
            raise ValueError("state 'round-R' trains a federation: the photos pool has no training split")
        utility, at_round = federation(model_name, defense)
    example = Example(f"{attack} / {defense.display}")
    psnrs, ssims, ms_ssims, label_accs, truths, runtime, threat, how = [], [], [], [], [], 0.0, "", ""
    trial_psnr = []  # each trial's mean PSNR: trials are the independent repetitions of a cell
    steps, steps_run = 1, []
    for trial in range(cfg.trials):
        data_gen = torch.Generator().manual_seed(job_seed(cfg.seed, trial, b))
        clients = sample_clients(pool, defense.clients, b, data_gen, unique_labels=cfg.data.unique_labels)
        if attack == "imprint":  # the malicious server's model: bins from the prior (public data of the kind)
            model = imprint_model(pool.input_shape, pool.num_classes, cfg.attack.imprint.bins,
                                  pool.normalizer.to_model(pool.images), seed=job_seed(cfg.seed, trial, 10_000))
        else:
            model = build_attack_model(model_name, pool.input_shape, pool.num_classes,
                                       seed=cfg.seed if at_round is not None else job_seed(cfg.seed, trial, 10_000))
        if at_round is not None:  # the attacker holds the same global model the victims train on
            model.load_state_dict(ParamSpec.of(model).unflatten(at_round))
        params = ParamSpec.of(model).flatten(model.state_dict())
        noise_gen = torch.Generator().manual_seed(job_seed(cfg.seed, trial, 20_000 + b))
        obs = _observe(attack, model, params, clients, pool, cfg, defense, noise_gen, cfg.seed + trial)
        threat, steps = obs.threat, obs.local_steps
        t0 = time.perf_counter()
        x_hat, y_hat, how, info = run_attack(attack, model, obs, pool, cfg,
                                          torch.Generator().manual_seed(job_seed(cfg.seed, trial, 30_000 + b)))
        runtime += time.perf_counter() - t0
        if "steps" in info:
            steps_run.append(info["steps"])
        truth = torch.cat([u for u, _ in clients])
        true_y = torch.cat([y for _, y in clients])
        recon = pool.normalizer.to_pixels(x_hat.detach()).clamp(0, 1)
        order = metrics.match(recon, truth)
        keep = order >= 0
        matched = recon[order[keep]]
        p = metrics.psnr(matched, truth[keep])
        psnrs.extend(p.tolist())
        trial_psnr.append(float(p.mean()))
        if min(truth.shape[-2:]) >= 11:
            ssims.extend(metrics.ssim(matched, truth[keep]).tolist())
        ms = metrics.ms_ssim(matched, truth[keep])
        if ms is not None:
            ms_ssims.extend(ms.tolist())
        label_accs.append(metrics.label_accuracy(y_hat.tolist(), true_y.tolist()))
        truths.append(truth)
        for j in range(b):  # the first client's images: the same columns in every cell
            if len(example.truth) < cfg.report.max_images and order[j] >= 0:
                example.truth.append(truth[j])
                example.recon.append(recon[order[j]])
                example.psnr.append(float(metrics.psnr(recon[order[j]][None], truth[j][None])[0]))
                aligned = attack not in ("cpa", "analytic") and len(y_hat) == len(recon)
                example.label.append(int(y_hat[order[j]]) if aligned else None)
        if bar is not None:
            bar.set_postfix_str(f"{attack}/{defense.display}/B={b} psnr={float(p.mean()):.1f}")
            bar.update(1)
    all_truth = torch.cat(truths)
    floor_row = float(metrics.constant_psnr(floor_value, all_truth).mean())
    arr = np.asarray(psnrs)
    eps = _epsilon(defense, cfg, attack, b, steps)
    row = {
        "dataset": cfg.data.name, "model": model_name, "state": state, "threat": threat,
        "attack": attack, "defense": defense.display, "defense_name": defense.name,
        "defense_params": defense.params(), "clients": defense.clients, "batch_size": b,
        "num_images": defense.clients * b, "local_steps": steps,
        "client_lr": _victim_training(cfg, attack)[2],
        "labels": how, "trials": cfg.trials, "seed": cfg.seed,
        "variant": SCALINGS[cfg.attack.cpa.scale_from] if attack == "cpa" else None,
        "scale_from": info.get("scale_from") if attack == "cpa" else None,
        "label_accuracy": float(np.mean(label_accs)),
        "psnr_mean": float(arr.mean()), "psnr_std": float(arr.std()),
        "psnr_median": float(np.median(arr)), "psnr_max": float(arr.max()),
        "psnr_trial_means": trial_psnr, "psnr_ci95": list(ci95(trial_psnr)) if len(trial_psnr) > 1 else None,
        "ssim_mean": float(np.mean(ssims)) if ssims else None,
        "ms_ssim_mean": float(np.mean(ms_ssims)) if ms_ssims else None,
        "lpips_mean": None,  # LPIPS needs downloaded network weights: unavailable offline
        "frac_above_floor6": float((arr >= floor_row + 6).mean()),
        # images reconstructed at or above that PSNR, over all victims' images (an unmatched one failed)
        "frac_recovered": float((arr >= cfg.report.recovered_db).sum() / len(all_truth)),
        "floor_psnr": floor_row,
        "epsilon": eps if eps is not None and math.isfinite(eps) else None,
        "delta": defense.delta if defense.name in ("dp", "dp-sgd", "dp-mf") else None,
        "utility_accuracy": utility, "runtime": runtime, "error": None,
        # the optimiser's steps (DLG: evaluations) actually run, mean over trials: below the budget when the
        # convergence stop (attack.<name>.plateau_steps) ended it, or L-BFGS converged
        "steps_run": float(np.mean(steps_run)) if steps_run else None,
    }
    return row, example


def _epsilon(defense: DefenseConfig, cfg: AttackRunConfig, attack: str, b: int, steps: int) -> float | None:
    """Client-level epsilon of one release (dp, dp-mf), or dp-sgd's example-level epsilon over its steps
    at the sampling rate of the minibatches the victim actually drew."""
    if defense.name in ("dp", "dp-mf"):
        return dp_epsilon(defense.noise_multiplier, defense.delta)
    if defense.name == "dp-sgd":
        from ..local.example_dp import example_epsilon

        q = min(1.0, (_victim_training(cfg, attack)[1] or b) / b)
        return example_epsilon(defense.noise_multiplier, q, steps, defense.delta)
    return None


def evaluate(cfg: AttackRunConfig, *, progress: bool = True, on_row=None, federations: dict | None = None
             ) -> tuple[list[dict], list[Example], dict]:
    """Run every cell of ``cfg``; returns ``(rows, examples, meta)``. ``on_row(rows, meta)`` is
    called after each cell (e.g. to save partial results). ``federations`` caches the training runs
    across calls that share their data, utility and state settings (``fedsim bench attack``)."""
    from tqdm import tqdm

    torch.set_num_threads(cfg.threads)
    pool = load_pool(cfg.data.name, cfg.data.dir or None, size=cfg.data.pool, seed=cfg.seed)
    floor_value = metrics.floor_constant(pool.images)
    meta = {"dataset": cfg.data.name, "pool": len(pool.labels),
            "floor_constant": [float(v) for v in floor_value],
            "floor_psnr_dataset": float(metrics.constant_psnr(floor_value, pool.images).mean())}
    cells = [(a, d, b) for a in cfg.attacks for d in cfg.defenses for b in cfg.batch_sizes]
    rows, examples = [], []
    federations = {} if federations is None else federations

    def federation(model_name: str, defense: DefenseConfig) -> tuple[float | None, torch.Tensor | None]:
        """One FedAvg run per (model, defense), cached: its final test accuracy (the utility column)
        and, for ``state = "round-R"``, its global model after round R (leakage and utility of one run)."""
        # the defense as the clients apply it: an adaptive attacker changes nothing in training
        key = (model_name, dataclasses.replace(defense, adaptive=False, label="").display)
        if key not in federations:
            u = cfg.utility
            federations[key] = train_federation(
                cfg.data.name, cfg.data.dir or None, model_name, defense, rounds=max(u.rounds, cfg.train_rounds),
                clients=u.clients, samples_per_client=u.samples_per_client, local_steps=u.local_steps,
                batch_size=u.batch_size, lr=u.lr, eval_samples=u.eval_samples, seed=cfg.seed,
                keep_round=cfg.train_rounds)
        return federations[key]

    # a bar on a terminal; in a log file (CI, nohup) plain lines instead of carriage returns
    on_terminal = sys.stderr.isatty()
    bar = tqdm(total=len(cells) * cfg.trials, desc="attacks", disable=not (progress and on_terminal),
               dynamic_ncols=True)
    try:
        for attack, defense, b in cells:
            try:
                row, example = _cell(cfg, pool, attack, defense, b, floor_value, bar, federation)
            except (ValueError, RuntimeError, NotImplementedError) as exc:
                row = {"dataset": cfg.data.name, "model": cfg.model_for(attack), "attack": attack,
                       "defense": defense.display, "defense_name": defense.name,
                       "defense_params": defense.params(), "clients": defense.clients,
                       "batch_size": b, "num_images": defense.clients * b, "error": str(exc),
                       "floor_psnr": None, "runtime": 0.0}
                example = Example(f"{attack} / {defense.display}")
                bar.update(cfg.trials)
            row["floor_psnr_dataset"] = meta["floor_psnr_dataset"]
            # the utility column at initialisation (a round-R row has its own run's); the photos pool has
            # no test split and the imprint model is the attacker's, not one a federation trains
            if (cfg.utility.rounds and row.get("error") is None and not cfg.train_rounds
                    and cfg.data.name != "photos" and row["model"] != "imprint"):
                row["utility_accuracy"] = federation(row["model"], defense)[0]
            example.title = f"{attack} / {defense.display} / B={b}"
            if progress and not on_terminal:
                print(f"attacks: cell {len(rows) + 1}/{len(cells)} done ({example.title})", file=sys.stderr, flush=True)
            rows.append(row)
            examples.append(example)
            if on_row is not None:
                on_row(rows, meta)
    finally:
        bar.close()
    return rows, examples, meta
