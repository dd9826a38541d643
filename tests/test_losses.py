"""Each loss against a value computed by hand."""

import math
from types import SimpleNamespace

import pytest
import torch

from fincompress.distill.kd import CrossEntropyLoss, KDLoss, kl_teacher_student
from fincompress.distill.layer_map import layer_matches
from fincompress.distill.loss import ModelShapes
from fincompress.distill.pkd import PKDLoss, normalized_cls_distance
from fincompress.distill.tinybert import TinyBERTLoss, masked_attention_mse, masked_hidden_mse


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_kl_at_temperature_one_by_hand():
    student, teacher = [1.0, 0.0, -1.0], [2.0, 0.5, 0.0]
    p, q = softmax(teacher), softmax(student)
    expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    value = kl_teacher_student(torch.tensor([student]), torch.tensor([teacher]))
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_applies_t_squared_and_mixes_ce():
    student, teacher, temperature = [1.0, 0.0, -1.0], [2.0, 0.5, 0.0], 5.0
    p = softmax([t / temperature for t in teacher])
    q = softmax([s / temperature for s in student])
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    ce = -math.log(softmax(student)[2])
    loss, parts = KDLoss(temperature=temperature, alpha=0.7).kd_terms(
        torch.tensor([student]), torch.tensor([teacher]), torch.tensor([2]))
    assert parts["kl"].item() == pytest.approx(kl, rel=1e-4)  # float32 of a small KL
    assert loss.item() == pytest.approx(0.7 * kl * 25 + 0.3 * ce, rel=1e-5)


def test_kd_rejects_bad_settings():
    with pytest.raises(ValueError, match="temperature"):
        KDLoss(temperature=0)
    with pytest.raises(ValueError, match="alpha"):
        KDLoss(alpha=1.5)


def test_normalized_cls_distance_by_hand():
    student = torch.tensor([[3.0, 4.0]])  # normalised: (0.6, 0.8)
    teacher = torch.tensor([[0.0, 2.0]])  # normalised: (0, 1)
    assert normalized_cls_distance(student, teacher).item() == pytest.approx(0.36 + 0.04)
    assert normalized_cls_distance(student, 7 * student).item() == pytest.approx(0.0, abs=1e-7)


def _output(logits, hidden_states=None, attentions=None):
    return SimpleNamespace(logits=logits, hidden_states=hidden_states, attentions=attentions)


def test_pkd_of_identical_states_is_plain_kd():
    torch.manual_seed(0)
    hidden = tuple(torch.randn(4, 5, 8) for _ in range(5))  # embeddings + 4 layers
    logits, teacher_logits = torch.randn(4, 3), torch.randn(4, 3)
    batch = {"labels": torch.tensor([0, 1, 2, 1])}
    pkd = PKDLoss(ModelShapes(4, 4, 8, 8),
                  pkd_beta=0.02, layer_map="skip")
    teacher_cls = torch.stack([hidden[i][:, 0] for i in pkd.teacher_cls_layers], dim=1)
    loss, parts = pkd(_output(logits, hidden), {"logits": teacher_logits, "cls": teacher_cls}, batch)
    kd, _ = pkd.kd.kd_terms(logits, teacher_logits, batch["labels"])
    assert parts["pkd"].item() == pytest.approx(0.0, abs=1e-6)
    assert loss.item() == pytest.approx(kd.item(), rel=1e-6)
    # different states: beta times the summed distances
    other = teacher_cls.flip(0)
    loss, parts = pkd(_output(logits, hidden), {"logits": teacher_logits, "cls": other}, batch)
    expected = sum(0.02 * normalized_cls_distance(hidden[m.student_layer][:, 0],
                                                  other[:, pkd.teacher_cls_layers.index(m.teacher_layer)])
                   for m in pkd.matches)
    assert parts["pkd"].item() == pytest.approx(expected.item(), rel=1e-5) and expected > 0


def test_pkd_projects_when_widths_differ():
    pkd = PKDLoss(ModelShapes(2, 4, 8, 16))
    assert isinstance(pkd.projection, torch.nn.Linear) and pkd.projection.in_features == 8
    assert [(m.teacher_layer, m.student_layer) for m in pkd.matches] == [(2, 1)]


def test_layer_map_strategies_and_checks():
    def pairs(strategy, student, teacher):
        return [(m.student_layer, m.teacher_layer)
                for m in layer_matches(strategy, student, teacher, ["cls"], 1.0)]

    assert pairs("skip", 6, 12) == [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10)]
    assert pairs("last", 3, 12) == [(1, 10), (2, 11)]
    assert pairs("uniform", 4, 12) == [(1, 3), (2, 6), (3, 9), (4, 12)]
    explicit = [{"teacher_layer": 12, "student_layer": 4, "feature": "cls", "weight": 0.5}]
    assert layer_matches(explicit, 4, 12, ["cls"], 1.0)[0].weight == 0.5
    with pytest.raises(ValueError, match="teacher has layers 0..6"):
        layer_matches([{"teacher_layer": 12, "student_layer": 1}], 4, 6, ["cls"], 1.0)
    with pytest.raises(ValueError, match="skip, last, uniform"):
        layer_matches("diagonal", 4, 12, ["cls"], 1.0)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['loss'\]"):  # not silently dropped
        layer_matches([{**explicit[0], "loss": "mse"}], 4, 12, ["cls"], 1.0)


def test_layer_matching_losses_need_the_models_shapes():
    with pytest.raises(ValueError, match="PKD matches layers"):
        PKDLoss()
    assert KDLoss(ModelShapes(2, 4, 8, 16)).teacher_cls_layers == []  # KD ignores the shapes


def test_hidden_mse_ignores_padding_by_hand():
    mask = torch.tensor([[1, 1, 0]])
    student = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]]])
    teacher = torch.tensor([[[0.0, 2.0], [3.0, 2.0], [0.0, 0.0]]])
    # real tokens: squared errors 1, 0, 0, 4 over 2 tokens x 2 features
    assert masked_hidden_mse(student, teacher, mask).item() == pytest.approx(5 / 4)
    student[0, 2] = torch.tensor([-7.0, 9.0])  # padding may hold anything
    assert masked_hidden_mse(student, teacher, mask).item() == pytest.approx(5 / 4)


def test_attention_mse_averages_heads_over_real_pairs():
    mask = torch.tensor([[1, 0]])
    student = torch.zeros(1, 2, 2, 2)
    student[0, 0, 0, 0], student[0, 1, 0, 0] = 1.0, 0.0  # head mean at (0, 0): 0.5
    student[0, :, 1, 1] = 50.0  # a padded query/key pair
    teacher = torch.zeros(1, 3, 2, 2)  # head counts may differ
    assert masked_attention_mse(student, teacher, mask).item() == pytest.approx(0.25)


def test_tinybert_loss_sums_weighted_features():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    s_hidden = tuple(torch.randn(2, 4, 8) for _ in range(3))
    t_hidden = tuple(torch.randn(2, 4, 16) for _ in range(5))
    s_att = tuple(torch.rand(2, 2, 4, 4) for _ in range(2))
    t_att = tuple(torch.rand(2, 4, 4, 4) for _ in range(4))
    loss_fn = TinyBERTLoss(ModelShapes(2, 4, 8, 16),
                           feature_weight=0.1)
    logits, teacher_logits = torch.randn(2, 3), torch.randn(2, 3)
    batch = {"labels": torch.tensor([0, 2]), "attention_mask": mask}
    teacher = {"logits": teacher_logits, "hidden_states": t_hidden, "attentions": t_att}
    loss, parts = loss_fn(_output(logits, s_hidden, s_att), teacher, batch)
    kd, _ = loss_fn.kd.kd_terms(logits, teacher_logits, batch["labels"])
    hidden = sum(0.1 * masked_hidden_mse(loss_fn.projection(s_hidden[s]), t_hidden[t], mask)
                 for s, t in [(1, 2), (2, 4)])
    attention = sum(0.1 * masked_attention_mse(s_att[s - 1], t_att[t - 1], mask)
                    for s, t in [(1, 2), (2, 4)])
    assert loss.item() == pytest.approx((kd + hidden + attention).item(), rel=1e-5)
    assert loss_fn.needs_attentions


def test_cross_entropy_loss_uses_batch_labels():
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    loss, _ = CrossEntropyLoss()(_output(logits), {}, {"labels": torch.tensor([0])})
    assert loss.item() == pytest.approx(-math.log(softmax([2.0, 0.0, 0.0])[0]), rel=1e-6)


def test_weighted_terms_sum_to_the_loss_for_every_distillation_loss():
    """The ``term_`` parts are what the module logs as each term's share of the loss."""
    torch.manual_seed(0)
    hidden = tuple(torch.randn(4, 5, 8) for _ in range(5))
    logits, teacher_logits = torch.randn(4, 3), torch.randn(4, 3)
    batch = {"labels": torch.tensor([0, 1, 2, 1]), "attention_mask": torch.ones(4, 5)}
    kd_loss, kd_parts = KDLoss(temperature=5.0, alpha=0.7)(_output(logits), {"logits": teacher_logits}, batch)
    pkd = PKDLoss(ModelShapes(4, 4, 8, 8),
                  pkd_beta=0.5)
    cls = torch.stack([hidden[i][:, 0].flip(0) for i in pkd.teacher_cls_layers], dim=1)
    pkd_loss, pkd_parts = pkd(_output(logits, hidden), {"logits": teacher_logits, "cls": cls}, batch)
    attentions = tuple(torch.rand(4, 2, 5, 5) for _ in range(4))
    tiny = TinyBERTLoss(ModelShapes(4, 4, 8, 8))
    tiny_loss, tiny_parts = tiny(_output(logits, hidden, attentions),
                                 {"logits": teacher_logits, "hidden_states": hidden[::-1],
                                  "attentions": attentions[::-1]}, batch)
    for loss, parts, terms in ((kd_loss, kd_parts, {"term_kd", "term_ce"}),
                               (pkd_loss, pkd_parts, {"term_kd", "term_ce", "term_pkd"}),
                               (tiny_loss, tiny_parts, {"term_kd", "term_ce", "term_hidden",
                                                        "term_attention"})):
        assert {k for k in parts if k.startswith("term_")} == terms
        assert sum(parts[k] for k in terms).item() == pytest.approx(loss.item(), rel=1e-5)
        assert all(parts[k] > 0 for k in terms)
    assert kd_parts["term_kd"].item() == pytest.approx(0.7 * 25 * kd_parts["kl"].item(), rel=1e-5)


def test_attention_mse_is_per_head_when_head_counts_match():
    mask = torch.tensor([[1, 1]])
    student = torch.zeros(1, 2, 2, 2)
    teacher = torch.zeros(1, 2, 2, 2)
    student[0, 0, 0, 0], teacher[0, 1, 0, 0] = 1.0, 1.0  # the heads disagree; their means agree
    # 2 heads x 4 pairs, two squared errors of 1
    assert masked_attention_mse(student, teacher, mask).item() == pytest.approx(2 / 8)


def test_tinybert_two_phases_train_features_then_soft_labels():
    torch.manual_seed(0)
    mask = torch.ones(2, 4, dtype=torch.long)
    hidden = tuple(torch.randn(2, 4, 8) for _ in range(3))
    attentions = tuple(torch.rand(2, 2, 4, 4) for _ in range(2))
    logits, teacher_logits = torch.randn(2, 3), torch.randn(2, 3)
    batch = {"labels": torch.tensor([0, 2]), "attention_mask": mask}
    teacher = {"logits": teacher_logits, "hidden_states": tuple(h.flip(0) for h in hidden),
               "attentions": tuple(a.flip(0) for a in attentions)}
    loss_fn = TinyBERTLoss(ModelShapes(2, 2, 8, 8),
                           feature_weight=1.0, intermediate_epochs=1)
    kd, _ = loss_fn.kd.kd_terms(logits, teacher_logits, batch["labels"])
    loss_fn.start_epoch(0, max_epochs=2)
    features, parts = loss_fn(_output(logits, hidden, attentions), teacher, batch)
    assert parts["term_kd"] == 0 and features.item() == pytest.approx(
        (parts["term_hidden"] + parts["term_attention"]).item())
    assert features.item() > 0 and parts["kl"] > 0  # KL still logged, not trained
    loss_fn.start_epoch(1, max_epochs=2)
    prediction, parts = loss_fn(_output(logits, hidden, attentions), teacher, batch)
    assert prediction.item() == pytest.approx(kd.item()) and "term_hidden" not in parts
    with pytest.raises(ValueError, match="intermediate_epochs=1 leaves no prediction-layer epoch"):
        loss_fn.start_epoch(0, max_epochs=1)
