"""Shared machinery of the adapters that know a model's blocks (HF encoders, LLaMA-style decoders, FNO, UNet).

A block adapter finds the matrices with the generic adapter (Linear / Conv / HF Conv1D / PEFT LoRA, tied weights
once), keeps those inside a block, and names each matrix's unit after its block. In ``"block"`` mode a unit drives
every trainable parameter under the block's module path (LoRA factors, biases, norms); in ``"layer"`` mode only
the matrix's own layer.
"""
from __future__ import annotations

from torch import nn

from .base import Adapter, MatrixSpec, is_lora_layer, unique_params
from .generic import GenericAdapter


def check_no_dora(model: nn.Module) -> None:
    """Refuse DoRA clearly: its effective weight is a renormalised W + s*B@A, not what SPEC §1 analyses."""
    for name, mod in model.named_modules():
        if is_lora_layer(mod):
            dora = getattr(mod, "use_dora", {}) or {}
            used = [k for k, v in dora.items() if v]
            if used:
                raise NotImplementedError(
                    f"layer '{name}': DoRA adapter(s) {used} are not supported (the analysed matrix would not be "
                    "the weight the layer applies); use plain LoRA or rsLoRA"
                )


def block_of(name: str, blocks: list[str]) -> str | None:
    """The block whose module path is ``name`` or a prefix of it (longest match), or None."""
    best = None
    for b in blocks:
        if (name == b or name.startswith(b + ".")) and (best is None or len(b) > len(best)):
            best = b
    return best


class BlockAdapter(Adapter):
    """Base of adapters with blocks; subclasses implement :meth:`find_blocks`.

    Every matrix is enumerated (so :func:`tempbalance.analyze` reports pooler, classifier and LM head too), but
    only matrices inside a block - and embeddings when ``include_embeddings`` asks for them - are *tuned*
    (:meth:`tuned`); the others keep factor 1 unless ``tune_outside=True``. A tied LM head is the embedding
    tensor and is counted once.
    """

    default_unit = "block"

    def __init__(self, lora_scaling: bool = True, tune_outside: bool = False):
        self.lora_scaling = lora_scaling
        self.tune_outside = tune_outside
        self._blocks: set[str] = set()

    def find_blocks(self, model: nn.Module) -> list[str]:
        raise NotImplementedError

    def enumerate(self, model: nn.Module, include_embeddings: bool = False) -> list[MatrixSpec]:
        check_no_dora(model)
        blocks = self.find_blocks(model)
        self._blocks = set(blocks)
        specs = GenericAdapter(lora_scaling=self.lora_scaling).enumerate(model, include_embeddings)
        for s in specs:
            b = block_of(s.name, blocks)
            if b is not None:
                s.unit = b
        return specs

    def tuned(self, spec: MatrixSpec) -> bool:
        """Whether TempBalance tunes this matrix's unit (inside a block, an embedding asked for, or any with
        ``tune_outside``)."""
        return self.tune_outside or spec.unit in self._blocks or spec.kind == "embedding"

    def unit_params(self, model: nn.Module, specs: list[MatrixSpec], unit: str = "block") -> dict[str, list[nn.Parameter]]:
        if unit != "block":
            return super().unit_params(model, specs, unit)
        blocks = sorted({s.unit for s in specs}, key=len, reverse=True)
        out: dict[str, list[nn.Parameter]] = {s.unit: [] for s in specs}
        for pname, p in model.named_parameters():  # frozen ones too: they get the factor once they train
            b = block_of(pname.rsplit(".", 1)[0] if "." in pname else pname, blocks)
            if b is not None:
                out[b].append(p)
        for s in specs:  # units that are not module paths (embeddings analysed on request)
            if not out[s.unit]:
                out[s.unit] = list(s.params)
        return {k: unique_params(v) for k, v in out.items()}


def module_lists(model: nn.Module, suffixes: tuple[str, ...]) -> list[tuple[str, nn.ModuleList]]:
    """``(path, ModuleList)`` of every ModuleList whose path ends with one of ``suffixes`` (``"encoder.layer"``)."""
    found = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and any(name == s or name.endswith("." + s) for s in suffixes):
            found.append((name, mod))
    return found
