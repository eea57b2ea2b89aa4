"""Training paths without tests before: retraining resumed mid-run, recomputed cells
(``checkpoint_cells``), bf16 autocast, and MSG-DAS's super-net guidance distillation.
The CUDA tests run when a GPU is present and are skipped otherwise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mgas_core.data import load_splits
from mgas_core.engine.retrain import run_retrain
from mgas_core.files.checkpoints import load_checkpoint, save_checkpoint
from mgas_core.methods.registry import create_method, method_names
from mgas_core.space.builtin_architectures import DARTS_V2
from tests.conftest import tiny

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
EXTRA = {"mgas": {"search__layers": 4, "search__mgas__stages": 2}}


# --- retraining resumed mid-run ---------------------------------------------------------------------


def _retrain(settings, stop_after=None, state=None):
    class Stop(Exception):
        pass

    captured = {}

    def on_epoch(record, state_fn):
        if stop_after is not None and record["epoch"] == stop_after:
            captured["state"] = state_fn()
            raise Stop

    try:
        return run_retrain(DARTS_V2, settings, load_splits(settings.data), torch.device("cpu"), state=state,
                           on_epoch=on_epoch)
    except Stop:
        return captured["state"]


def test_retraining_resumed_mid_run_equals_an_uninterrupted_one(tmp_path):
    # drop-path and the auxiliary head draw random numbers every step: a resume must replay them
    settings = tiny(retrain__epochs=3, retrain__drop_path=0.3, retrain__auxiliary=True)
    full = _retrain(settings)
    state = _retrain(settings, stop_after=0)
    save_checkpoint(state, tmp_path / "retrain.pt")  # through the file, as a restarted trial does
    resumed = _retrain(settings, state=load_checkpoint(tmp_path / "retrain.pt"))
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert (resumed.val_acc, resumed.test_acc) == (full.val_acc, full.test_acc)
    assert len(full.history) == 3 and full.history[0]["loss"] != full.history[-1]["loss"]


# --- recomputed cells and bf16 ------------------------------------------------------------------------


def _one_step(method_name: str, device: str, **overrides):
    settings = tiny(search__method=method_name, device=device, **EXTRA.get(method_name, {}), **overrides)
    splits = load_splits(settings.data)
    torch.manual_seed(0)
    method = create_method(settings.search, splits.info, torch.device(device), seed=0)
    batch = (splits.train.tensors[0][:16], splits.train.tensors[1][:16])
    arch_batch = (splits.train.tensors[0][16:32], splits.train.tensors[1][16:32]) if method.bilevel else None
    method.begin_epoch(0)
    torch.manual_seed(1)
    stats = method.train_step(batch, arch_batch)
    weights = {k: v.detach().float().cpu() for k, v in method.model.state_dict().items()}
    return stats, weights


def _checkpointing_matches(method_name: str, device: str) -> None:
    plain, plain_weights = _one_step(method_name, device)
    recomputed, recomputed_weights = _one_step(method_name, device, search__checkpoint_cells=True)
    assert recomputed["loss"] == pytest.approx(plain["loss"], rel=1e-5, abs=1e-6)
    assert plain_weights.keys() == recomputed_weights.keys()
    for key, value in plain_weights.items():  # the same step: same gradients, BN running statistics moved once
        if key.endswith("num_batches_tracked"):
            # the recomputation runs BN with momentum 0 (statistics unchanged) but torch still counts
            # the batch; the counter is only read when momentum is None, which no BN here uses
            continue
        torch.testing.assert_close(recomputed_weights[key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("method_name", method_names(searching_only=True))
def test_recomputed_cells_take_the_same_step(method_name):
    _checkpointing_matches(method_name, "cpu")


@CUDA
@pytest.mark.parametrize("method_name", method_names(searching_only=True))
def test_recomputed_cells_take_the_same_step_on_cuda(method_name):
    _checkpointing_matches(method_name, "cuda")


@CUDA
@pytest.mark.parametrize("method_name", method_names(searching_only=True))
def test_bf16_autocast_search_step_is_close_to_fp32(method_name):
    fp32, fp32_weights = _one_step(method_name, "cuda")
    bf16, bf16_weights = _one_step(method_name, "cuda", search__precision="bf16")
    assert torch.isfinite(torch.tensor(bf16["loss"])) and bf16["loss"] != fp32["loss"]  # it ran in bf16
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=0.05)
    assert all(v.dtype == torch.float32 for v in bf16_weights.values() if v.is_floating_point())
    for key, value in fp32_weights.items():
        torch.testing.assert_close(bf16_weights[key], value, rtol=0.1, atol=0.05, msg=key)


@CUDA
def test_bf16_search_and_retrain_run_end_to_end_on_cuda():
    from mgas_core.engine.search import run_search

    settings = tiny(search__method="darts", device="cuda", search__precision="bf16", search__epochs=1)
    result = run_search(settings, load_splits(settings.data), torch.device("cuda"))
    assert result.history and torch.isfinite(torch.tensor(result.history[0]["loss"]))


def test_bf16_on_cpu_is_refused_before_a_step():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"search\.precision"):
        tiny(search__precision="bf16", device="cpu")
    from mgas_common.errors import UserInputError
    from mgas_core.engine.runtime import check_device

    with pytest.raises(UserInputError, match="bf16 needs a CUDA device"):
        check_device(tiny(search__precision="bf16", device="auto"), torch.device("cpu"))


# --- MSG-DAS super-net guidance distillation ------------------------------------------------------------


def _msg_das(teacher: str, weight: float, temperature: float):
    settings = tiny(search__method="msg_das", search__msg_das__subgraphs=3, search__msg_das__teacher=teacher,
                    search__msg_das__distill_weight=weight, search__msg_das__distill_temperature=temperature)
    splits = load_splits(settings.data)
    torch.manual_seed(0)
    method = create_method(settings.search, splits.info, torch.device("cpu"), seed=0)
    method.begin_epoch(0)
    x, y = splits.train.tensors[0][:16], splits.train.tensors[1][:16]
    return method, x, y


def _loss(method, x, y):
    generator_state = method.generator.get_state()
    torch.manual_seed(5)  # DropBlock on the skip branches draws from the global generator
    loss, _ = method.subgraph_loss(x, y)
    method.generator.set_state(generator_state)
    torch.manual_seed(5)
    logits = [method.model.net(x, w, a).float() for w, a in method.sample_subgraphs()]
    method.generator.set_state(generator_state)
    return loss, logits


@pytest.mark.parametrize("teacher", ["ensemble", "supernet"])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_distillation_adds_weighted_kl_to_the_teacher(teacher, temperature):
    """loss = mean over the K sub-graphs of CE(z_k, y) + w * T^2 * KL(teacher_T || z_k,T); the teacher is
    the detached ensemble of the sub-graphs or the soft super-net; w = 0 leaves plain CE."""
    weight = 1.5
    method, x, y = _msg_das(teacher, weight, temperature)
    with_distill, logits = _loss(method, x, y)
    method.cfg.distill_weight = 0.0
    without, logits_again = _loss(method, x, y)
    for a, b in zip(logits, logits_again):
        torch.testing.assert_close(a, b)  # the same sub-graphs and the same DropBlock draws
    ce = torch.stack([F.cross_entropy(z, y) for z in logits]).mean()
    torch.testing.assert_close(without, ce)
    with torch.no_grad():
        target = torch.stack(logits).mean(0) if teacher == "ensemble" else method.model(x).float()
    log_teacher = F.log_softmax(target / temperature, dim=-1)
    kl = torch.stack([(log_teacher.exp() * (log_teacher - F.log_softmax(z / temperature, dim=-1))).sum(-1).mean()
                      for z in logits]).mean()
    assert kl > 0
    torch.testing.assert_close(with_distill - without, weight * temperature**2 * kl, rtol=1e-4, atol=1e-6)


def test_distillation_changes_the_weight_gradients():
    method, x, y = _msg_das("ensemble", 1.0, 2.0)
    grads = []
    for weight in (0.0, 1.0):
        method.cfg.distill_weight = weight
        method.model.zero_grad(set_to_none=True)
        loss, _ = _loss(method, x, y)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in method.model.weight_parameters() if p.grad is not None]))
    assert not torch.allclose(grads[0], grads[1])
