#!/usr/bin/python3
"""Write a Chinese-CLIP checkpoint with random weights in the official release layout: a dict with
epoch, step, name and a state_dict of 'module.'-prefixed keys, fp16 where cn_clip keeps fp16 (an RN50's
BatchNorm parameters and buffers, num_batches_tracked included, in fp32 and int64), plus the
bert.pooler.* keys that released checkpoints carry. For testing the exporter on full-size models
without the real weights (which cannot be downloaded here).

    make_random_checkpoint.py --arch RN50|ViT-B-16|ViT-L-14|ViT-L-14-336|ViT-H-14 --seed 0 --out ckpt.pt
    make_random_checkpoint.py --config cfg.json --out ckpt.pt   # any cn_clip config, e.g. fewer layers

A released model at reduced depth (same shapes per layer, fewer layers) is a config with smaller
vision_layers / text_num_hidden_layers; export it with the same --config.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--arch", choices=sorted(export_model.ARCHS), help="a known architecture (default ViT-B-16)")
    src.add_argument("--config", help="cn_clip model config JSON (vision and text fields merged)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--logit-scale-shape-1", action="store_true",
                    help="store logit_scale with shape [1] (which cn_clip's loader accepts) instead of []")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    export_model.load_torch()
    torch = export_model.torch
    try:
        if args.config:
            with open(args.config, encoding="utf-8") as f:
                config = export_model.parse_config(json.load(f), args.config)
            export_model.check_config(config, args.config)
            name = os.path.splitext(os.path.basename(args.config))[0]
        else:
            name = args.arch or "ViT-B-16"
            config = export_model.ARCHS[name]
    except (OSError, ValueError, export_model.ExportError) as exc:
        export_model.fail(str(exc))
    sd = export_model.random_state_dict(config, args.seed)
    if args.logit_scale_shape_1:
        sd["logit_scale"] = sd["logit_scale"].reshape(1)
    gen = torch.Generator().manual_seed(args.seed + 1)
    h = config["text_hidden_size"]
    state = {"module." + k: v for k, v in sd.items()}
    state["module.bert.pooler.dense.weight"] = (torch.randn(h, h, generator=gen) / h ** 0.5).half()
    state["module.bert.pooler.dense.bias"] = (0.05 * torch.randn(h, generator=gen)).half()
    tmp = args.out + ".tmp"
    torch.save({"epoch": 1, "step": 1, "name": f"random-{name}-seed{args.seed}", "state_dict": state}, tmp)
    os.replace(tmp, args.out)
    print(f"make_random_checkpoint.py: wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
