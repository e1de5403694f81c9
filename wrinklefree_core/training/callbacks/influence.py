"""InfluenceRemixing: every `training.influence.every_n_steps` steps, re-weight the data sources by their
DataInf influence on a probe set (formula and update: data/influence.py; docs/influence.md).

One update, at the end of step N:
    probe rows      -> v, the embedding/lm_head gradient of their mean loss   (data/example_grads.py)
    rows per source -> per-example gradients g_k, DataInf helpfulness s_k, mean per source
    weights         <- exponentiated update of the current weights, clamped, normalised, EMA-smoothed
    metrics         data/weight/<source>, data/influence/<source>, data/influence_seconds

Design choices:
- The probe rows are fixed for the run (the first held-out rows, see `probe_rows`), so successive
  scores differ only because the model changed. The scored training rows are drawn from each
  source's packed rows with a generator keyed by (seed, step, source): a pure function of the step,
  so nothing about them needs saving and the sampler's own stream is not touched.
- Exact resume. The loader has already drawn step N+1's batch when step N ends (prefetch), so the
  new weights take effect at the sampler's next draw, the batch of step N+2, scheduled by draw
  number (MixtureSampler.schedule_weights). The checkpoint of step N holds the sampler state of the
  batch trained on (old weights), so this callback's own state keeps the scheduled weights and
  re-schedules them on load: the resumed run then draws step N+1 with the old weights and N+2 with
  the new ones, as the uninterrupted run did. Listed before the checkpoint callback, so a step's
  update is in that step's checkpoint.
- Scoring runs the student in eval mode under the trainer's precision context (bf16 autocast on GPU)
  and restores its mode; it computes no parameter gradients and draws from no global RNG, so
  training is unchanged except through the weights.
- Data parallel: every rank scores the same rows; rank 0's weights are broadcast so the ranks'
  samplers can never diverge through rounding.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from wrinklefree_core.config.training import InfluenceConfig
from wrinklefree_core.data.example_grads import example_gradients, mean_gradients
from wrinklefree_core.data.influence import datainf_scores, source_scores, update_weights
from wrinklefree_core.data.packing import position_ids_from_eos
from wrinklefree_core.training.module import log_to_loggers

PROBE_VALIDATION = "validation"


def probe_rows(val_sets: dict[str, torch.Tensor], probe: str, count: int) -> torch.Tensor:
    """The first `count` held-out rows: of source `probe`, or of every source interleaved for 'validation'."""
    if probe != PROBE_VALIDATION:
        if probe not in val_sets:
            raise ValueError(f"training.influence.probe={probe!r} is neither 'validation' nor a data source {sorted(val_sets)}")
        return val_sets[probe][:count]
    rows: list[torch.Tensor] = []
    depth = max(len(r) for r in val_sets.values())
    for i in range(depth):  # round robin, so a short probe still covers every source
        rows.extend(r[i] for r in val_sets.values() if i < len(r))
    return torch.stack(rows[:count])


def sampled_rows(rows: torch.Tensor, count: int, seed: int, step: int, name: str) -> torch.Tensor:
    """`count` distinct rows (all when fewer), chosen by a generator keyed by (seed, step, source name)."""
    digest = hashlib.sha256(f"influence/{seed}/{step}/{name}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return rows[torch.randperm(rows.shape[0], generator=gen)[:count]].long()


class InfluenceRemixing(Callback):
    """Moves the mixture weights toward the sources that help the probe loss (module docstring)."""

    def __init__(self, cfg: InfluenceConfig, datamodule, seed: int = 0):
        self.cfg = cfg
        self.datamodule = datamodule
        self.seed = seed
        self.scheduled: dict[str, Any] | None = None  # {"at_draw": int, "weights": {source: w}}
        self.last_scores: dict[str, float] = {}

    @property
    def sampler(self):
        return self.datamodule.mixture

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.datamodule.setup("fit")
        names = self.sampler.names
        lo, hi = self.cfg.min_weight, self.cfg.max_weight
        if lo * len(names) > 1 or hi * len(names) < 1:
            raise ValueError(
                f"training.influence: {len(names)} source weights cannot sum to 1 within [{lo}, {hi}]; "
                "adjust min_weight/max_weight"
            )
        self._probe = probe_rows(self.datamodule.val_sets, self.cfg.probe, self.cfg.probe_batches * self.datamodule.batch_size)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step == 0:  # the starting point of the weight curves
            log_to_loggers(trainer, {f"data/weight/{n}": w for n, w in self.sampler.weights.items()})

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.cfg.every_n_steps or len(self.sampler.names) < 2:
            return
        started = time.perf_counter()
        scores = self.scores(trainer, pl_module, step)
        current = torch.tensor([self.sampler.weights[n] for n in self.sampler.names], dtype=torch.float64)
        new = update_weights(
            current,
            scores,
            step_size=self.cfg.step_size,
            min_weight=self.cfg.min_weight,
            max_weight=self.cfg.max_weight,
            smoothing=self.cfg.smoothing,
        )
        new = trainer.strategy.broadcast(new, src=0)
        weights = {n: float(w) for n, w in zip(self.sampler.names, new)}
        self.scheduled = {"at_draw": self.sampler.draws, "weights": weights}
        self.sampler.schedule_weights(weights, self.sampler.draws)
        self.last_scores = {n: float(s) for n, s in zip(self.sampler.names, scores)}
        metrics = {f"data/weight/{n}": w for n, w in weights.items()}
        metrics.update({f"data/influence/{n}": s for n, s in self.last_scores.items()})
        metrics["data/influence_seconds"] = time.perf_counter() - started
        log_to_loggers(trainer, metrics)

    def scores(self, trainer: Trainer, pl_module: LightningModule, step: int) -> torch.Tensor:
        """Mean DataInf helpfulness of each source's sampled rows on the probe (float64 [sources])."""
        model = pl_module.student
        device = pl_module.device
        eos = self.datamodule.tokenizer.eos_token_id
        size = self.datamodule.batch_size
        params = self.cfg.params

        def batches(rows: torch.Tensor):
            for chunk in rows.split(size):
                ids = chunk.to(device)
                yield ids, position_ids_from_eos(ids, eos)

        was_training = model.training
        model.eval()
        try:
            with trainer.precision_plugin.forward_context():
                probe = mean_gradients(model, list(batches(self._probe)), params)
                grads: list[list[torch.Tensor]] = []
                source: list[torch.Tensor] = []
                for i, name in enumerate(self.sampler.names):
                    rows = sampled_rows(self.sampler.rows(name), self.cfg.source_batches * size, self.seed, step, name)
                    for ids, positions in batches(rows):
                        grads.append(example_gradients(model, ids, positions, params))
                        source.append(torch.full((ids.shape[0],), i, dtype=torch.long))
        finally:
            model.train(was_training)
        layers = [torch.cat([g[layer] for g in grads]) for layer in range(len(probe))]
        per_example = datainf_scores(layers, probe, self.cfg.damping)
        return source_scores(per_example, torch.cat(source), len(self.sampler.names))

    def state_dict(self) -> dict[str, Any]:
        return {"scheduled": self.scheduled, "last_scores": dict(self.last_scores)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The datamodule (restored first) holds the sampler state of the last trained batch; the weights
        # scheduled after it are re-applied at the same draw number (module docstring).
        self.scheduled = state_dict.get("scheduled")
        self.last_scores = dict(state_dict.get("last_scores") or {})
        if self.scheduled is not None:
            self.datamodule.setup("fit")
            self.sampler.schedule_weights(self.scheduled["weights"], self.scheduled["at_draw"])
