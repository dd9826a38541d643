"""Importance scores rank a head that contributes nothing last, never pick removed units."""

import math

import pytest
import torch

from fincompress.compress.importance import attention_entropy, gate_importance, lowest, weight_magnitude
from fincompress.compress.prune import layer_parts, prune_heads

from .test_prune import HEAD_SIZE, batch, tiny


def batches():
    data = batch()
    return [{**data, "labels": torch.tensor([0, 1, 2])}] * 2


@pytest.mark.parametrize("model_type", ["bert", "mpnet"])
def test_a_head_that_adds_nothing_has_zero_gate_importance(model_type):
    model = tiny(model_type)
    with torch.no_grad():  # head 2 of layer 1 no longer reaches the output
        layer_parts(model)[1].attention_output.weight[:, 2 * HEAD_SIZE:3 * HEAD_SIZE] = 0
    heads, neurons = gate_importance(model, batches())
    assert heads.shape == (3, 4) and neurons.shape == (3, 48)
    assert heads[1, 2] == 0 and (heads.flatten() > 0).sum() == 11
    assert lowest(heads, 1) == {1: [2]}
    torch.testing.assert_close(heads.norm(dim=1), torch.ones(3))  # normalised per layer


def test_removed_heads_are_absent_from_the_scores_and_never_chosen():
    model = tiny("bert")
    prune_heads(model, {0: [0, 1, 2, 3], 2: [1]})
    heads, _ = gate_importance(model, batches())
    assert heads[0].isnan().all() and heads[2, 3].isnan() and not heads[1].isnan().any()
    chosen = lowest(heads, 7)
    assert 0 not in chosen and sum(map(len, chosen.values())) == 7
    with pytest.raises(ValueError, match="only 7 remain"):
        lowest(heads, 8)
    with pytest.raises(ValueError, match="at least one batch"):
        gate_importance(model, [])


def test_a_uniform_head_has_the_highest_entropy():
    model = tiny("bert")
    model.set_attn_implementation("eager")
    with torch.no_grad():  # equal scores: attention uniform over the real tokens
        layer_parts(model)[0].query.weight[HEAD_SIZE:2 * HEAD_SIZE] = 0
        layer_parts(model)[0].query.bias[HEAD_SIZE:2 * HEAD_SIZE] = 0
    entropy = attention_entropy(model, batches())
    data = batch()
    lengths = data["attention_mask"].sum(1).tolist()  # each real token attends over its row
    uniform = sum(n * math.log(n) for n in lengths) / sum(lengths)
    assert entropy[0, 1].item() == pytest.approx(uniform, rel=1e-5)
    assert entropy.argmax().item() == 1


def test_rounded_selection_keeps_a_multiple_per_layer_and_drops_the_lowest_within_it():
    scores = torch.arange(3 * 20, dtype=torch.float).reshape(3, 20)
    scores[2, 18:] = float("nan")  # two neurons of layer 2 already removed
    chosen = lowest(scores, 25, multiple=8)
    kept = [20 - len(chosen.get(0, [])), 20 - len(chosen.get(1, [])), 18 - len(chosen.get(2, []))]
    # the global choice is layer 0 whole and 5 of layer 1 (keeping 15 -> rounded to 16), none
    # of layer 2 (keeping 18 -> 16)
    assert kept == [0, 16, 16]
    for positions in chosen.values():  # within a layer, the lowest go first
        assert positions == list(range(len(positions)))
    assert 18 not in chosen.get(2, []) and 19 not in chosen.get(2, [])


def test_weight_magnitude_ranks_silenced_units_lowest_without_data():
    model = tiny("bert")
    parts = layer_parts(model)
    with torch.no_grad():  # head 1 of layer 0 writes nothing; neuron 5 of layer 2 reads nothing
        parts[0].attention_output.weight[:, HEAD_SIZE:2 * HEAD_SIZE] = 0
        parts[2].intermediate.weight[5] = 0
        parts[1].value.weight[3 * HEAD_SIZE:] *= 100  # head 3 of layer 1 reads much louder
    prune_heads(model, {2: [0]})
    heads, neurons = weight_magnitude(model)
    assert heads.shape == (3, 4) and neurons.shape == (3, 48)
    assert heads[0, 1] == 0 and heads[1].argmax() == 3 and heads[2, 3].isnan()
    assert neurons[2, 5] == 0 and (neurons.flatten() > 0).sum() == 3 * 48 - 1
    assert lowest(heads, 1) == {0: [1]} and lowest(neurons, 1) == {2: [5]}
