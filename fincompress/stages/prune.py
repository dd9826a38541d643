"""The prune -> recover stage behind ``python train.py +experiment=prune``.

Iterative global pruning (Michel et al. 2019): each round scores every remaining attention head
and FFN neuron (gate-gradient importance, or attention entropy for heads), removes the
lowest-scoring share of what the target still needs, then recovers with KD fine-tuning
against the unpruned model (its logits on the PhraseBank training sentences) and keeps the
best epoch on validation. Removed units are gone from the model, so they are never selected
again. Every round's model is a stored stage (``outputs/stages/prune/<key>/model``) that loads
with :func:`fincompress.models.sources.load_classifier`. The run scores the source and every
round on the test split and times them side by side.
"""

from __future__ import annotations

import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fincompress.artifacts import save_model_folder
from fincompress.compress.importance import attention_entropy, gate_importance, lowest
from fincompress.compress.prune import layer_parts, prune_ffn, prune_heads, pruning_record
from fincompress.data.datamodule import data_settings
from fincompress.files import write_json
from fincompress.models.sources import attention_implementation, load_classifier
from fincompress.scoring import caption, score, with_mib
from fincompress.stages.distill import robustness
from fincompress.stages.teacher import ensure_teacher
from fincompress.store import ensure_stage, folder_fingerprint
from fincompress.tables import markdown_table
from fincompress.training import (
    choose_precision,
    kd_finetune,
    stage_config,
    trainer_settings,
    training_split_logits,
)


def check_targets(prune: DictConfig) -> None:
    for name in ("heads", "ffn"):
        share = prune[name]
        if not 0 <= share < 1:
            raise ValueError(f"prune.{name}={share}: the share of {name} to remove must be at least "
                             "0 and below 1 (0.3 removes 30%); 1 or more would remove everything")
    if prune.heads == 0 and prune.ffn == 0:
        raise ValueError("prune.heads and prune.ffn are both 0: nothing to prune; set e.g. "
                         "prune.heads=0.3")
    if prune.rounds < 1:
        raise ValueError(f"prune.rounds={prune.rounds}: must be at least 1")
    if prune.importance not in ("gate", "entropy"):
        raise ValueError(f"prune.importance={prune.importance!r}: use gate or entropy")


def run_prune(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    check_targets(cfg.prune)
    machine = choose_precision(cfg)
    labels = list(cfg.data.labels)
    source_dir = ensure_teacher(cfg) if cfg.prune.source is None else Path(cfg.prune.source)
    source, tokenizer = load_classifier(str(source_dir), labels)
    layer_parts(source)  # fails early, naming the model type, if pruning does not support it
    output_dir = Path(cfg.paths.output_dir)
    phrasebank = instantiate(stage_config(cfg, output_dir).data, tokenizer=tokenizer)
    phrasebank.setup()
    cached: list = []  # the source's logits, computed only when a round must be trained

    def source_logits():
        if not cached:
            cached.append(training_split_logits(source_dir, labels, cfg.trainer.precision,
                                                phrasebank, "source logits on the training split"))
        return cached[0]

    heads_total = source.config.num_hidden_layers * source.config.num_attention_heads
    neurons_total = source.config.num_hidden_layers * source.config.intermediate_size
    previous, rounds = source_dir, []
    for round_number in range(1, cfg.prune.rounds + 1):
        inputs = prune_round_inputs(cfg, source_dir, round_number)
        targets = (round(cfg.prune.heads * heads_total * round_number / cfg.prune.rounds),
                   round(cfg.prune.ffn * neurons_total * round_number / cfg.prune.rounds))

        def build(staging: Path, previous=previous, round_number=round_number, targets=targets):
            model, _ = load_classifier(str(previous), labels)
            removed = prune_round(cfg, model, phrasebank, targets, heads_total, neurons_total)
            best_val = kd_finetune(cfg, cfg.prune.recover, model, tokenizer, phrasebank,
                                   source_logits(), staging, prefix="recover")
            save_model_folder(model, tokenizer, staging / "model", {
                "stage": "prune", "source": str(source_dir), "round": round_number,
                "from": str(previous), "removed_this_round": removed,
                "heads_removed": heads_total - _heads(model),
                "ffn_neurons_removed": neurons_total - _neurons(model),
                "best_val_f1_macro": best_val, "labels": labels, "machine": machine,
                "prune": OmegaConf.to_container(cfg.prune, resolve=True)})

        folder, reused = ensure_stage(cfg.paths.output_root, "prune", inputs, build,
                                      collective=True)
        print(f"{'reusing' if reused else 'stored'} pruning round {round_number}: {folder / 'model'}")
        previous = folder / "model"
        rounds.append(previous)

    result = score_rounds(cfg, source_dir, rounds, labels, output_dir, machine)
    # the last round's label agreement with the teacher on the robustness hold-out, where the
    # teacher is known without training one: the pruned teacher itself, or teacher_checkpoint
    teacher_dir = source_dir if cfg.prune.source is None else cfg.get("teacher_checkpoint")
    if teacher_dir:
        result["robustness"] = robustness(cfg, Path(teacher_dir), {"pruned": rounds[-1]})
    result["wall_time_s"] = round(time.perf_counter() - started, 1)
    write_json(result, output_dir / "results.json")
    plot_pruning_curve(result, output_dir / "pruning_curve.png")
    print(table(result))
    final = result["models"][-1]
    return {"metrics": {"test/f1_macro": final["f1_macro"]}, **result}


def prune_round_inputs(cfg: DictConfig, source_dir: Path, round_number: int) -> dict:
    """What decides a stored pruning round: the source model, the pruning settings, the round,
    the data, the seed and the trainer."""
    return {"source": folder_fingerprint(source_dir), "prune": cfg.prune, "round": round_number,
            "data": data_settings(cfg), "seed": cfg.seed, "trainer": trainer_settings(cfg)}


def _heads(model) -> int:
    return sum(map(len, pruning_record(model)["kept_heads"].values()))


def _neurons(model) -> int:
    return sum(pruning_record(model)["intermediate_sizes"].values())


def prune_round(cfg, model, phrasebank, targets, heads_total, neurons_total) -> dict:
    """Remove what the round's targets (total heads, total neurons removed so far) still need,
    lowest importance first, over all layers at once."""
    heads_to_remove = targets[0] - (heads_total - _heads(model))
    neurons_to_remove = targets[1] - (neurons_total - _neurons(model))
    batches = list(phrasebank.train_dataloader())
    if cfg.prune.importance_sentences:
        batches = batches[:max(1, cfg.prune.importance_sentences // phrasebank.batch_size)]
    head_scores, neuron_scores = gate_importance(model, batches)
    if cfg.prune.importance == "entropy":  # diffuse heads go first
        with attention_implementation(model, "eager"):  # the maps are needed
            head_scores = -attention_entropy(model, batches)
    removed = {"heads": {}, "ffn_neurons": 0}
    if heads_to_remove > 0:
        kept = pruning_record(model)["kept_heads"]
        positions = lowest(head_scores, heads_to_remove)
        heads = {layer: [kept[layer][p] for p in chosen] for layer, chosen in positions.items()}
        prune_heads(model, heads)
        removed["heads"] = heads
    if neurons_to_remove > 0:
        neurons = lowest(neuron_scores, neurons_to_remove, cfg.prune.ffn_multiple)
        prune_ffn(model, neurons)
        removed["ffn_neurons"] = sum(map(len, neurons.values()))
    return removed


def score_rounds(cfg, source_dir: Path, rounds: list[Path], labels, output_dir: Path,
          machine: dict) -> dict:
    """The source and every round on the test split, timed interleaved at batch 32 (PyTorch in
    this job's precision), with each model's heads and FFN neurons."""
    folders = {"source": source_dir, **{f"round {i}": f for i, f in enumerate(rounds, 1)}}
    result = score(folders, labels, output_dir / "split" / "test.csv", machine,
                   precision=cfg.trainer.precision, repeats=cfg.prune.timing_repeats,
                   min_round_s=cfg.benchmark.min_round_s)
    for row in result["models"]:
        model, _ = load_classifier(row["dir"], labels)
        row.update(heads=_heads(model), ffn_neurons=_neurons(model))
    result["prune"] = OmegaConf.to_container(cfg.prune, resolve=True)
    return result


def plot_pruning_curve(result: dict, path: Path) -> None:
    """Test macro-F1 and batch-32 speed-up against the share of the source's heads and FFN
    neurons removed, one point per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["models"]
    source = rows[0]
    removed = [100 * (1 - (r["heads"] + r["ffn_neurons"]) / (source["heads"] + source["ffn_neurons"]))
               for r in rows]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(removed, [r["f1_macro"] for r in rows], "o-", color="tab:blue")
    axes.set_xlabel("heads and FFN neurons removed (% of the source's)")
    axes.set_ylabel("test macro-F1", color="tab:blue")
    speed = axes.twinx()
    speed.plot(removed, [r["throughput_ratio"] for r in rows], "s--", color="tab:red")
    speed.set_ylabel("batch-32 speed-up vs source", color="tab:red")
    machine = result["machine"]
    axes.set_title(f"Pruning curve ({machine['cpu']}, {machine['precision']})", fontsize=9)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


COLUMNS = [("model", "model"), ("heads", "heads"), ("ffn_neurons", "FFN neurons"),
           ("parameters", "parameters"), ("size_mib", "MiB", ",.1f"),
           ("throughput_sorted", "sentences/s at batch 32", ",.1f"),
           ("throughput_ratio", "speed-up", ".2f"), ("acc", "test accuracy", ".4f"),
           ("f1_macro", "test macro-F1", ".4f"), ("agreement_with_teacher", "agreement", ".3f")]


def table(result: dict) -> str:
    return (f"\nPruning: {caption(result)}, {result['machine']['precision']}\n"
            + markdown_table(with_mib(result["models"]), COLUMNS) + "\n")
