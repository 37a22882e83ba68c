"""Models and checks shared by the parity tests against the reference oracles (test_compat.py: the pure functions;
test_scheduler_compat.py: TempBalance itself): small models with the reference code's module names, and the
per-parameter learning-rate comparison."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

RTOL = 1e-12
SIGMOID_PAIRS = [(0.25, 0.25), (1.25, 1.25), (1.0, 1.0), (2.0, 1.0)]  # configs_sigmoid.txt's (s_lo, s_hi)


def tiny_encoder(kind: str) -> nn.Module:
    """A float64 BERT / RoBERTa with a classification head: 4 blocks of 64 x 64 and 64 x 160 matrices (64
    eigenvalues each), pooler / classifier.dense outside the blocks, a 2 x 64 output layer (2 eigenvalues)."""
    import transformers

    torch.manual_seed(7)
    common = dict(vocab_size=120, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=160,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
    if kind == "bert":
        model = transformers.BertForSequenceClassification(transformers.BertConfig(max_position_embeddings=40, **common))
    else:
        model = transformers.RobertaForSequenceClassification(
            transformers.RobertaConfig(max_position_embeddings=42, pad_token_id=1, **common))
    return model.double().eval()


def tiny_llama(layers: int = 2, seed: int = 11, vocab: int = 96) -> nn.Module:
    """A float64 LLaMA (transformers' ``LlamaForCausalLM``, the reference's module names): blocks of 64 x 64 q/o
    and 128 x 64 MLP matrices (64 eigenvalues each), 32 x 64 k/v projections (grouped-query attention: 32
    eigenvalues, under the reference's threshold of 50), an untied ``vocab`` x 64 LM head."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                      tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(config).double()


def max_rel(got: dict[str, float], want: dict[str, float]) -> tuple[float, str]:
    """The largest relative difference over the parameters (a zero lr - warmup's first step - must be zero) and the
    parameter where it is."""
    assert list(got) == list(want), "the same trainable parameters, in the same order"
    names = list(want)
    g = np.array([got[n] for n in names])
    w = np.array([want[n] for n in names])
    rel = np.abs(g - w) / np.where(w == 0, 1.0, np.abs(w))
    worst = int(np.argmax(rel))
    return float(rel[worst]), f"{names[worst]}: package {g[worst]!r} vs reference {w[worst]!r}"


def assert_lrs(got: dict[str, float], want: dict[str, float], rtol: float = RTOL) -> float:
    """Per-parameter learning rates equal to ``rtol``; returns the largest relative difference."""
    rel, where = max_rel(got, want)
    assert rel <= rtol, f"{where} (rel {rel:.2e})"
    return rel


def recorder(model: nn.Module, opt: torch.optim.Optimizer, key: str = "lr") -> list[dict[str, float]]:
    """Per optimizer update, ``{parameter name: value of key}`` (the lr; or the weight decay) of the parameters the
    optimizer holds, as the update reads it (a per-optimizer step pre-hook runs after TempBalance's global one)."""
    names = [(n, id(p)) for n, p in model.named_parameters()]
    out: list[dict[str, float]] = []

    def hook(optimizer, args, kwargs):
        lr_of = {id(p): float(g[key]) for g in optimizer.param_groups for p in g["params"]}
        out.append({n: lr_of[i] for n, i in names if i in lr_of})

    opt.register_step_pre_hook(hook)
    return out


class _Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet with the reference's module names (conv1/bn1, layerK.i.convJ/bnJ, shortcut, linear)."""

    def __init__(self, width=8, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(_Basic(width, width, 1), _Basic(width, width, 1))
        self.layer2 = nn.Sequential(_Basic(width, 2 * width, 2), _Basic(2 * width, 2 * width, 1))
        self.linear = nn.Linear(2 * width, classes)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer2(self.layer1(out))
        return self.linear(out.mean(dim=(2, 3)))


def small_vgg(classes=10) -> nn.Module:
    layers, cin, i = [], 3, 0
    for c in (8, 8, "M", 16, 16, "M", 16, 16):
        i += 1
        if c == "M":
            layers.append((f"MaxPool2d_{i}", nn.MaxPool2d(2)))
        else:
            layers += [(f"conv_{i}", nn.Conv2d(cin, c, 3, padding=1)), (f"bn_{i}", nn.BatchNorm2d(c)),
                       (f"relu_{i}", nn.ReLU())]
            cin = c
    model = nn.Module()
    model.features = nn.Sequential(OrderedDict(layers))
    model.linear = nn.Linear(16, classes)
    return model


class _Spectral(nn.Module):
    """Stands for the reference's SpectralConv2d_fast: complex weights that no reference code analyses."""

    def __init__(self, width, modes):
        super().__init__()
        self.modes = modes
        self.weights1 = nn.Parameter(torch.rand(width, width, modes, modes, dtype=torch.cdouble) / width)

    def forward(self, x):  # (batch, width, h, w): the lowest modes mixed by the complex weights
        ft = torch.fft.rfft2(x)
        out = torch.zeros_like(ft)
        m = self.modes
        out[:, :, :m, :m] = torch.einsum("bixy,ioxy->boxy", ft[:, :, :m, :m], self.weights1)
        return torch.fft.irfft2(out, s=x.shape[-2:])


class TinyFNO2d(nn.Module):
    """The reference FNO2d's layers (fc0, conv0-3, w0-3 as 1x1 Conv2d, fc1, fc2) at width 20."""

    def __init__(self, width=20, in_ch=12):
        super().__init__()
        self.fc0 = nn.Linear(in_ch + 2, width)
        for k in range(4):
            setattr(self, f"conv{k}", _Spectral(width, 4))
            setattr(self, f"w{k}", nn.Conv2d(width, width, 1))
        self.fc1 = nn.Linear(width, 128)
        self.fc2 = nn.Linear(128, 4)

    def forward(self, x):  # (batch, h, w, in_ch + 2) -> (batch, h, w, 4)
        x = self.fc0(x).permute(0, 3, 1, 2)
        for k in range(4):
            x = getattr(self, f"conv{k}")(x) + getattr(self, f"w{k}")(x)
            x = torch.relu(x) if k < 3 else x
        return self.fc2(torch.relu(self.fc1(x.permute(0, 2, 3, 1))))


class _LMBlock(nn.Module):
    def __init__(self, d, inner):
        super().__init__()
        self.attn = nn.Linear(d, d)
        self.ln1 = nn.LayerNorm(d)    # follows attn
        self.gate = nn.Linear(d, 16)  # 16 eigenvalues: below the threshold
        self.ff1 = nn.Linear(d, inner)
        self.ff2 = nn.Linear(inner, d)
        self.ln2 = nn.LayerNorm(d)    # follows ff2

    def forward(self, x):
        h = self.ln1(x + torch.tanh(self.attn(x)) + self.gate(x).mean(-1, keepdim=True))
        return self.ln2(h + self.ff2(torch.relu(self.ff1(h))))


class TinyLM(nn.Module):
    """A small causal-free language model with the reference's module kinds: Linear and LayerNorm in module order
    (LayerNorms after a Linear follow it), a thresholded Linear, a final LayerNorm after a LayerNorm (follows
    nothing) and an output layer (the last analysed matrix)."""

    def __init__(self, vocab=60, d=64, inner=128, layers=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([_LMBlock(d, inner) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.emb(ids)
        for block in self.layers:
            x = block(x)
        return self.head(self.ln_f(x))
