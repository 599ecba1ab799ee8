"""kvpress 0.5.5's DMSPress with decoding=True on the reference prompt, as its pipeline runs it.

Writes fixtures/niah-noise-1k.dms-decoding.json.gz: DMSPress(KnormPress(), threshold=-18.75,
sliding_window_size=128, decoding=True) compresses the context's prefill, then stays active while
the question is fed in one forward and 24 tokens are generated greedily (kvpress's
pipeline.generate_answer). Records, per layer and KV head, how many tokens are unmasked after the
prefill and after the answer, the answer ids and the first answer token's logits.

Usage (the reference environment of shared/reference/setup.sh):
  PY=~/.cache/kvpress-reference/venv/bin/python
  $PY reference/generators/dms_decoding.py --model-dir ~/.cache/kvpress-reference/smollm2-135m-instruct-hf \
      --reference-dir ../shared/reference --out reference/fixtures/niah-noise-1k.dms-decoding.json.gz
"""

import argparse
import gzip
import json
import os
import sys

import torch

THRESHOLD = -18.75
WINDOW = 128
MAX_NEW_TOKENS = 24


def unmasked_counts(model, cache_len):
    counts = []
    for layer in model.model.layers:
        n_heads = model.config.num_key_value_heads
        masked = [0] * n_heads
        indices = getattr(layer.self_attn, "masked_key_indices", None)
        if indices is not None:
            for h in indices[1].tolist():
                masked[h] += 1
        counts.append([cache_len - m for m in masked])
    return counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--reference-dir", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    sys.path.insert(0, args.reference_dir)
    import kvpress_reference as ref  # imports kvpress (and its attention patch)
    from kvpress import DMSPress, KnormPress
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

    tok = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    prompt = json.load(open(os.path.join(args.reference_dir, "prompts", "niah-noise-1k.json")))
    _, _, context_ids, question_ids = ref.split_prompt(tok, prompt["context"], prompt["question"])
    press = DMSPress(press=KnormPress(), threshold=THRESHOLD, sliding_window_size=WINDOW, decoding=True)
    cache = DynamicCache()
    with torch.no_grad():
        with press(model):
            model.model(input_ids=torch.tensor([context_ids]), past_key_values=cache)
        after_prefill = unmasked_counts(model, cache.get_seq_length())
        with press(model):  # kvpress's pipeline: a second `with` for the question and the answer
            n = len(context_ids)
            position_ids = torch.arange(n, n + len(question_ids)).unsqueeze(0)
            out = model(input_ids=torch.tensor([question_ids]), past_key_values=cache,
                        position_ids=position_ids, logits_to_keep=1)
            position_ids = position_ids[:, -1:] + 1
            first_logits = out.logits[0, -1].float().clone()
            ids = [int(out.logits[0, -1].argmax())]
            eos = model.generation_config.eos_token_id
            eos = eos if isinstance(eos, list) else [eos]
            for i in range(MAX_NEW_TOKENS - 1):
                out = model(input_ids=torch.tensor([[ids[-1]]]), past_key_values=cache, position_ids=position_ids + i)
                ids.append(int(out.logits[0, -1].argmax()))
                if ids[-1] in eos:
                    break
        after_answer = unmasked_counts(model, cache.get_seq_length())
    fixture = {
        "generator": "kvpress 0.5.5 DMSPress(KnormPress(), decoding=True), transformers, float32, CPU, SDPA",
        "press": {"press": "dms", "threshold": THRESHOLD, "sliding_window_size": WINDOW, "decoding": True,
                  "inner": {"press": "knorm", "compression_ratio": 0.0}},
        "context_ids": context_ids,
        "question_ids": question_ids,
        "max_new_tokens": MAX_NEW_TOKENS,
        "unmasked_after_prefill": after_prefill,
        "unmasked_after_answer": after_answer,
        "cache_length_after_answer": cache.get_seq_length(),
        "answer_ids": ids,
        "answer_text": tok.decode(ids, skip_special_tokens=True),
        "answer_first_logits": ref.f32(first_logits),
    }
    with gzip.GzipFile(args.out, "wb", mtime=0) as f:
        f.write(json.dumps(fixture, separators=(",", ":")).encode())
    print("answer:", repr(fixture["answer_text"]), "cache", fixture["cache_length_after_answer"])


if __name__ == "__main__":
    main()
