#!/usr/bin/python3
"""Write a Chinese-CLIP checkpoint with random weights in the official release layout: a dict with
epoch, step, name and a state_dict of 'module.'-prefixed keys, fp16 where cn_clip keeps fp16, plus the
bert.pooler.* keys that released checkpoints carry. For testing the exporter on full-size models
without the real weights (which cannot be downloaded here).

    make_random_checkpoint.py --arch ViT-B-16 --seed 0 --out random_vit-b-16.pt
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="ViT-B-16", choices=sorted(export_model.ARCHS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    export_model.load_torch()
    torch = export_model.torch
    config = export_model.ARCHS[args.arch]
    sd = export_model.random_state_dict(config, args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    h = config["text_hidden_size"]
    state = {"module." + k: v for k, v in sd.items()}
    state["module.bert.pooler.dense.weight"] = (torch.randn(h, h, generator=gen) / h ** 0.5).half()
    state["module.bert.pooler.dense.bias"] = (0.05 * torch.randn(h, generator=gen)).half()
    tmp = args.out + ".tmp"
    torch.save({"epoch": 1, "step": 1, "name": f"random-{args.arch}-seed{args.seed}", "state_dict": state}, tmp)
    os.replace(tmp, args.out)
    print(f"make_random_checkpoint.py: wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
