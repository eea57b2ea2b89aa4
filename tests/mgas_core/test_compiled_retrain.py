"""Opt-in compiled retraining (``retrain.compile``, issue 17): the network compiles to one graph
per phase, not one per epoch; compiled training agrees with eager training, checkpoints the module's
own keys and resumes bitwise; a backend the machine cannot build is refused before anything runs.

CI runs the captured graphs with torch's debugging backends, ``eager`` (dynamo's graphs) and
``aot_eager`` (AOTAutograd's forward and backward graphs), eager kernels both. Inductor itself
(generated C++ kernels, minutes of compile on this machine) is compared with eager when
``MGAS_INDUCTOR_TESTS=1``."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from pydantic import ValidationError
from torch._dynamo.utils import counters

from mgas_common.errors import UserInputError
from mgas_core.data import load_splits
from mgas_core.engine.compiled import check_compile, compiled_forward
from mgas_core.engine.retrain import run_retrain
from mgas_core.evaluation_network import build_eval_network
from mgas_core.space.architecture import Architecture, CellArch, OpSpec
from mgas_core.space.builtin_architectures import DARTS_V2
from tests.conftest import tiny


def masked_arch() -> Architecture:
    """A per-cell architecture with channel widths and a fixed weight mask (what MGAS derives)."""
    cells = []
    for i in range(3):
        ops = [OpSpec("sep_conv_3x3", 0, 0, {"mid": 3, "out": [0, 2, 3]}), OpSpec("skip_connect", 1, 0),
               OpSpec("dil_conv_3x3", 2, 1, {"out": [1, 2]})]
        # cell 0 keeps 3 of its first input's 4 channels: the sep conv's pw1 reads 3
        cells.append(CellArch(ops, [2, 3], reduction=i in (1, 2), preprocess=[{"out": [0, 1, 3]}, None] if i == 0
                              else [None, None]))
    generator = torch.Generator().manual_seed(0)
    masks = {"cells.0.ops.0.pw1": (torch.rand(3, 3, 1, 1, generator=generator) > 0.5).float()}
    return Architecture("masked", nodes=2, cells=cells, channels=4, masks=masks)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("arch", [DARTS_V2, masked_arch()], ids=["genotype", "per-cell-masked"])
def test_a_retraining_compiles_one_graph_per_phase_not_one_per_epoch(arch):
    torch.manual_seed(0)
    net = build_eval_network(arch, 10, 3, channels=4, layers=3, auxiliary=True)
    compiled = torch.compile(net, backend="eager", fullgraph=True)  # fullgraph: a graph break raises
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    graphs = []
    for epoch in range(3):
        net.drop_path_prob = 0.3 * epoch / 3  # grows every epoch, as run_retrain sets it
        net.train()
        for size in (8, 8, 5):  # an epoch's last batch is smaller
            logits, aux = compiled(x[:size])
            (F.cross_entropy(logits, y[:size]) + 0.4 * F.cross_entropy(aux, y[:size])).backward()
            optimizer.step()
            optimizer.zero_grad()
        net.eval()
        with torch.no_grad():
            got, _ = compiled(x)
            assert torch.equal(got, net(x)[0])  # the captured graph computes what the module does
        graphs.append(counters["stats"]["unique_graphs"])
    # training, the smaller batch (then a dynamic batch size), evaluation, and drop-path on from
    # epoch 1; nothing after that however the probability grows
    assert graphs[1] <= 4 and graphs[2] == graphs[1], graphs


def _retrain(settings, stop_after=None, state=None, arch=DARTS_V2):
    class Stop(Exception):
        pass

    captured = {}

    def on_epoch(record, state_fn):
        captured["keys"] = sorted(state_fn()["model"])
        if stop_after is not None and record["epoch"] == stop_after:
            captured["state"] = state_fn()
            raise Stop

    try:
        result = run_retrain(arch, settings, load_splits(settings.data), torch.device("cpu"), state=state,
                             on_epoch=on_epoch)
        return result, captured["keys"]
    except Stop:
        return captured["state"], captured["keys"]


@pytest.mark.slow
def test_compiled_retraining_agrees_with_eager_and_checkpoints_the_modules_own_keys():
    # without drop-path no random numbers are drawn inside the network: the same arithmetic
    eager, eager_keys = _retrain(tiny(retrain__epochs=2, retrain__layers=1, retrain__drop_path=0.0))
    compiled, compiled_keys = _retrain(tiny(retrain__epochs=2, retrain__layers=1, retrain__drop_path=0.0,
                                            retrain__compile=True, retrain__compile_backend="aot_eager"))
    assert compiled_keys == eager_keys and not any(k.startswith("_orig_mod") for k in compiled_keys)
    assert [h["loss"] for h in compiled.history] == pytest.approx([h["loss"] for h in eager.history], rel=1e-5)
    assert abs(compiled.val_acc - eager.val_acc) <= 1 / 19  # at most one of the tiny val set's images


@pytest.mark.slow
def test_run_retrain_compiles_a_fixed_number_of_graphs_however_many_epochs():
    counts = []
    settings = tiny(retrain__epochs=5, retrain__layers=1, retrain__drop_path=0.3, retrain__compile=True,
                    retrain__compile_backend="eager")
    run_retrain(DARTS_V2, settings, load_splits(settings.data), torch.device("cpu"),
                on_epoch=lambda record, state_fn: counts.append(counters["stats"]["unique_graphs"]))
    # epoch 0 captures training and evaluation (and, at the epoch's smaller last batch, a dynamic
    # batch size), epoch 1 training with drop-path on; then none while the probability grows
    # (3, then 5 on torch 2.14)
    assert counts[1] <= 6 and counts[1:] == [counts[1]] * 4, counts


@pytest.mark.slow
def test_compiled_retraining_resumes_an_eager_checkpoint_and_the_other_way_round():
    # no drop-path: the graphs draw nothing, and torch's eager backend runs eager's own kernels
    eager = tiny(retrain__epochs=2, retrain__layers=1, retrain__drop_path=0.0)
    compiled = tiny(retrain__epochs=2, retrain__layers=1, retrain__drop_path=0.0, retrain__compile=True,
                    retrain__compile_backend="eager")
    whole, _ = _retrain(eager)
    for first, second in ((eager, compiled), (compiled, eager)):
        state, _ = _retrain(first, stop_after=0)
        resumed, _ = _retrain(second, state=state)
        assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in whole.history], rel=1e-6)
        assert resumed.test_acc == whole.test_acc


@pytest.mark.slow
def test_compiled_retraining_with_drop_path_resumes_bitwise():
    # drop-path draws inside the compiled graph: a resume must replay the same numbers
    settings = tiny(retrain__epochs=2, retrain__layers=1, retrain__drop_path=0.3, retrain__compile=True,
                    retrain__compile_backend="eager")
    full, _ = _retrain(settings)
    state, _ = _retrain(settings, stop_after=0)
    resumed, _ = _retrain(settings, state=state)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert (resumed.val_acc, resumed.test_acc) == (full.val_acc, full.test_acc)


@pytest.mark.slow
def test_each_compiled_retraining_in_a_process_is_compiled_not_left_eager_by_the_recompile_limit():
    splits, cpu = load_splits(tiny().data), torch.device("cpu")
    for width in (4, 6, 8):  # another network, graphs of its own, in the same process
        settings = tiny(retrain__epochs=1, retrain__layers=1, retrain__channels=width, retrain__compile=True,
                        retrain__compile_backend="eager")
        counters.clear()
        run_retrain(DARTS_V2, settings, splits, cpu)
        assert counters["stats"]["unique_graphs"] >= 2  # training and evaluation were captured


def test_a_backend_the_machine_cannot_build_is_refused_naming_the_setting(monkeypatch, tmp_path):
    import torch._inductor.config as inductor_config

    cpu = torch.device("cpu")
    monkeypatch.setenv("PATH", str(tmp_path))  # Inductor's own g++ is not on PATH
    with pytest.raises(UserInputError, match=r"retrain\.compile: Inductor on CPU builds C\+\+ kernels with g\+\+ .*"
                                             r"allowed here: retrain\.compile false, or retrain\.compile_backend "
                                             r"aot_eager or eager"):
        check_compile(True, "inductor", cpu)
    check_compile(True, "aot_eager", cpu)  # no compiler needed
    check_compile(False, "inductor", cpu)
    with pytest.raises(UserInputError, match=r"retrain\.compile:"):  # before anything trains
        run_retrain(DARTS_V2, tiny(retrain__compile=True), load_splits(tiny().data), cpu)
    monkeypatch.undo()
    # only the compilers Inductor tries count: $CXX when set (read when torch imports its config)
    with (inductor_config.patch({"cpp.cxx": (None, "no-such-compiler")}),
          pytest.raises(UserInputError, match="with no-such-compiler")):
        check_compile(True, "inductor", cpu)


def test_a_compiler_that_is_on_path_but_cannot_build_a_kernel_is_refused(tmp_path):
    """Found is not enough: the compiler must build, and the library load and run, a test kernel."""
    import torch._inductor.config as inductor_config

    cpu = torch.device("cpu")
    failing = tmp_path / "failing-c++"
    failing.write_text("#!/bin/sh\necho 'broken on purpose' >&2\nexit 1\n")
    silent = tmp_path / "silent-c++"  # says it worked and builds nothing
    silent.write_text("#!/bin/sh\nexit 0\n")
    for script in (failing, silent):
        script.chmod(0o755)
    for compiler, said in [(failing, r"cannot build a kernel \(exit 1: broken on purpose\)"),
                           (silent, "built a kernel that cannot be loaded")]:
        with (inductor_config.patch({"cpp.cxx": (None, str(compiler))}),
              pytest.raises(UserInputError, match=rf"retrain\.compile: the C\+\+ compiler .*{said}.*allowed here")):
            check_compile(True, "inductor", cpu)
    if shutil.which("g++"):
        check_compile(True, "inductor", cpu)  # this machine's compiler builds and runs the test kernel


def test_inductor_compiles_its_kernels_in_the_trials_threads_only(monkeypatch):
    import torch._inductor.config as inductor_config

    monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS", raising=False)
    monkeypatch.setattr(inductor_config, "compile_threads", 32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        net = build_eval_network(DARTS_V2, 10, 3, channels=4, layers=1, auxiliary=False)
        compiled_forward(net, True, "inductor")  # lazy: nothing compiles until it is called
        assert inductor_config.compile_threads == 1
    finally:
        torch.set_num_threads(threads)
    assert compiled_forward(net, False, "inductor") is net


def test_an_unknown_backend_is_a_settings_error():
    with pytest.raises(ValidationError, match=r"retrain\.compile_backend\s+Input should be 'inductor', 'aot_eager' "
                                              r"or 'eager'"):
        tiny(retrain__compile=True, retrain__compile_backend="tvm")


@pytest.mark.skipif(os.environ.get("MGAS_INDUCTOR_TESTS") != "1",
                    reason="Inductor compiles for minutes on CPU; set MGAS_INDUCTOR_TESTS=1")
def test_inductor_retraining_agrees_with_eager():
    eager, _ = _retrain(tiny(retrain__epochs=2, retrain__drop_path=0.0))
    compiled, _ = _retrain(tiny(retrain__epochs=2, retrain__drop_path=0.0, retrain__compile=True))
    with_drop_path, _ = _retrain(tiny(retrain__epochs=2, retrain__drop_path=0.3, retrain__compile=True))
    assert len(with_drop_path.history) == 2 and all(h["loss"] > 0 for h in with_drop_path.history)
    assert [h["loss"] for h in compiled.history] == pytest.approx([h["loss"] for h in eager.history], rel=1e-3)
    assert abs(compiled.val_acc - eager.val_acc) <= 2 / 19
