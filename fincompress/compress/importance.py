"""Importance of attention heads and FFN neurons, for choosing what to prune.

- :func:`gate_importance`: Michel et al. (2019), "Are Sixteen Heads Really Better than One?":
  a gate of 1 multiplies each head's (neuron's) output; the importance of a unit is the mean
  absolute gradient of the loss with respect to its gate over a data set. Heads are
  normalised per layer (L2), as in the paper, so that layers compare.
- :func:`attention_entropy`: the mean entropy of each head's attention distribution over real
  tokens; diffuse heads (high entropy) are candidates to prune first.
- :func:`weight_magnitude`: data-free, for a pretrained encoder that has no task yet (narrow
  students cut before distillation): a head's (neuron's) importance is the norm of the
  weights that read into it times the norm of the weights that write its output.

Both return tensors shaped (layers, units), with NaN where a layer has fewer units than the
widest one (after earlier pruning), so that removed units are never selected again.
"""

from __future__ import annotations

import torch

from fincompress.compress.prune import gate_heads, gate_neurons, layer_parts


def unit_counts(model) -> tuple[list[int], list[int]]:
    """Heads and FFN neurons per layer, as the model is now."""
    parts = layer_parts(model)
    return ([part.attention.num_attention_heads for part in parts],
            [part.ffn_output.in_features for part in parts])


def gate_importance(model, batches, loss_fn=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate-gradient importance of every head and FFN neuron.

    Args:
        batches: an iterable of dicts with ``input_ids``, ``attention_mask`` and ``labels``.
        loss_fn: ``(logits, batch) -> loss``; default cross-entropy on ``labels``.

    Returns:
        ``heads`` (layers, max heads) normalised per layer, ``neurons`` (layers, max neurons);
        NaN where a layer has no such unit.
    """
    heads, neurons = unit_counts(model)
    head_gates = torch.ones(len(heads), max(max(heads), 1), requires_grad=True)
    neuron_gates = torch.ones(len(neurons), max(max(neurons), 1), requires_grad=True)
    handles = gate_heads(model, head_gates) + gate_neurons(model, neuron_gates)
    head_scores = torch.zeros_like(head_gates)
    neuron_scores = torch.zeros_like(neuron_gates)
    was_training = model.training
    model.eval()
    try:
        count = 0
        for batch in batches:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = (loss_fn(logits, batch) if loss_fn else
                    torch.nn.functional.cross_entropy(logits.float(), batch["labels"]))
            head_grad, neuron_grad = torch.autograd.grad(loss, [head_gates, neuron_gates])
            head_scores += head_grad.abs()
            neuron_scores += neuron_grad.abs()
            count += 1
        if count == 0:
            raise ValueError("importance needs at least one batch of data; got none")
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    head_scores = head_scores / count
    head_scores = head_scores / head_scores.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return _mask(head_scores, heads), _mask(neuron_scores / count, neurons)


@torch.no_grad()
def attention_entropy(model, batches) -> torch.Tensor:
    """Mean entropy (nats) of each head's attention over real tokens, (layers, max heads);
    needs ``attn_implementation="eager"`` (attention maps)."""
    heads, _ = unit_counts(model)
    total = torch.zeros(len(heads), max(max(heads), 1))
    tokens = 0
    for batch in batches:
        output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       output_attentions=True)
        mask = batch["attention_mask"].bool()
        for layer, attention in enumerate(output.attentions):
            if attention is None or heads[layer] == 0:
                continue
            probabilities = attention.float().clamp_min(1e-12)
            entropy = -(probabilities * probabilities.log()).sum(-1)  # (batch, heads, query)
            total[layer, :heads[layer]] += (entropy * mask[:, None, :]).sum(dim=(0, 2))
        tokens += int(mask.sum())
    if tokens == 0:
        raise ValueError("attention entropy needs at least one batch of data; got none")
    return _mask(total / tokens, heads)


def _mask(scores: torch.Tensor, counts: list[int]) -> torch.Tensor:
    scores = scores.detach().clone()
    for layer, count in enumerate(counts):
        scores[layer, count:] = float("nan")
    return scores


def lowest(scores: torch.Tensor, count: int, multiple: int = 1) -> dict[int, list[int]]:
    """The ``count`` lowest-scoring units over all layers (global pruning), as
    ``{layer: [positions]}``; NaN (absent) units are never chosen.

    With ``multiple`` > 1, each layer's share of the global choice is adjusted so that the units
    it keeps are a multiple of ``multiple`` (oneDNN's bf16 kernels are much slower on odd sizes:
    an FFN of 1,537 neurons took 35% longer than one of 1,536 on a Zen 5 EPYC), and within a
    layer its lowest units go. The total removed then differs from ``count`` by less than
    ``multiple`` per layer."""
    flat = scores.flatten()
    present = (~flat.isnan()).nonzero().squeeze(1)
    if count > len(present):
        raise ValueError(f"cannot remove {count} units: only {len(present)} remain")
    chosen = present[flat[present].argsort()[:count]]
    layers = scores.shape[0]
    remove = torch.bincount(chosen // scores.shape[1], minlength=layers)
    if multiple > 1:
        size = (~scores.isnan()).sum(1)
        kept = ((size - remove).double() / multiple).round().long() * multiple
        remove = (size - torch.minimum(kept, size)).clamp(min=0)
    selection = {}
    for layer in range(layers):
        if remove[layer] > 0:
            row = scores[layer].nan_to_num(float("inf"))
            selection[layer] = sorted(row.argsort()[:int(remove[layer])].tolist())
    return selection


@torch.no_grad()
def weight_magnitude(model) -> tuple[torch.Tensor, torch.Tensor]:
    """Data-free importance: per head, the norm of its query, key and value rows times the norm
    of its output-projection columns; per FFN neuron, the norm of its input row times the norm
    of its output column. Shapes and NaN as :func:`gate_importance`."""
    heads, neurons = unit_counts(model)
    head_scores = torch.zeros(len(heads), max(max(heads), 1))
    neuron_scores = torch.zeros(len(neurons), max(max(neurons), 1))
    for layer, part in enumerate(layer_parts(model)):
        if heads[layer]:
            size = part.attention_output.in_features // heads[layer]
            reads = sum(linear.weight.float().reshape(heads[layer], size, -1).pow(2).sum((1, 2))
                        for linear in (part.query, part.key, part.value)).sqrt()
            writes = part.attention_output.weight.float().reshape(-1, heads[layer], size).norm(
                dim=(0, 2))
            head_scores[layer, :heads[layer]] = reads * writes
        neuron_scores[layer, :neurons[layer]] = (part.intermediate.weight.float().norm(dim=1)
                                                 * part.ffn_output.weight.float().norm(dim=0))
    return _mask(head_scores, heads), _mask(neuron_scores, neurons)
