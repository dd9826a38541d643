"""Structured pruning that removes weights: attention heads and FFN neurons.

transformers v5 removed ``prune_heads`` and head masks, so this is written here (no maintained
library prunes v5 BERT/MPNet physically). Removing head ``h`` of a layer slices its rows out of
the query, key and value projections and its columns out of the output projection; removing an
FFN neuron slices its row out of the intermediate projection and its column out of the output
projection. Heads per layer may differ, and a layer may lose every head (its attention then
adds only the output bias). MPNet's relative-position bias is one embedding shared by all
layers, one column per head, so each pruned MPNet layer selects its kept heads' columns.

What was kept is recorded in ``config.fincompress_pruning`` (``kept_heads``: original head ids
per layer; ``intermediate_sizes``: neurons per layer), so :func:`rebuild_pruned` can rebuild
the shapes before loading the weights (plain ``from_pretrained`` fails on the changed shapes).

Gates (:func:`gate_heads`, :func:`gate_neurons`) multiply each head's (neuron's) output by a
factor: the reference a pruned model must equal (gate 0), and what importance scores
differentiate (Michel et al. 2019).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

CONFIG_KEY = "fincompress_pruning"
SUPPORTED = ("bert", "mpnet")


@dataclass
class LayerParts:
    """The modules of one encoder layer that pruning changes."""

    attention: nn.Module  # holds num_attention_heads, attention_head_size, all_head_size
    query: nn.Linear | None  # None where every head was removed
    key: nn.Linear | None
    value: nn.Linear | None
    attention_output: nn.Linear  # input: the heads' outputs, head after head
    intermediate: nn.Linear
    ffn_output: nn.Linear


def layer_parts(model: nn.Module) -> list[LayerParts]:
    """The prunable parts of every encoder layer (BERT, MiniLM and MPNet classifiers)."""
    model_type = model.config.model_type
    if model_type not in SUPPORTED:
        raise ValueError(f"pruning supports model types {', '.join(SUPPORTED)}; "
                         f"{type(model).__name__} is {model_type!r}")
    parts = []
    for layer in getattr(model, model.base_model_prefix).encoder.layer:
        if model_type == "bert":
            attention = layer.attention.self
            names, output = ("query", "key", "value"), layer.attention.output.dense
        else:
            attention = layer.attention.attn
            names, output = ("q", "k", "v"), attention.o
        projections = (*(getattr(attention, name, None) for name in names), output)
        parts.append(LayerParts(attention, *projections, layer.intermediate.dense,
                                layer.output.dense))
    return parts


def pruning_record(model: nn.Module) -> dict:
    """``{"kept_heads": {layer: [original head ids]}, "intermediate_sizes": {layer: n}}``,
    for an unpruned model too (every head kept)."""
    record = getattr(model.config, CONFIG_KEY, None)
    if record:
        return {"kept_heads": {int(k): list(v) for k, v in record["kept_heads"].items()},
                "intermediate_sizes": {int(k): v for k, v in record["intermediate_sizes"].items()}}
    heads = model.config.num_attention_heads
    return {"kept_heads": {i: list(range(heads)) for i in range(model.config.num_hidden_layers)},
            "intermediate_sizes": {i: model.config.intermediate_size
                                   for i in range(model.config.num_hidden_layers)}}


def _save_record(model: nn.Module, record: dict) -> None:
    setattr(model.config, CONFIG_KEY, {
        "kept_heads": {str(k): v for k, v in record["kept_heads"].items()},
        "intermediate_sizes": {str(k): v for k, v in record["intermediate_sizes"].items()}})


def _rows(positions: list[int], size: int) -> torch.Tensor:
    return torch.tensor([p * size + i for p in positions for i in range(size)], dtype=torch.long)


def _slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping ``index`` along the output (dim 0) or input (dim 1) features."""
    weight = linear.weight.detach().index_select(dim, index).clone()
    out_features, in_features = weight.shape
    new = nn.Linear(in_features, out_features, bias=linear.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            bias = linear.bias.detach()
            new.bias.copy_(bias[index] if dim == 0 else bias)
    return new


class _PositionBiasForKeptHeads:
    """MPNet passes every layer the relative-position bias of all original heads
    (batch, heads, query, key); a pruned layer takes its kept heads' columns."""

    def __init__(self, kept: list[int]):
        self.kept = torch.tensor(kept, dtype=torch.long)

    def __call__(self, module, args, kwargs):
        if len(args) > 2 and args[2] is not None:
            args = (*args[:2], args[2].index_select(1, self.kept), *args[3:])
        elif kwargs.get("position_bias") is not None:
            kwargs = {**kwargs, "position_bias": kwargs["position_bias"].index_select(1, self.kept)}
        return args, kwargs


class NoHeads(nn.Module):
    """A self-attention whose heads were all removed: it contributes only the output
    projection's bias (BERT adds that in its ``output.dense``; MPNet's ``o`` lives here)."""

    def __init__(self, output: nn.Linear | None = None):
        super().__init__()
        self.o = output
        self.num_attention_heads = 0

    def forward(self, hidden_states, *args, output_attentions=False, **kwargs):
        empty = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
        if self.o is None:  # BERT: (context, attention weights)
            return empty, None
        return (self.o(empty), None) if output_attentions else (self.o(empty),)


def _set_attention(model: nn.Module, layer: int, module: nn.Module) -> None:
    encoder_layer = getattr(model, model.base_model_prefix).encoder.layer[layer]
    if model.config.model_type == "bert":
        encoder_layer.attention.self = module
    else:
        encoder_layer.attention.attn = module


def prune_heads(model: nn.Module, heads_by_layer: dict[int, list[int]]) -> nn.Module:
    """Remove attention heads in place: ``{layer: [original head ids]}``. Returns the model.

    Raises:
        ValueError: for a head that is not (or no longer) in the layer.
    """
    record = pruning_record(model)
    parts = layer_parts(model)
    for layer, heads in heads_by_layer.items():
        heads = sorted(set(heads))
        if not heads:
            continue
        kept = record["kept_heads"][layer]
        missing = [h for h in heads if h not in kept]
        if missing:
            raise ValueError(f"layer {layer} has no head {missing} (kept: {kept}); a removed head "
                             "cannot be removed again")
        part = parts[layer]
        size = part.attention.attention_head_size
        keep_positions = [i for i, h in enumerate(kept) if h not in heads]
        new_kept = [kept[i] for i in keep_positions]
        mpnet = model.config.model_type == "mpnet"
        if not new_kept:
            output = _slice_linear(part.attention_output, torch.tensor([], dtype=torch.long), 1)
            if mpnet:
                _set_attention(model, layer, NoHeads(output))
            else:
                _set_attention(model, layer, NoHeads())
                getattr(model, model.base_model_prefix).encoder.layer[layer].attention.output.dense = output
        else:
            rows = _rows(keep_positions, size)
            attention = part.attention
            names = ("q", "k", "v", "o") if mpnet else ("query", "key", "value", None)
            for name in names[:3]:
                setattr(attention, name, _slice_linear(getattr(attention, name), rows, 0))
            output = _slice_linear(part.attention_output, rows, 1)
            if mpnet:
                attention.o = output
                for hook in list(attention._forward_pre_hooks.values()):
                    if isinstance(hook, _PositionBiasForKeptHeads):
                        hook.kept = torch.tensor(new_kept, dtype=torch.long)
                        break
                else:
                    attention.register_forward_pre_hook(_PositionBiasForKeptHeads(new_kept),
                                                         with_kwargs=True)
            else:
                getattr(model, model.base_model_prefix).encoder.layer[layer].attention.output.dense = output
            attention.num_attention_heads = len(new_kept)
            attention.all_head_size = len(new_kept) * size
        record["kept_heads"][layer] = new_kept
    _save_record(model, record)
    return model


def prune_ffn(model: nn.Module, neurons_by_layer: dict[int, list[int]]) -> nn.Module:
    """Remove FFN (intermediate) neurons in place: ``{layer: [current neuron positions]}``.
    Returns the model."""
    record = pruning_record(model)
    parts = layer_parts(model)
    for layer, neurons in neurons_by_layer.items():
        neurons = set(neurons)
        if not neurons:
            continue
        part = parts[layer]
        size = part.intermediate.out_features
        if not neurons <= set(range(size)):
            raise ValueError(f"layer {layer} has {size} FFN neurons; cannot remove "
                             f"{sorted(n for n in neurons if not 0 <= n < size)[:5]}")
        keep = torch.tensor([n for n in range(size) if n not in neurons], dtype=torch.long)
        encoder_layer = getattr(model, model.base_model_prefix).encoder.layer[layer]
        encoder_layer.intermediate.dense = _slice_linear(part.intermediate, keep, 0)
        encoder_layer.output.dense = _slice_linear(part.ffn_output, keep, 1)
        record["intermediate_sizes"][layer] = len(keep)
    _save_record(model, record)
    return model


def rebuild_pruned(model: nn.Module) -> nn.Module:
    """Give a freshly built full-size model (``from_config``) the shapes its config's pruning
    record describes, so that the pruned weights load into it."""
    record = getattr(model.config, CONFIG_KEY, None)
    if not record:
        return model
    record = pruning_record(model)
    delattr(model.config, CONFIG_KEY)  # start from the full record
    heads = model.config.num_attention_heads
    prune_heads(model, {layer: [h for h in range(heads) if h not in kept]
                        for layer, kept in record["kept_heads"].items()})
    full = model.config.intermediate_size
    prune_ffn(model, {layer: list(range(size, full))
                      for layer, size in record["intermediate_sizes"].items()})
    return model


def gate_heads(model: nn.Module, gates: torch.Tensor) -> list:
    """Multiply each head's output by ``gates[layer, position]`` (layers, max kept heads);
    returns the hook handles (``.remove()`` them to ungate)."""
    handles = []
    for layer, part in enumerate(layer_parts(model)):
        heads = part.attention.num_attention_heads
        if heads == 0:
            continue
        size = part.attention_output.in_features // heads
        gate = gates[layer, :heads]
        handles.append(part.attention_output.register_forward_pre_hook(
            lambda module, args, gate=gate, size=size:
            (args[0] * gate.repeat_interleave(size).to(args[0].dtype),)))
    return handles


def gate_neurons(model: nn.Module, gates: torch.Tensor) -> list:
    """Multiply each FFN neuron's output by ``gates[layer, neuron]`` (layers, max neurons)."""
    handles = []
    for layer, part in enumerate(layer_parts(model)):
        gate = gates[layer, :part.ffn_output.in_features]
        handles.append(part.ffn_output.register_forward_pre_hook(
            lambda module, args, gate=gate: (args[0] * gate.to(args[0].dtype),)))
    return handles
