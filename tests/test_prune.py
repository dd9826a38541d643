"""Structured pruning: a pruned model is the same model with those heads (neurons) gated to
zero, smaller by exactly the removed rows and columns, and it saves and reloads."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from fincompress.compress.prune import (
    gate_heads,
    gate_neurons,
    layer_parts,
    prune_ffn,
    prune_heads,
    pruning_record,
)
from fincompress.models.sources import count_parameters, load_classifier

from .conftest import TINY

HEADS, HEAD_SIZE, LAYERS, FFN, HIDDEN = 4, 8, 3, 48, 32


def tiny(model_type: str):
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=120, hidden_size=HIDDEN,
                                  num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                  intermediate_size=FFN, num_labels=3,
                                  id2label={0: "negative", 1: "neutral", 2: "positive"},
                                  label2id={"negative": 0, "neutral": 1, "positive": 2})
    return AutoModelForSequenceClassification.from_config(config).eval()


def batch():
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, 120, (3, 11), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0  # padding must not matter
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def logits(model):
    with torch.no_grad():
        return model(**batch()).logits


# uneven heads per layer, and layer 2 loses every head
REMOVE = {0: [1], 1: [0, 2, 3], 2: [0, 1, 2, 3]}


@pytest.mark.parametrize("model_type", ["bert", "mpnet"])
def test_pruned_heads_equal_gated_heads_and_parameters_drop_exactly(model_type):
    model = tiny(model_type)
    gates = torch.ones(LAYERS, HEADS)
    for layer, heads in REMOVE.items():
        gates[layer, heads] = 0
    handles = gate_heads(model, gates)
    gated = logits(model)
    for handle in handles:
        handle.remove()
    assert not torch.allclose(gated, logits(model), atol=1e-4)  # the gates do something

    before = count_parameters(model)
    prune_heads(model, REMOVE)
    torch.testing.assert_close(logits(model), gated, atol=1e-5, rtol=1e-5)
    removed_heads = sum(map(len, REMOVE.values()))
    # per head: query, key, value rows (weights and biases) and output-projection columns
    assert before - count_parameters(model) == removed_heads * (4 * HIDDEN * HEAD_SIZE + 3 * HEAD_SIZE)
    assert pruning_record(model)["kept_heads"] == {0: [0, 2, 3], 1: [1], 2: []}


@pytest.mark.parametrize("model_type", ["bert", "mpnet"])
def test_pruned_neurons_equal_gated_neurons(model_type):
    model = tiny(model_type)
    remove = {0: list(range(0, FFN, 2)), 2: [5, 6, 7]}
    gates = torch.ones(LAYERS, FFN)
    for layer, neurons in remove.items():
        gates[layer, neurons] = 0
    handles = gate_neurons(model, gates)
    gated = logits(model)
    for handle in handles:
        handle.remove()
    before = count_parameters(model)
    prune_ffn(model, remove)
    torch.testing.assert_close(logits(model), gated, atol=1e-5, rtol=1e-5)
    removed = sum(map(len, remove.values()))
    assert before - count_parameters(model) == removed * (2 * HIDDEN + 1)
    assert [part.intermediate.out_features for part in layer_parts(model)] == [24, 48, 45]


@pytest.mark.parametrize("model_type", ["bert", "mpnet"])
def test_a_pruned_model_saves_and_reloads_with_the_same_logits(model_type, tmp_path,
                                                               minilm_tokenizer):
    model = tiny(model_type)
    prune_heads(model, REMOVE)
    prune_heads(model, {0: [3]})  # a second round, original head ids
    prune_ffn(model, {1: list(range(10))})
    expected = logits(model)
    model.save_pretrained(tmp_path)
    minilm_tokenizer.save_pretrained(tmp_path)
    reloaded, _ = load_classifier(str(tmp_path), ["negative", "neutral", "positive"])
    torch.testing.assert_close(logits(reloaded.eval()), expected, atol=1e-5, rtol=1e-5)
    assert count_parameters(reloaded) == count_parameters(model)
    assert pruning_record(reloaded)["kept_heads"][0] == [0, 2]


def test_pruning_errors_name_the_problem():
    model = tiny("bert")
    prune_heads(model, {0: [1]})
    with pytest.raises(ValueError, match=r"layer 0 has no head \[1\]"):
        prune_heads(model, {0: [1]})  # never removed twice
    with pytest.raises(ValueError, match="has 48 FFN neurons"):
        prune_ffn(model, {0: [48]})
    albert = AutoModelForSequenceClassification.from_config(AutoConfig.for_model(
        "albert", vocab_size=50, hidden_size=16, num_attention_heads=2, intermediate_size=32,
        embedding_size=8, num_hidden_layers=1))
    with pytest.raises(ValueError, match="pruning supports model types bert, mpnet"):
        prune_heads(albert, {0: [0]})


PRUNE_TINY = ["+experiment=prune", *TINY, "prune.rounds=2", "prune.heads=0.5", "prune.ffn=0.25",
              "prune.timing_repeats=1", "prune.ffn_multiple=1"]


def test_prune_experiment_end_to_end_and_reuse(tmp_path, data_dir, capsys, monkeypatch):
    from fincompress.stages.prune import run_prune

    from .conftest import compose_config

    # the stage table times as the benchmark does: each model's passes fill a round (0.3 s: with
    # 0.05 s a pass of the tiny model outlasted the round while a training job shared the cores)
    result = run_prune(compose_config([*PRUNE_TINY, "benchmark.min_round_s=0.3"], tmp_path))
    rows = result["models"]
    assert result["min_round_s"] == 0.3 and min(r["timing_passes"] for r in rows) > 1
    # the tiny teacher: 4 layers x 2 heads, FFN 64; half the heads and a quarter of the neurons
    assert [(r["heads"], r["ffn_neurons"]) for r in rows] == [(8, 256), (6, 224), (4, 192)]
    assert rows[0]["parameters"] > rows[1]["parameters"] > rows[2]["parameters"]
    final, _ = load_classifier(rows[2]["dir"], ["negative", "neutral", "positive"])
    assert sum(map(len, pruning_record(final)["kept_heads"].values())) == 4
    assert "round 2" in capsys.readouterr().out
    assert (tmp_path / "run" / "pruning_curve.png").stat().st_size > 0
    # a stored round keeps its model, not the recovery's Lightning checkpoints
    assert not list((tmp_path / "stages" / "prune").glob("*/checkpoints/*.ckpt"))
    assert (tmp_path / "run" / "results.json").is_file()
    # the last round's agreement with the (unpruned) teacher on the robustness hold-out
    holdout = result["robustness"]
    assert set(holdout) == {"market_posts", "seeking_alpha"}
    assert all(scores["sentences"] > 0 and 0 <= scores["pruned"] <= 1 for scores in holdout.values())

    def no_logits(*_):
        raise AssertionError("the source's logits were computed although every round is stored")

    monkeypatch.setattr("fincompress.stages.prune.training_split_logits", no_logits)
    again = run_prune(compose_config(PRUNE_TINY, tmp_path))  # every round comes from the store
    assert [r["dir"] for r in again["models"]] == [r["dir"] for r in rows]
    assert "reusing pruning round 2" in capsys.readouterr().out


@pytest.mark.parametrize("override, message", [
    ("prune.heads=1.0", "below 1"),
    ("prune.ffn=-0.1", "at least 0"),
    ("prune.importance=random", "use gate or entropy"),
])
def test_bad_pruning_settings_are_refused_before_any_work(override, message, tmp_path):
    from fincompress.stages.prune import run_prune

    from .conftest import compose_config

    with pytest.raises(ValueError, match=message):
        run_prune(compose_config([*PRUNE_TINY, override], tmp_path))
    assert not (tmp_path / "stages").exists()


def test_nothing_to_prune_is_refused(tmp_path):
    from fincompress.stages.prune import run_prune

    from .conftest import compose_config

    with pytest.raises(ValueError, match="nothing to prune"):
        run_prune(compose_config([*PRUNE_TINY, "prune.heads=0", "prune.ffn=0"], tmp_path))
