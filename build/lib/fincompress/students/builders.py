"""Students: built from config, cut from the teacher, or loaded pretrained.

- :func:`encoder_from_config`: a randomly initialised encoder of any depth and width using the
  teacher's tokenizer (``tiny``: FinCompress's 4 layers / 384 hidden / 6 heads / 1536 FFN;
  ``albert_random``: an ALBERT built from an ``AlbertConfig``, offline).
- :func:`truncated_student`: the teacher's own layers, the first k or every other one (the
  initialisation of Sun et al. 2019, PKD).
- pretrained students (``minilm``, ``albert``) load with
  :func:`fincompress.models.sources.load_classifier`.
"""

from __future__ import annotations

from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

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
                      strategy: str = "every_other"):
    """Keep ``num_layers`` of the source's encoder layers (usually the fine-tuned teacher's).

    ``first``: layers 1..k; ``every_other``: layers 2, 4, ..., 2k (1-based), spanning the depth.
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
    return model, tokenizer
