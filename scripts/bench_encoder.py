#!/usr/bin/env python3
"""PyTorch baseline for scripts/bench-encoder: the same documents, the same
model, the same work as Tessera's encoder bench (tokenise without padding,
sort by length, batch with dynamic padding, BertModel forward, L2-normalise,
drop punctuation and padding), timed end to end. Prints one JSON line."""
import argparse
import json
import resource
import string
import time

import torch
from transformers import BertModel, PreTrainedTokenizerFast


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--docs", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--doc-maxlen", type=int, default=300)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: torch.autocast to bfloat16 (what a PyTorch user would run)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)

    texts = []
    with open(a.corpus) as f:
        for line in f:
            if len(texts) == a.docs:
                break
            d = json.loads(line)
            texts.append(f"{d.get('title', '')} {d.get('text', '')}".strip())

    tok = PreTrainedTokenizerFast(tokenizer_file=f"{a.model}/tokenizer.json")
    tok.backend_tokenizer.no_padding()
    tok.backend_tokenizer.no_truncation()
    model = BertModel.from_pretrained(a.model, add_pooling_layer=False).eval().to(device)
    skip = {tok.convert_tokens_to_ids(c) for c in string.punctuation}
    skip.discard(tok.unk_token_id)

    def encode(batch_texts):
        enc = tok(batch_texts, truncation=True, max_length=a.doc_maxlen)["input_ids"]
        order = sorted(range(len(enc)), key=lambda i: -len(enc[i]))
        out, tokens = [None] * len(enc), 0
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.precision == "bf16")
        with torch.inference_mode(), autocast:
            for s in range(0, len(order), a.batch_size):
                idx = order[s : s + a.batch_size]
                width = len(enc[idx[0]])
                ids = torch.zeros(len(idx), width, dtype=torch.long)
                mask = torch.zeros(len(idx), width, dtype=torch.long)
                for r, i in enumerate(idx):
                    ids[r, : len(enc[i])] = torch.tensor(enc[i])
                    mask[r, : len(enc[i])] = 1
                    tokens += len(enc[i])
                h = model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
                h = torch.nn.functional.normalize(h, dim=-1).float().cpu()
                for r, i in enumerate(idx):
                    keep = [j for j, t in enumerate(enc[i]) if t not in skip]
                    out[i] = h[r, keep]
        return out, tokens

    encode(texts[: a.batch_size])  # warm-up
    best, tokens = float("inf"), 0
    for _ in range(max(1, a.repeat)):
        t0 = time.perf_counter()
        _, tokens = encode(texts)
        best = min(best, time.perf_counter() - t0)
    print(json.dumps({
        "impl": "pytorch",
        "precision": a.precision,
        "torch": torch.__version__,
        "device": str(device),
        "docs": len(texts),
        "batch_size": a.batch_size,
        "threads": a.threads,
        "tokens": tokens,
        "seconds": best,
        "tokens_per_s": tokens / best,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
