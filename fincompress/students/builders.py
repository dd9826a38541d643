"""Students: built from config, cut from the teacher, or loaded pretrained.

- :func:`encoder_from_config`: a randomly initialised encoder of any depth and width using the
  teacher's tokenizer (``tiny``: FinCompress's 4 layers / 384 hidden / 6 heads / 1536 FFN;
  ``albert_random``: an ALBERT built from an ``AlbertConfig``, offline).
- :func:`truncated_student`: the teacher's own layers, the first k or every other one (the
  initialisation of Sun et al. 2019, PKD), optionally narrowed: each layer keeps its
  ``heads`` and ``intermediate_size`` FFN neurons of largest weight magnitude (the narrow
  students of the frontier, width-pruned before distillation).
- pretrained students (``minilm``, ``albert``) load with
  :func:`fincompress.models.sources.load_classifier`.
"""

from __future__ import annotations

from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from fincompress.compress.importance import weight_magnitude
from fincompress.compress.prune import prune_ffn, prune_heads
from fincompress.models.sources import load_classifier, load_tokenizer


def encoder_from_config(tokenizer_source: str, labels: list[str], model_type: str = "bert",
                        **config_fields):
    """A random-initialised classifier whose vocabulary is the tokenizer's.

    Returns:
        ``(model, tokenizer)``.
    """
    tokenizer = load_tokenizer(tokenizer_source)
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        **config_fields,
    )
    return AutoModelForSequenceClassification.from_config(config), tokenizer


def truncated_student(source: str, labels: list[str], num_layers: int = 6,
                      strategy: str = "every_other", heads: int | None = None,
                      intermediate_size: int | None = None):
    """Keep ``num_layers`` of the source's encoder layers (usually the fine-tuned teacher's).

    ``first``: layers 1..k; ``every_other``: layers 2, 4, ..., 2k (1-based), spanning the depth.
    ``heads`` / ``intermediate_size`` (None: all): attention heads and FFN neurons each kept
    layer keeps, those of largest weight magnitude (:func:`weight_magnitude`).
    """
    model, tokenizer = load_classifier(source, labels)
    base = getattr(model, model.base_model_prefix)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__} has no encoder.layer list to truncate "
                         "(ALBERT shares one layer; use student=albert instead)")
    if strategy == "first":
        keep = list(range(num_layers))
    elif strategy == "every_other":
        keep = list(range(1, 2 * num_layers, 2))
    else:
        raise ValueError(f"strategy must be first or every_other, got {strategy!r}")
    if not 0 < num_layers or keep[-1] >= len(layers):
        raise ValueError(f"cannot keep {num_layers} layers ({strategy}) of a "
                         f"{len(layers)}-layer teacher")
    base.encoder.layer = nn.ModuleList(layers[i] for i in keep)
    model.config.num_hidden_layers = num_layers
    narrow(model, heads, intermediate_size)
    return model, tokenizer


def narrow(model, heads: int | None, intermediate_size: int | None) -> None:
    """Every layer keeps ``heads`` heads and ``intermediate_size`` FFN neurons (None: all), those
    of largest weight magnitude; the rest are removed from the model."""
    full_heads, full_size = model.config.num_attention_heads, model.config.intermediate_size
    for name, value, full in (("heads", heads, full_heads),
                              ("intermediate_size", intermediate_size, full_size)):
        if value is not None and not 0 < value <= full:
            raise ValueError(f"student.model.{name}={value}: each layer has {full}; keep "
                             f"between 1 and {full}")
    head_scores, neuron_scores = weight_magnitude(model)
    layers = range(model.config.num_hidden_layers)
    if heads is not None and heads < full_heads:
        prune_heads(model, {layer: head_scores[layer].argsort()[:full_heads - heads].tolist()
                            for layer in layers})
    if intermediate_size is not None and intermediate_size < full_size:
        prune_ffn(model, {layer: neuron_scores[layer].argsort()[:full_size - intermediate_size]
                          .tolist() for layer in layers})
