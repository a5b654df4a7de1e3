"""Independent reference for `cnclip classify --templates zh` (tests/classify_test.cpp).

From the same bundle, with PyTorch alone: the TorchScript towers loaded by torch.jit, the image
tensor from the fixtures' preprocess/NAME.npy (made by cn_clip's own transform), the label prompts
from Chinese-CLIP's 80 Chinese ImageNet templates (cn_clip/eval/imagenet_zeroshot_templates.py,
openai_imagenet_template) written out here, and the token ids from `cnclip tokenize` (the
tokenizer is checked against cn_clip's ids elsewhere). Then cn_clip's zero-shot recipe: normalize
each prompt embedding, mean over the templates, normalize; logits = exp(logit_scale) * cosine;
softmax over the labels, in float64.

usage: classify_zh_reference.py CNCLIP BUNDLE IMAGE_NPY LABEL...
prints one JSON object: {"LABEL": {"probability": P, "score": S}, ...}
"""
import json
import subprocess
import sys

import numpy as np
import torch

TEMPLATES = [
    "{}的照片。", "质量差的{}的照片。", "许多{}的照片。", "{}的雕塑。", "难以看到{}的照片。",
    "{}的低分辨率照片。", "{}的渲染。", "涂鸦{}。", "{}的糟糕照片。", "{}的裁剪照片。",
    "{}的纹身。", "{}的刺绣照片。", "很难看到{}的照片。", "{}的明亮照片。", "一张干净的{}的照片。",
    "一张包含{}的照片。", "{}的深色照片。", "{}的手绘画。", "我的{}的照片。", "不自然的{}的照片。",
    "一张酷的{}的照片。", "{}的特写照片。", "{}的黑白照片。", "一幅{}的画。", "一幅{}的绘画。",
    "一张{}的像素照片。", "{}的雕像。", "一张{}的明亮照片。", "{}的裁剪照片。", "人造的{}的照片。",
    "一张关于{}的照片。", "损坏的{}的jpeg照片。", "{}的模糊照片。", "{}的相片。", "一张{}的好照片。",
    "{}的渲染照。", "视频游戏中的{}。", "一张{}的照片。", "{}的涂鸦。", "{}的近距离照片。",
    "{}的折纸。", "{}在视频游戏中。", "{}的草图。", "{}的涂鸦照。", "{}的折纸形状。",
    "低分辨率的{}的照片。", "玩具{}。", "{}的副本。", "{}的干净的照片。", "一张大{}的照片。",
    "{}的重现。", "一张漂亮的{}的照片。", "一张奇怪的{}的照片。", "模糊的{}的照片。", "卡通{}。",
    "{}的艺术作品。", "{}的素描。", "刺绣{}。", "{}的像素照。", "{}的拍照。",
    "{}的损坏的照片。", "高质量的{}的照片。", "毛绒玩具{}。", "漂亮的{}的照片。", "小{}的照片。",
    "照片是奇怪的{}。", "漫画{}。", "{}的艺术照。", "{}的图形。", "大{}的照片。",
    "黑白的{}的照片。", "{}毛绒玩具。", "一张{}的深色照片。", "{}的摄影图。", "{}的涂鸦照。",
    "玩具形状的{}。", "拍了{}的照片。", "酷酷的{}的照片。", "照片里的小{}。", "{}的刺青。",
]
assert len(TEMPLATES) == 80


def main():
    cnclip, bundle, image_npy, labels = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    manifest = json.load(open(f"{bundle}/bundle.json", encoding="utf-8"))
    scale = float(manifest["logit_scale"])
    text_tower = torch.jit.load(f"{bundle}/text_encoder.pt").eval()
    image_tower = torch.jit.load(f"{bundle}/image_encoder.pt").eval()

    prompts = [t.format(label) for label in labels for t in TEMPLATES]
    out = subprocess.run([cnclip, "tokenize", "--model", bundle, "-"], input="\n".join(prompts) + "\n",
                         capture_output=True, text=True, check=True).stdout
    ids = [json.loads(line)["ids"] for line in out.splitlines()]
    assert len(ids) == len(prompts)
    with torch.no_grad():
        text = text_tower(torch.tensor(ids, dtype=torch.int64)).double()
        image = image_tower(torch.from_numpy(np.load(image_npy)).unsqueeze(0)).double()
    text = text / text.norm(dim=-1, keepdim=True)
    classes = text.reshape(len(labels), len(TEMPLATES), -1).mean(dim=1)
    classes = classes / classes.norm(dim=-1, keepdim=True)
    image = image / image.norm(dim=-1, keepdim=True)
    cosine = (image @ classes.T)[0]
    probs = torch.softmax(scale * cosine, dim=0)
    print(json.dumps({label: {"probability": float(p), "score": float(s)}
                      for label, p, s in zip(labels, probs, cosine)}, ensure_ascii=False))


if __name__ == "__main__":
    main()
