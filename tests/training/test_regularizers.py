"""SpectralNormRegularizer: the gradient of (sg/2) sigma_max^2 against autograd, persistent power iteration."""
from __future__ import annotations

import peft
import pytest
import torch
import transformers as T
from torch import nn

from tempbalance.training.regularizers import SpectralNormRegularizer

SG = 0.3


def autograd_grad(weight_fn, params):
    """d/dparams of sg/2 * ||W||_2^2 by autograd through torch.linalg.matrix_norm (an SVD), float64."""
    loss = SG / 2 * torch.linalg.matrix_norm(weight_fn(), 2) ** 2
    return torch.autograd.grad(loss, params)


def test_linear_and_conv_gradients_match_autograd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 20), nn.Conv2d(4, 6, 3)).double()
    reg = SpectralNormRegularizer(model, sg=SG, n_power_iterations=300)
    model[0].weight.grad = torch.ones_like(model[0].weight)  # an existing gradient is added to, not replaced
    penalty = reg.apply()
    lin, conv = model[0].weight, model[1].weight
    (g_lin,) = autograd_grad(lambda: lin, [lin])
    (g_conv,) = autograd_grad(lambda: conv.reshape(6, -1), [conv])
    torch.testing.assert_close(lin.grad, 1 + g_lin, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(conv.grad, g_conv, rtol=1e-6, atol=1e-9)
    sig = [torch.linalg.matrix_norm(w, 2).item() for w in (lin, conv.reshape(6, -1))]
    assert penalty == pytest.approx(sum(SG / 2 * s * s for s in sig), rel=1e-9)
    assert reg.sigmas["0"] == pytest.approx(sig[0], rel=1e-9)


def test_vectors_persist_so_one_iteration_per_step_converges_and_resumes():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(40, 40))
    true = torch.linalg.matrix_norm(model[0].weight.detach(), 2).item()
    reg = SpectralNormRegularizer(model, sg=SG, n_power_iterations=1)
    first = None
    for k in range(60):
        model.zero_grad()
        reg.apply()
        first = reg.sigmas["0"] if first is None else first
    assert abs(reg.sigmas["0"] - true) < 0.1 * abs(first - true) + 1e-5  # converging across calls
    state = reg.state_dict()
    fresh = SpectralNormRegularizer(model, sg=SG, n_power_iterations=1, seed=7)
    fresh.load_state_dict(state)
    model.zero_grad()
    reg.apply()
    g1 = model[0].weight.grad.clone()
    model.zero_grad()
    fresh.apply()
    assert torch.equal(g1, model[0].weight.grad)


def test_lora_gradient_reaches_the_factors():
    torch.manual_seed(2)
    cfg = T.LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=1, intermediate_size=24)
    m = peft.get_peft_model(T.LlamaForCausalLM(cfg).double(),
                            peft.LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj"], use_rslora=True))
    q = m.get_submodule("base_model.model.model.layers.0.self_attn.q_proj")
    with torch.no_grad():
        q.lora_B["default"].weight.normal_()
    A, B, W = q.lora_A["default"].weight, q.lora_B["default"].weight, q.base_layer.weight
    reg = SpectralNormRegularizer(m, sg=SG, n_power_iterations=300)
    reg.apply()
    s = 6 / 2 ** 0.5
    gA, gB = autograd_grad(lambda: W.detach() + s * B @ A, [A, B])
    torch.testing.assert_close(A.grad, gA, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(B.grad, gB, rtol=1e-6, atol=1e-9)
    assert W.grad is None  # frozen base weight untouched


def test_non_finite_weights_are_skipped_with_a_warning_naming_them():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    reg = SpectralNormRegularizer(model, sg=SG)
    u = reg.u["1"].clone()
    with torch.no_grad():
        model[1].weight[0, 0] = float("inf")
    with pytest.warns(RuntimeWarning, match=r"\['1'\]"):
        reg.apply()
    assert model[1].weight.grad is None and torch.equal(reg.u["1"], u) and model[0].weight.grad is not None


def test_bad_arguments_and_mismatched_state():
    model = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(ValueError, match="sg"):
        SpectralNormRegularizer(model, sg=-1)
    with pytest.raises(ValueError, match="n_power_iterations"):
        SpectralNormRegularizer(model, n_power_iterations=0)
    with pytest.raises(TypeError, match="model_or_specs"):
        SpectralNormRegularizer("model")
    other = SpectralNormRegularizer(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 3)))
    with pytest.raises(ValueError, match=r"missing now: \[.1.\]"):
        SpectralNormRegularizer(model).load_state_dict(other.state_dict())
