"""Layer matches for intermediate distillation, as data (TextBrewer's vocabulary).

A match is ``{teacher_layer, student_layer, feature, weight}``; the distance it is scored with
belongs to the method (PKD: normalised [CLS] distance; TinyBERT: MSE). Layers are numbered as
Hugging Face ``hidden_states`` are: 0 is the embedding output, ``i`` the output of layer ``i``
(attention maps of layer ``i`` are ``attentions[i - 1]``). Strategies turn a name into a list:

- ``skip`` (Sun 2019 PKD-skip): student layer j <-> teacher layer j * Lt / Ls, j < Ls;
- ``last`` (PKD-last): student layer j <-> teacher layer Lt - Ls + j, j < Ls;
- ``uniform`` (Jiao 2020 TinyBERT): every student layer j <-> teacher layer j * Lt / Ls.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerMatch:
    teacher_layer: int
    student_layer: int
    feature: str  # "cls", "hidden" or "attention"
    weight: float


def layer_matches(
    layer_map, student_layers: int, teacher_layers: int, features: list[str], weight: float,
) -> list[LayerMatch]:
    """Resolve a strategy name or an explicit list of dicts into checked :class:`LayerMatch`es."""
    if isinstance(layer_map, str):
        if layer_map == "skip":
            pairs = [(j * teacher_layers // student_layers, j) for j in range(1, student_layers)]
        elif layer_map == "last":
            pairs = [(teacher_layers - student_layers + j, j) for j in range(1, student_layers)]
        elif layer_map == "uniform":
            pairs = [(j * teacher_layers // student_layers, j) for j in range(1, student_layers + 1)]
        else:
            raise ValueError(f"layer_map must be skip, last, uniform or a list; got {layer_map!r}")
        matches = [LayerMatch(t, s, f, weight) for t, s in pairs for f in features]
    else:
        for m in layer_map:
            unknown = set(m) - {"teacher_layer", "student_layer", "feature", "weight"}
            if unknown:
                raise ValueError(f"layer match {dict(m)}: unknown field(s) {sorted(unknown)}; a "
                                 "match has teacher_layer, student_layer, feature and weight")
        matches = [
            LayerMatch(
                int(m["teacher_layer"]), int(m["student_layer"]), str(m.get("feature", features[0])),
                float(m.get("weight", weight)),
            )
            for m in layer_map
        ]
    for m in matches:
        if not 0 <= m.teacher_layer <= teacher_layers:
            raise ValueError(f"{m}: the teacher has layers 0..{teacher_layers}")
        if not 0 <= m.student_layer <= student_layers:
            raise ValueError(f"{m}: the student has layers 0..{student_layers}")
        if m.feature == "attention" and 0 in (m.teacher_layer, m.student_layer):
            raise ValueError(f"{m}: layer 0 (embeddings) has no attention map")
    if not matches:
        raise ValueError(f"layer map {layer_map!r} gives no matches for a {student_layers}-layer "
                         f"student and a {teacher_layers}-layer teacher")
    return matches
