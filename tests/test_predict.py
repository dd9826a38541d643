"""The one predictor interface: any batching gives the same logits, in input order."""

import torch

from fincompress.models.sources import load_classifier
from fincompress.predict import load

LABELS = ["negative", "neutral", "positive"]
TEXTS = ["Sales rose .", "Operating profit fell to EUR 3.1 mn from EUR 5.2 mn a year earlier .",
         "The company is based in Espoo , Finland .", "Shares slumped .", "Net sales grew 12 % ."]


def test_sorted_unsorted_and_any_batch_size_agree_in_input_order(tmp_path):
    model, tokenizer = load_classifier("bundled:minilm-l6", LABELS, random_init=True,
                                       config_overrides={"num_hidden_layers": 1})
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    predictor = load(tmp_path, LABELS, "32-true")
    with torch.no_grad():  # each sentence alone, unpadded: the reference
        reference = torch.cat([model.eval()(**tokenizer(text, return_tensors="pt")).logits
                               for text in TEXTS])
    for batch_size in (1, 2, 32):
        for sort in (True, False):
            logits = torch.from_numpy(predictor.logits(TEXTS, batch_size, sort=sort))
            torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-4)
    ids = predictor.encode(TEXTS)
    assert [len(i) for i in ids] == [len(tokenizer(t)["input_ids"]) for t in TEXTS]
    torch.testing.assert_close(torch.from_numpy(predictor.logits_ids(ids[::-1], 2)),
                               reference.flip(0), atol=1e-5, rtol=1e-4)
