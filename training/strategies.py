"""Adaptation strategies: which parts of a loaded base `ConformerCTC` train, and at what learning rate.

    plan = prepare(net, "adapters")          # modifies net in place (freezes, inserts LoRA)
    opt_groups = plan.param_groups           # [{"params": [...], "lr_scale": s, "name": ...}] for loop.Trainer
    plan.trained_parameters, plan.total_parameters
    export_net = merge(net)                  # LoRA folded into the weights: a plain ConformerCTC again

Strategies (the `speechadapt.v1.Strategy` values):

* `head`: everything frozen except the CTC output layer (`net.head`).
* `finetune`: every parameter trains, with layer-wise learning-rate decay: the output layer at scale 1, the top
  encoder layer (and the encoder's final norm) at `decay`, each layer below another factor `decay`, the
  front-end (feature projection) lowest.
* `adapters`: LoRA (Hu et al., 2021) on the encoder's `nn.Linear` modules -- both macaron feed-forward blocks,
  the attention output projection and the convolution module's pointwise output -- plus the output layer;
  every base weight frozen (SpeechBrain's RelPosMHAXL holds q/k/v as one raw `in_proj_weight`, not an
  nn.Linear, and its positional projection `linear_pos` sees no speech: both stay as they are). `B` starts at zero, so a fresh adapter model computes exactly the base model.
  The rank is the largest of `LoraConfig.rank`, rank/2, ... that keeps the trained parameters within
  `LoraConfig.max_trained_share` of the base parameter count (5%). `merge` folds W + (alpha/r) B A into each
  weight: the published package has the base architecture (no loader change, no inference cost).

`total_parameters` is always the base model's parameter count (what the published package holds);
`trained_parameters` counts what the optimiser updates (LoRA matrices included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from speechadapt.asr.model import ConformerCTC

STRATEGIES = ("head", "finetune", "adapters")


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 8
    alpha: float | None = None  # the update is scaled by alpha / rank; None = 2 * rank (a scale of 2)
    # Linear modules (by the last parts of their names inside an encoder layer) that get an adapter.
    targets: tuple[str, ...] = ("ffn_module1.1.ffn.0", "ffn_module1.1.ffn.3", "ffn_module2.1.ffn.0",
                                "ffn_module2.1.ffn.3", "mha_layer.out_proj", "convolution_module.after_conv.2")
    max_trained_share: float = 0.05


@dataclass(frozen=True)
class StrategyConfig:
    layer_decay: float = 0.8  # finetune: learning-rate factor per encoder layer going down
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class StrategyPlan:
    strategy: str
    param_groups: list[dict]  # torch.optim groups with "lr_scale" (and "name" for reports)
    trained_parameters: int
    total_parameters: int
    lora_rank: int = 0  # adapters only

    @property
    def trained_share(self) -> float:
        return self.trained_parameters / max(1, self.total_parameters)

    def describe(self) -> str:
        extra = f", LoRA rank {self.lora_rank}" if self.lora_rank else ""
        return (f"{self.strategy}: {self.trained_parameters:,} of {self.total_parameters:,} parameters trained "
                f"({self.trained_share:.1%}){extra}")


class LoRALinear(nn.Module):
    """`base(x) + (alpha / rank) * x A^T B^T` with the base layer frozen; B starts at zero."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, not {rank}")
        self.base = base
        self.rank = rank
        self.scale = alpha / rank
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device, dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:  # for code that reads .weight (dtype/device checks)
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale

    def delta(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scale

    def merged(self) -> nn.Linear:
        """A plain nn.Linear computing what this module computes (new tensors; the base layer is untouched)."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.base.bias is not None,
                        device=self.base.weight.device, dtype=self.base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.delta())
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def _count(params) -> int:
    return sum(p.numel() for p in params)


def _set_child(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def lora_modules(net: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in net.named_modules() if isinstance(m, LoRALinear)}


def add_lora(net: ConformerCTC, cfg: LoraConfig, rank: int | None = None) -> dict[str, LoRALinear]:
    """Wrap the encoder's target Linear modules in LoRALinear (in place); returns them by name."""
    rank = cfg.rank if rank is None else rank
    found: dict[str, LoRALinear] = {}
    for name, module in list(net.encoder.named_modules()):
        if isinstance(module, nn.Linear) and any(name.endswith(t) for t in cfg.targets):
            wrapped = LoRALinear(module, rank, 2.0 * rank if cfg.alpha is None else cfg.alpha)
            _set_child(net.encoder, name, wrapped)
            found[f"encoder.{name}"] = wrapped
    if not found:
        raise ValueError(f"no encoder Linear module matches the LoRA targets {cfg.targets}")
    return found


def _lora_rank(net: ConformerCTC, cfg: LoraConfig, total: int) -> int:
    """The largest of rank, rank/2, ..., 1 whose adapters plus the output layer fit the trained-parameter budget."""
    dims = [(m.in_features, m.out_features) for n, m in net.encoder.named_modules()
            if isinstance(m, nn.Linear) and any(n.endswith(t) for t in cfg.targets)]
    head = _count(net.head.parameters())
    rank = cfg.rank
    while rank > 1 and head + rank * sum(i + o for i, o in dims) > cfg.max_trained_share * total:
        rank //= 2
    return rank


def _encoder_layer_index(name: str) -> int | None:
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "encoder" and parts[1] == "layers" and parts[2].isdigit():
        return int(parts[2])
    return None


def _finetune_groups(net: ConformerCTC, decay: float) -> list[dict]:
    n = len(net.encoder.layers)
    groups: dict[str, dict] = {}

    def add(key: str, scale: float, p: nn.Parameter) -> None:
        groups.setdefault(key, {"name": key, "lr_scale": scale, "params": []})["params"].append(p)

    for name, p in net.named_parameters():
        layer = _encoder_layer_index(name)
        if name.startswith("head."):
            add("head", 1.0, p)
        elif layer is not None:
            add(f"encoder.layers.{layer}", decay ** (n - layer), p)
        elif name.startswith("encoder."):  # the final norm sits on top of the last layer
            add(f"encoder.layers.{n - 1}", decay, p)
        else:  # front-end: feature projection (and anything else below the encoder)
            add("frontend", decay ** (n + 1), p)
    return sorted(groups.values(), key=lambda g: -g["lr_scale"])


def prepare(net: ConformerCTC, strategy: str, cfg: StrategyConfig | None = None) -> StrategyPlan:
    """Set `requires_grad` (and insert LoRA for `adapters`) in place; return the optimiser groups and counts.

    Call it on the base model before wrapping it (DDP) or building the optimiser. Raises ValueError for an
    unknown strategy, or if `adapters` cannot stay within the trained-parameter budget."""
    cfg = cfg or StrategyConfig()
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if lora_modules(net):
        raise ValueError("this model already has LoRA adapters; prepare a freshly loaded base model")
    total = net.num_parameters()
    rank = 0
    if strategy == "finetune":
        for p in net.parameters():
            p.requires_grad_(True)
        groups = _finetune_groups(net, cfg.layer_decay)
    else:
        for p in net.parameters():
            p.requires_grad_(False)
        for p in net.head.parameters():
            p.requires_grad_(True)
        groups = [{"name": "head", "lr_scale": 1.0, "params": list(net.head.parameters())}]
        if strategy == "adapters":
            rank = _lora_rank(net, cfg.lora, total)
            adapters = add_lora(net, cfg.lora, rank)
            groups.append({"name": "lora", "lr_scale": 1.0,
                           "params": [p for m in adapters.values() for p in (m.lora_A, m.lora_B)]})
    trained = sum(_count(g["params"]) for g in groups)
    assert trained == _count(p for p in net.parameters() if p.requires_grad), "a trainable parameter is in no group"
    if strategy == "adapters" and trained > cfg.lora.max_trained_share * total:
        raise ValueError(f"adapters would train {trained:,} of {total:,} parameters "
                         f"({trained / total:.1%} > {cfg.lora.max_trained_share:.0%}): use fewer LoRA targets")
    return StrategyPlan(strategy, groups, trained, total, rank)


def merge(net: ConformerCTC) -> ConformerCTC:
    """Fold every LoRA adapter into its weight, in place: `net` becomes a plain ConformerCTC (same state-dict
    keys as the base model) computing the same function. A model without adapters is returned as is."""
    for name, module in lora_modules(net).items():
        _set_child(net, name, module.merged())
    return net


def base_state(net: ConformerCTC) -> dict[str, torch.Tensor]:
    """The state dict with base-model keys: LoRA wrappers' base weights under their original names, adapters
    left out (what the base tensors are now, for checking they stay untouched)."""
    out = {}
    for k, v in net.state_dict().items():
        if ".lora_A" in k or ".lora_B" in k:
            continue
        out[k.replace(".base.", ".")] = v
    return out
