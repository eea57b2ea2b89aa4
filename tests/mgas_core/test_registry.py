"""Every registered method honours the protocol: search, derive, build, resume bitwise."""

from __future__ import annotations

import pytest
import torch

from mgas_core.evaluation_network import build_eval_network
from mgas_core.files.checkpoints import load_checkpoint, save_checkpoint
from mgas_core.methods import METHOD_REGISTRY
from mgas_core.methods.registry import method_names
from tests.conftest import search_until, tiny

EXTRA = {
    "mgas": {"search__layers": 4, "search__mgas__stages": 2, "search__mgas__stage_epochs": 1},
    "gold_nas": {"search__gold_nas__control__lambda0": 0.05},
}


def settings_for(method, **kw):
    return tiny(search__method=method, search__epochs=3, **EXTRA.get(method, {}), **kw)


_run = search_until


def test_registry_has_the_search_methods_and_published():
    assert set(method_names(searching_only=True)) == {"darts", "gold_nas", "msg_das", "mgas", "hdas"}
    # published and network_mo (a population's candidate): retrain only
    assert set(METHOD_REGISTRY) == {"darts", "gold_nas", "msg_das", "mgas", "hdas", "published", "network_mo"}


@pytest.mark.slow
@pytest.mark.parametrize("method", method_names(searching_only=True))
def test_search_derives_a_buildable_architecture(method):
    result = _run(settings_for(method))
    assert result.arch.meta["method"] == method
    arch = result.arch
    # a genotype builds at any shape; a width-free one (H-DAS's stage-specific cells) at any width, its own depth
    shape = {"channels": 4, "layers": 3} if arch.is_genotype and arch.stages is None else \
        {"channels": 4} if arch.channels is None else {}
    net = build_eval_network(result.arch, 4, 3, **shape)
    logits, _ = net(torch.randn(2, 3, 8, 8))
    assert logits.shape == (2, 4) and torch.isfinite(logits).all()
    assert len(result.history) >= 1 and all("val_acc" in h for h in result.history)


@pytest.mark.slow
@pytest.mark.parametrize("method", method_names(searching_only=True))
def test_resume_from_checkpoint_is_bitwise_identical(method, tmp_path):
    settings = settings_for(method)
    full = _run(settings)
    state = _run(settings, stop_after=0)
    save_checkpoint(state, tmp_path / "state.pt")
    resumed = _run(settings, state=load_checkpoint(tmp_path / "state.pt"))
    a, b = full.method.model.state_dict(), resumed.method.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert full.arch.to_json() == resumed.arch.to_json()
