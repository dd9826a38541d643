#!/bin/bash
# What each source of the frontier's pseudo-labelled corpus adds on validation: the two-layer
# frontier student (KD T=2, seed 42) distilled with one source left out at a time, and with the
# transfer text's augmented variants added (8 word-swapped copies of each sentence), in the
# frontier's settings (scripts/frontier.py), reusing its stored labels. Usage:
#   scripts/source_ablation.sh <teacher model folder> [output folder]
set -euo pipefail
teacher=$1
out=${2:-outputs/source_ablation}
data='${paths.data_dir}/news'
common=(+experiment=kd method.temperature=2 student=minilm_l2 seed=42 teacher=mpnet_base
        "teacher_checkpoint=$teacher" news.max_sentences=null distill.pseudo_label.engine=fastest
        news.batch_size=64 distill.fresh.lr=2e-4 distill.fresh.max_epochs=20
        distill.fresh.patience=3 news.holdout.scored_per_group=null news.max_length=83)
declare -A variants=(
  [no_market_posts]="news.sources=[$data/reuters21578,$data/seeking_alpha]"
  [no_reuters]="news.sources=[$data/stock_tweets,$data/seeking_alpha]"
  [no_phrasebank_transfer]="distill.pseudo_label.add_phrasebank=null"
  [with_augmented]="distill.pseudo_label.augment.variants_per_sentence=8"
)
for name in no_market_posts no_reuters no_phrasebank_transfer with_augmented; do
  if [ -f "$out/$name/results.json" ]; then echo "$name: done earlier"; continue; fi
  echo "$name: ${variants[$name]}"
  python train.py "${common[@]}" "${variants[$name]}" "hydra.run.dir=$out/$name" > "$out/$name.log" 2>&1 \
    || { echo "$name failed: see $out/$name.log"; exit 1; }
done
python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for run in sorted(out.glob("*/results.json")):
    r = json.loads(run.read_text())
    print(f"{run.parent.name}: validation {r['student']['best_val_f1_macro']:.4f}, "
          f"test {r['student']['f1_macro']:.4f}, stage 1 {r['timings']['stage1_s']:.0f} s")
PY
