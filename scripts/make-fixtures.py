#!/usr/bin/env python3
"""Generate the reference fixtures for the encoder parity tests.

Writes, under training/tests/fixtures/:
  tiny-bert/            a tiny random BERT (config.json, model.safetensors,
                        tokenizer.json with a 3,000-token subset of the
                        MiniLM vocabulary)
  tiny-bert/reference.* Hugging Face `transformers` outputs for it
  tiny-bert.pytorch_model.bin  the same weights saved with torch.save
  ordered-dict.bin      a one-tensor OrderedDict pickle (unsupported case)
  minilm/reference.*    `transformers` outputs of all-MiniLM-L6-v2

reference.json holds the sentences, the token ids the HF tokenizer produced
(with [CLS]/[SEP]) and the padded batch's attention mask; reference.safetensors
holds `hidden.{i}`: the last hidden state of sentence i, [len_i, hidden],
computed on the padded batch. The Rust tests need none of this Python.

Usage (needs torch, transformers, safetensors; scripts/setup's venv plus
`pip install transformers`):
  .venv/bin/python scripts/make-fixtures.py [--minilm DIR]
"""
import argparse
import json
import os
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "training" / "tests" / "fixtures"

SENTENCES = [
    "What causes ocean tides?",
    "The Moon's gravity pulls on Earth's oceans, raising two bulges of water.",
    "Café owners in Zürich  reported   RECORD sales; analysts were surprised!",
    "a",
    "Mitochondria are the powerhouse of the cell, producing ATP through oxidative "
    "phosphorylation in the inner membrane, a process first described in the 1960s.",
]

TINY_VOCAB = 3000  # ids 0..2999 of the uncased BERT vocabulary


def reference(model, tokenizer, out_dir: Path):
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
    tensors, ids = {}, []
    for i in range(len(SENTENCES)):
        n = int(batch["attention_mask"][i].sum())
        ids.append(batch["input_ids"][i, :n].tolist())
        tensors[f"hidden.{i}"] = hidden[i, :n].contiguous().float()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out_dir / "reference.safetensors")
    meta = {
        "generator": "scripts/make-fixtures.py",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "sentences": SENTENCES,
        "input_ids": ids,
    }
    (out_dir / "reference.json").write_text(json.dumps(meta, indent=1) + "\n")


def tiny(minilm: Path):
    out = OUT / "tiny-bert"
    out.mkdir(parents=True, exist_ok=True)
    tok = json.loads((minilm / "tokenizer.json").read_text())
    vocab = {t: i for t, i in tok["model"]["vocab"].items() if i < TINY_VOCAB}
    tok["model"]["vocab"] = vocab
    # Keep the shipped padding/truncation (Fixed 128) on purpose: the Rust
    # tokenizer must switch them off.
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))

    torch.manual_seed(0)
    config = BertConfig(
        # Two spare embedding rows so tests can add PyLate's [Q]/[D] tokens.
        vocab_size=TINY_VOCAB + 2,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_act="gelu",
    )
    model = BertModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():
        for p in model.parameters():  # LayerNorm too: every tensor matters
            p.normal_(0.0, 0.2)
    model.save_pretrained(out, safe_serialization=True)
    # The same weights as a PyTorch zip pickle, for the pytorch_model.bin
    # path. libtorch's unpickler reads plain dicts but turns an OrderedDict
    # (what older `torch.save(model.state_dict())` files hold) into None, so
    # also write a small OrderedDict file to test that error.
    torch.save(dict(model.state_dict()), OUT / "tiny-bert.pytorch_model.bin")
    torch.save(OrderedDict(x=torch.zeros(2)), OUT / "ordered-dict.bin")
    # Drop transformers' generation config; keep config.json lean.
    (out / "generation_config.json").unlink(missing_ok=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(out / "tokenizer.json"),
        cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
        mask_token="[MASK]", unk_token="[UNK]",
    )
    tokenizer.backend_tokenizer.no_truncation()
    reference(model, tokenizer, out)


def real_minilm(minilm: Path):
    model = BertModel.from_pretrained(minilm, add_pooling_layer=False).eval()
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(minilm / "tokenizer.json"))
    tokenizer.pad_token = "[PAD]"
    tokenizer.backend_tokenizer.no_truncation()
    tokenizer.backend_tokenizer.no_padding()
    reference(model, tokenizer, OUT / "minilm")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = os.environ.get("TESSERA_MODEL") or str(
        Path.home() / ".local/share/tessera/models/default"
    )
    ap.add_argument("--minilm", type=Path, default=Path(default))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    tiny(args.minilm)
    real_minilm(args.minilm)
    print(f"fixtures written under {OUT}")


if __name__ == "__main__":
    main()
