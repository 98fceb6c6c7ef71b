"""The fused RMSNorm swap: same outputs as transformers' module, same training, undone after."""
import pytest
import torch

from harness.accel import kernels
from tests.train.test_trainers import _run

pytestmark = pytest.mark.fenced  # fused_norm


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_fused_norms_give_the_modules_own_outputs_and_are_undone(tiny_model_dir, dtype, tol):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype).eval()
    for m in model.modules():  # trained-looking weights, so the weight is not a no-op
        if type(m).__name__ in kernels.FUSABLE:
            torch.nn.init.normal_(m.weight, 1.0, 0.3)
    ids = torch.randint(0, 1000, (2, 9))
    with torch.no_grad():
        own = model(input_ids=ids).logits
        with kernels.fused_norms(model, True) as n:
            assert n == 2 * model.config.num_hidden_layers + 1  # two a layer and the final one
            norm = model.model.norm
            x = torch.randn(3, model.config.hidden_size, dtype=dtype)
            fused_out = norm(x)
            fused = model(input_ids=ids).logits
        assert type(norm).__name__ == "LlamaRMSNorm"  # its own class is back
        torch.testing.assert_close(fused_out, norm(x), atol=tol, rtol=tol)
    torch.testing.assert_close(fused, own, atol=tol * 10, rtol=tol * 10)
    assert not torch.equal(norm(x), x)  # the weight takes part: the comparison can fail


@pytest.mark.slow
def test_training_with_fused_norms_matches_the_models_own(recipe_dict, tmp_path, monkeypatch):
    import torch.nn.functional as F
    calls = []
    real = F.rms_norm
    monkeypatch.setattr(F, "rms_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    over = {"trainer.max_steps": 3, "adapter.dropout": 0.0}
    _, own = _run(recipe_dict, tmp_path / "a", **over, **{"model.fused_norm": False})
    assert not calls
    _, fused = _run(recipe_dict, tmp_path / "b", **over, **{"model.fused_norm": True})
    assert calls
    loss = lambda res: [h["loss"] for h in res.log_history if "loss" in h]  # noqa: E731
    assert len(loss(fused)) == 3 and loss(fused) == pytest.approx(loss(own), rel=1e-4)


def test_a_norm_whose_weight_differs_in_dtype_keeps_its_own_forward(tiny_model_dir):
    """QLoRA keeps norms in fp32 while activations are bf16: the module's own type promotion."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    norm = model.model.norm
    x = torch.randn(2, model.config.hidden_size, dtype=torch.bfloat16)
    own = norm(x)
    with kernels.fused_norms(model, True):
        out = norm(x)
    assert out.dtype == own.dtype == torch.float32
    torch.testing.assert_close(out, own)


def test_the_fused_norms_outlive_a_kernelization_and_leave_its_forward_as_it_was(tiny_model_dir,
                                                                                monkeypatch):
    """transformers 5.25 kernelizes at each train()/eval() that changes the mode, and that pops
    a forward set on a norm: the fused one must keep running through it, and a forward a
    kernelization left before is there again after (the pinned set has no kernels: skipped)."""
    import torch.nn.functional as F
    Mode, kernelize = (getattr(pytest.importorskip("kernels"), n) for n in ("Mode", "kernelize"))
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    calls = []
    real = F.rms_norm
    monkeypatch.setattr(F, "rms_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    norm = model.model.norm
    x = torch.randn(2, model.config.hidden_size)
    left = norm.forward = lambda h: h  # what a hub kernel's layer would look like
    with kernels.fused_norms(model, True) as n:
        assert n == 5 and "forward" not in vars(norm)
        for mode in (Mode.TRAINING, Mode.INFERENCE):
            kernelize(model, mode=mode, device="cpu")
            model.train(mode == Mode.TRAINING)
            calls.clear()
            norm(x)
            assert calls == [1], mode
    assert vars(norm)["forward"] is left and type(norm).__name__ == "LlamaRMSNorm"
