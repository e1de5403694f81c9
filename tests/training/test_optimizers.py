"""Optimizer construction: parameter groups, one useful step each, and bit-exact resume of MuonWithAdamW."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch.optim import AdamW

from tests.models.tiny import tiny_model, token_ids
from wrinklefree_core.config.training import OptimizerConfig, ScheduleConfig
from wrinklefree_core.models.convert import convert_to_bitnet
from wrinklefree_core.models.lrc import add_lrc_adapters
from wrinklefree_core.config.bitnet import BitNetSettings
from wrinklefree_core.training.optimizers import MuonWithAdamW, build_optimizer, fused_adamw_supported, split_parameters
from wrinklefree_core.training.schedule import build_scheduler

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def bitnet(arch: str = "llama-untied", seed: int = 0) -> torch.nn.Module:
    return convert_to_bitnet(tiny_model(arch, seed), BitNetSettings()).train()


def loss_of(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=ids).loss


def expected_muon_names(layers: int = 2) -> list[str]:
    blocks = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn"}
    return [f"model.layers.{i}.{blocks.get(p, 'mlp')}.{p}.weight" for i in range(layers) for p in PROJECTIONS]


def test_untied_llama_groups():
    names = split_parameters(bitnet("llama-untied")).names()
    assert names["muon"] == expected_muon_names()
    # An untied lm_head is an ordinary projection for AdamW: decayed, never Muon.
    assert names["decay"] == ["lm_head.weight"]
    no_decay = set(names["no_decay"])
    assert "model.embed_tokens.weight" in no_decay and "model.norm.weight" in no_decay
    assert {f"model.layers.{i}.self_attn.o_proj.sub_norm.weight" for i in range(2)} <= no_decay
    assert {f"model.layers.{i}.mlp.down_proj.sub_norm.weight" for i in range(2)} <= no_decay
    assert {f"model.layers.{i}.input_layernorm.weight" for i in range(2)} <= no_decay


def test_tied_embedding_appears_once_without_decay():
    names = split_parameters(bitnet("llama-tied")).names()
    assert names["decay"] == []
    assert "model.embed_tokens.weight" in names["no_decay"]
    assert not any("lm_head" in n for group in names.values() for n in group)


def test_biases_and_qk_norms_go_to_no_decay():
    qwen2 = split_parameters(bitnet("qwen2")).names()
    assert {f"model.layers.0.self_attn.{p}.bias" for p in ("q_proj", "k_proj", "v_proj")} <= set(qwen2["no_decay"])
    assert not any(n.endswith(".bias") for n in qwen2["muon"] + qwen2["decay"])
    qwen3 = split_parameters(bitnet("qwen3")).names()
    assert {"model.layers.0.self_attn.q_norm.weight", "model.layers.0.self_attn.k_norm.weight"} <= set(qwen3["no_decay"])


def test_adamw_mode_puts_projections_in_decay_and_tags_groups():
    model = bitnet("llama-untied")
    opt = build_optimizer(model, OptimizerConfig(type="adamw", lr=1e-3, weight_decay=0.1))
    assert isinstance(opt, AdamW)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert set(by_name) == {"adamw_decay", "adamw_no_decay"}
    assert by_name["adamw_decay"]["weight_decay"] == 0.1 and by_name["adamw_no_decay"]["weight_decay"] == 0.0
    assert all(g["group_kind"] == "adamw" and g["peak_lr"] == 1e-3 for g in opt.param_groups)
    decay_ids = {id(p) for p in by_name["adamw_decay"]["params"]}
    assert id(model.model.layers[0].self_attn.q_proj.weight) in decay_ids
    assert id(model.lm_head.weight) in decay_ids


def test_muon_groups_and_peak_lrs():
    opt = build_optimizer(bitnet(), OptimizerConfig(type="muon", lr=1e-3, muon_lr=0.02, weight_decay=0.1))
    assert isinstance(opt, MuonWithAdamW)
    kinds = [(g["group_kind"], g["name"], g["peak_lr"], g["weight_decay"]) for g in opt.param_groups]
    assert kinds == [("muon", "muon", 0.02, 0.1), ("adamw", "adamw_decay", 1e-3, 0.1), ("adamw", "adamw_no_decay", 1e-3, 0.0)]
    # The outer groups are the inner optimizers' own dicts: a scheduler writing one writes the other.
    assert opt.param_groups[0] is opt.inner["muon"].param_groups[0]
    assert opt.param_groups[1] is opt.inner["adamw"].param_groups[0]


def test_trainable_filter_and_frozen_parameters():
    model = bitnet()
    model.model.embed_tokens.weight.requires_grad_(False)
    names = split_parameters(model, lambda name, p: "layers.0." in name or "embed" in name).names()
    everything = [n for group in names.values() for n in group]
    assert everything and all("layers.0." in n for n in everything)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, OptimizerConfig(type="muon"), lambda name, p: False)


def test_lrc_adapters_stay_on_adamw():
    model = add_lrc_adapters(bitnet(), 0.25)
    names = split_parameters(model).names()
    assert names["muon"] == expected_muon_names()
    assert any(n.endswith("lrc_U") for n in names["decay"]) and any(n.endswith("lrc_V") for n in names["decay"])


@pytest.mark.parametrize("kind", ["adamw", "muon", "muonclip"])
def test_one_step_lowers_the_loss(kind):
    model = bitnet()
    ids = token_ids(batch=2, seq=16)
    opt = build_optimizer(model, OptimizerConfig(type=kind, lr=1e-3, muon_lr=0.02, qk_clip_tau=100.0))
    before = loss_of(model, ids)
    before.backward()
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        after = loss_of(model, ids)
    assert after.item() < before.item()
    assert all(p.grad is None for p in model.parameters())


def test_muonclip_step_clips_a_hot_head():
    model = bitnet()
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[:16] *= 500.0
    opt = build_optimizer(model, OptimizerConfig(type="muonclip", qk_clip_tau=1.0))
    loss_of(model, token_ids()).backward()
    opt.step()
    assert opt.last_qk_clip["heads_clipped"] >= 1
    assert opt.last_qk_clip["max_logit"] > 1.0
    opt.qk_clip.remove()


def _train(steps: int, split_at: int | None = None) -> torch.nn.Module:
    """Run `steps` muon steps with a WSD schedule; at `split_at`, checkpoint through bytes and rebuild everything."""
    cfg = OptimizerConfig(type="muon", lr=1e-3, muon_lr=0.02, weight_decay=0.1)
    schedule = ScheduleConfig(warmup_fraction=0.25, decay_fraction=0.5, min_lr_ratio=0.1)

    def fresh(seed: int):
        model = bitnet(seed=seed)
        opt = build_optimizer(model, cfg)
        return model, opt, build_scheduler(opt, schedule, steps)

    model, opt, sched = fresh(seed=0)
    for step in range(steps):
        if step == split_at:
            buffer = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
            buffer.seek(0)
            saved = torch.load(buffer, weights_only=False)
            # A different seed proves that everything comes from the checkpoint.
            model, opt, sched = fresh(seed=1)
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            sched.load_state_dict(saved["sched"])
        ids = token_ids(batch=2, seq=12, seed=10 + step)
        loss_of(model, ids).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model


def test_state_dict_round_trip_is_bit_exact():
    uninterrupted = _train(4)
    resumed = _train(4, split_at=2)
    for (name, a), (_, b) in zip(uninterrupted.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), name


def test_state_view_and_load_refreshes_groups():
    model = bitnet()
    opt = build_optimizer(model, OptimizerConfig(type="muon"))
    loss_of(model, token_ids()).backward()
    opt.step()
    q = model.model.layers[0].self_attn.q_proj.weight
    assert "momentum_buffer" in opt.state[q] and "exp_avg" in opt.state[model.lm_head.weight]
    assert len(opt.state) == sum(len(o.state) for o in opt.inner.values())

    groups = opt.param_groups
    saved = copy.deepcopy(opt.state_dict())
    saved["muon"]["param_groups"][0]["lr"] = 0.5
    opt.load_state_dict(saved)
    # Same list object (held by schedulers), now pointing at the freshly loaded inner groups.
    assert opt.param_groups is groups and opt.param_groups[0] is opt.inner["muon"].param_groups[0]
    assert opt.param_groups[0]["lr"] == 0.5

    adamw_only = build_optimizer(model, OptimizerConfig(type="muon"), lambda name, p: p.ndim < 2)
    with pytest.raises(ValueError, match="different optimizer type"):
        adamw_only.load_state_dict(opt.state_dict())


def test_adamw_is_fused_on_plain_tensors_and_matches_the_reference():
    torch.manual_seed(0)
    model = bitnet()
    reference = copy.deepcopy(model)
    cfg = OptimizerConfig(type="adamw", lr=1e-2, weight_decay=0.1)
    optimizer = build_optimizer(model, cfg)
    assert optimizer.defaults["fused"] is True
    # The unfused torch implementation with the same groups is the reference update.
    by_name = dict(reference.named_parameters())
    groups = [
        {"params": [by_name[n] for n in names], "weight_decay": g["weight_decay"]}
        for g, names in zip(optimizer.param_groups, _group_names(model, optimizer))
    ]
    plain = AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8, weight_decay=cfg.weight_decay, foreach=False)
    ids = token_ids()
    for _ in range(3):
        for m, opt in ((model, optimizer), (reference, plain)):
            opt.zero_grad()
            loss_of(m, ids).backward()
            opt.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    # Mixed devices (or sharded parameters) fall back to the default implementation.
    assert not fused_adamw_supported([torch.zeros(2), torch.zeros(2, device="meta")])
    assert not fused_adamw_supported([torch.zeros(2, dtype=torch.int64)])


def _group_names(model: torch.nn.Module, optimizer) -> list[list[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
