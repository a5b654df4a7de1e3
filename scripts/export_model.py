#!/usr/bin/python3
"""Turn a Chinese-CLIP checkpoint into a cnclip model bundle.

    export_model.py --checkpoint clip_cn_vit-b-16.pt --out models/vit-b-16 [--arch ViT-B-16] [--precision fp32|int8]
    export_model.py --checkpoint clip_cn_rn50.pt --print-architecture      # prints RN50
    export_model.py --checkpoint tiny.pt --config tiny_config.json --out DIR
    export_model.py --random-init tiny|ViT-B-16 --seed N --out DIR

Needs only torch (Debian's python3-torch): the towers (cnclip_towers.py) are our own PyTorch definition
of Chinese-CLIP's, computing what cn_clip computes (see ../shared/fixtures/README.md), and the encoders
are written as TorchScript so that cnclip (LibTorch) runs them without Python. Every released model:
RN50 (ModifiedResNet + RBT3, BatchNorm folded into the convolutions), ViT-B-16, ViT-L-14, ViT-L-14-336
and ViT-H-14, recognised from the checkpoint's tensor shapes.

The bundle directory holds image_encoder.pt, text_encoder.pt, vocab.txt and bundle.json. Nothing is
written unless everything succeeds: the bundle is assembled in a temporary directory next to --out and
renamed into place at the end.
"""
import argparse
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile

BUNDLE_FORMAT_VERSION = 1
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_VOCAB = os.path.join(HERE, "..", "models", "vocab.txt")

# cn_clip's model_configs, vision and text fields merged (the same field names as cn_clip uses).
TEXT_BASE = dict(vocab_size=21128, text_hidden_size=768, text_num_attention_heads=12,
                 text_num_hidden_layers=12, text_intermediate_size=3072,
                 text_max_position_embeddings=512, text_type_vocab_size=2)
TEXT_LARGE = dict(vocab_size=21128, text_hidden_size=1024, text_num_attention_heads=16,
                  text_num_hidden_layers=24, text_intermediate_size=4096,
                  text_max_position_embeddings=512, text_type_vocab_size=2)
# RN50's text tower: RBT3, the base BERT cut to 3 layers (cn_clip's RBT3-chinese.json).
TEXT_RBT3 = dict(TEXT_BASE, text_num_hidden_layers=3)
ARCHS = {
    # vision_layers as a list of stage depths makes cn_clip build a ModifiedResNet (RN50.json).
    "RN50": dict(embed_dim=1024, image_resolution=224, vision_layers=[3, 4, 6, 3], vision_width=64,
                 vision_patch_size=None, **TEXT_RBT3),
    "ViT-B-16": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                     vision_patch_size=16, **TEXT_BASE),
    "ViT-L-14": dict(embed_dim=768, image_resolution=224, vision_layers=24, vision_width=1024,
                     vision_patch_size=14, **TEXT_BASE),
    "ViT-L-14-336": dict(embed_dim=768, image_resolution=336, vision_layers=24, vision_width=1024,
                         vision_patch_size=14, **TEXT_BASE),
    "ViT-H-14": dict(embed_dim=1024, image_resolution=224, vision_layers=32, vision_width=1280,
                     vision_patch_size=14, **TEXT_LARGE),
    # The fixture model of ../shared/fixtures/tiny_config.json: for tests and demos only.
    "tiny": dict(embed_dim=32, image_resolution=224, vision_layers=2, vision_width=128,
                 vision_patch_size=16, vocab_size=21128, text_hidden_size=64,
                 text_num_attention_heads=2, text_num_hidden_layers=2, text_intermediate_size=128,
                 text_max_position_embeddings=512, text_type_vocab_size=2),
}
# The released Chinese-CLIP architectures: the only ones inferred from tensor shapes.
RELEASED = ("RN50", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14")
CONFIG_KEYS = ("embed_dim", "image_resolution", "vision_layers", "vision_width", "vision_patch_size",
               "vocab_size", "text_hidden_size", "text_num_attention_heads", "text_num_hidden_layers",
               "text_intermediate_size", "text_max_position_embeddings", "text_type_vocab_size")


class ExportError(Exception):
    """A problem with the user's input, reported as one line."""


def fail(message):
    print(f"export_model.py: error: {message}", file=sys.stderr)
    sys.exit(1)


# Imported only after argument parsing so that --help works without torch (see load_torch).
torch = None
nn = None
F = None
towers = None


def load_torch():
    """Imports torch and the tower classes (scripts/cnclip_towers.py); returns the towers module."""
    global torch, nn, F, towers
    if towers is None:
        import torch as _torch
        sys.path.insert(0, HERE)
        import cnclip_towers
        torch, nn, F, towers = _torch, _torch.nn, _torch.nn.functional, cnclip_towers
    return towers


def is_resnet(config):
    """A list of stage depths in vision_layers: cn_clip's ModifiedResNet (cnclip_towers.is_resnet)."""
    return load_torch().is_resnet(config)


def is_fp16_designated(key):
    """cn_clip's convert_weights makes these fp16 (the weight and bias of every Conv2d and Linear of the
    image tower, the ViT attention's in_proj, visual.proj, text_projection, all of bert); everything
    else stays fp32, the RN50's BatchNorm parameters and buffers and attention-pool positional
    embedding included."""
    if key.startswith("bert.") or key in ("text_projection", "visual.proj", "visual.conv1.weight"):
        return True
    if key.startswith("visual.transformer.") and (".attn." in key or ".mlp." in key):
        return True
    if re.fullmatch(r"visual\.(layer\d+\.\d+\.)?(conv\d|downsample\.0)\.weight", key):
        return True  # RN50 convolutions (bias-free in cn_clip)
    return bool(re.fullmatch(r"visual\.attnpool\.[qkvc]_proj\.(weight|bias)", key))


def model_key_for(checkpoint_key):
    """Map a cn_clip state_dict key to ours (only the vision attention's in_proj differs)."""
    return checkpoint_key.replace("attn.in_proj_weight", "attn.in_proj.weight").replace(
        "attn.in_proj_bias", "attn.in_proj.bias")


BN_STATS = ("weight", "bias", "running_mean", "running_var")
# Keys cn_clip's loader does not require: BatchNorm fills in a missing num_batches_tracked (the
# 'module.'-stripped dict has no version metadata), and nothing computes with it.
OPTIONAL_SUFFIX = ".num_batches_tracked"


def resnet_convs(c):
    """(conv key prefix, BatchNorm key prefix, out channels, in channels, kernel) of every RN50
    convolution, in cn_clip's ModifiedResNet order."""
    w = c["vision_width"]
    convs = [("visual.conv1", "visual.bn1", w // 2, 3, 3), ("visual.conv2", "visual.bn2", w // 2, w // 2, 3),
             ("visual.conv3", "visual.bn3", w, w // 2, 3)]
    inplanes = w
    for i, blocks in enumerate(c["vision_layers"]):
        planes = w * 2 ** i
        for j in range(blocks):
            b = f"visual.layer{i + 1}.{j}."
            convs += [(b + "conv1", b + "bn1", planes, inplanes, 1), (b + "conv2", b + "bn2", planes, planes, 3),
                      (b + "conv3", b + "bn3", planes * 4, planes, 1)]
            if j == 0 and (i > 0 or inplanes != planes * 4):
                convs.append((b + "downsample.0", b + "downsample.1", planes * 4, inplanes, 1))
            inplanes = planes * 4
    return convs


def vision_shapes(c):
    """The image tower's cn_clip state_dict keys with their shapes."""
    e, w = c["embed_dim"], c["vision_width"]
    if is_resnet(c):
        shapes = {}
        for conv, bn, out, inp, k in resnet_convs(c):
            shapes[conv + ".weight"] = (out, inp, k, k)
            shapes.update({f"{bn}.{n}": (out,) for n in BN_STATS})
            shapes[bn + OPTIONAL_SUFFIX] = ()
        d, grid = w * 32, c["image_resolution"] // 32
        shapes["visual.attnpool.positional_embedding"] = (grid * grid + 1, d)
        for n in ("q", "k", "v"):
            shapes.update({f"visual.attnpool.{n}_proj.weight": (d, d), f"visual.attnpool.{n}_proj.bias": (d,)})
        shapes.update({"visual.attnpool.c_proj.weight": (e, d), "visual.attnpool.c_proj.bias": (e,)})
        return shapes
    p = c["vision_patch_size"]
    grid = c["image_resolution"] // p
    shapes = {
        "visual.class_embedding": (w,), "visual.positional_embedding": (grid * grid + 1, w), "visual.proj": (w, e),
        "visual.conv1.weight": (w, 3, p, p), "visual.ln_pre.weight": (w,), "visual.ln_pre.bias": (w,),
        "visual.ln_post.weight": (w,), "visual.ln_post.bias": (w,),
    }
    for i in range(c["vision_layers"]):
        b = f"visual.transformer.resblocks.{i}."
        shapes.update({
            b + "attn.in_proj_weight": (3 * w, w), b + "attn.in_proj_bias": (3 * w,),
            b + "attn.out_proj.weight": (w, w), b + "attn.out_proj.bias": (w,),
            b + "ln_1.weight": (w,), b + "ln_1.bias": (w,), b + "ln_2.weight": (w,), b + "ln_2.bias": (w,),
            b + "mlp.c_fc.weight": (4 * w, w), b + "mlp.c_fc.bias": (4 * w,),
            b + "mlp.c_proj.weight": (w, 4 * w), b + "mlp.c_proj.bias": (w,),
        })
    return shapes


def expected_shapes(c):
    """Every cn_clip state_dict key with its shape, for config c (keys ending in OPTIONAL_SUFFIX may
    be absent)."""
    h, inter = c["text_hidden_size"], c["text_intermediate_size"]
    shapes = {
        "logit_scale": (), "text_projection": (h, c["embed_dim"]),
        "bert.embeddings.word_embeddings.weight": (c["vocab_size"], h),
        "bert.embeddings.position_embeddings.weight": (c["text_max_position_embeddings"], h),
        "bert.embeddings.token_type_embeddings.weight": (c["text_type_vocab_size"], h),
        "bert.embeddings.LayerNorm.weight": (h,), "bert.embeddings.LayerNorm.bias": (h,),
    }
    shapes.update(vision_shapes(c))
    for i in range(c["text_num_hidden_layers"]):
        b = f"bert.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            shapes[b + f"attention.self.{name}.weight"] = (h, h)
            shapes[b + f"attention.self.{name}.bias"] = (h,)
        shapes.update({
            b + "attention.output.dense.weight": (h, h), b + "attention.output.dense.bias": (h,),
            b + "attention.output.LayerNorm.weight": (h,), b + "attention.output.LayerNorm.bias": (h,),
            b + "intermediate.dense.weight": (inter, h), b + "intermediate.dense.bias": (inter,),
            b + "output.dense.weight": (h, inter), b + "output.dense.bias": (h,),
            b + "output.LayerNorm.weight": (h,), b + "output.LayerNorm.bias": (h,),
        })
    return shapes


def load_checkpoint(path):
    """Return cn_clip's state_dict from an official checkpoint: 'module.' stripped, pooler dropped."""
    if not os.path.isfile(path):
        raise ExportError(f"{path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu")
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise ExportError(f"{path}: not a PyTorch checkpoint ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})")
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise ExportError(f"{path}: not a Chinese-CLIP checkpoint (no state_dict of tensors)")
    if next(iter(sd)).startswith("module"):
        sd = {k[len("module."):]: v for k, v in sd.items() if "bert.pooler" not in k}
    return sd


def count_indices(sd, prefix):
    """How many numbered children prefix has (prefix + 'N.…' keys)."""
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


def infer_config(sd, path):
    """Derive the architecture from tensor shapes; returns (name, config)."""
    try:
        vocab, h = sd["bert.embeddings.word_embeddings.weight"].shape
        c = dict(vocab_size=vocab, text_hidden_size=h, text_num_attention_heads=h // 64,
                 text_num_hidden_layers=count_indices(sd, "bert.encoder.layer."),
                 text_intermediate_size=sd["bert.encoder.layer.0.intermediate.dense.weight"].shape[0],
                 text_max_position_embeddings=sd["bert.embeddings.position_embeddings.weight"].shape[0],
                 text_type_vocab_size=sd["bert.embeddings.token_type_embeddings.weight"].shape[0])
        if "visual.layer1.0.conv1.weight" in sd or "visual.attnpool.c_proj.weight" in sd:  # ModifiedResNet
            grid = int(round(math.sqrt(sd["visual.attnpool.positional_embedding"].shape[0] - 1)))
            c.update(embed_dim=sd["visual.attnpool.c_proj.weight"].shape[0], image_resolution=grid * 32,
                     vision_layers=[count_indices(sd, f"visual.layer{i}.") for i in range(1, 5)],
                     vision_width=sd["visual.conv3.weight"].shape[0], vision_patch_size=None)
        else:
            w, _, p, _ = sd["visual.conv1.weight"].shape
            grid = int(round(math.sqrt(sd["visual.positional_embedding"].shape[0] - 1)))
            c.update(embed_dim=sd["visual.proj"].shape[1], image_resolution=grid * p,
                     vision_layers=count_indices(sd, "visual.transformer.resblocks."),
                     vision_width=w, vision_patch_size=p)
    except KeyError as exc:
        raise ExportError(f"{path}: missing tensor {exc.args[0]!r}; not a Chinese-CLIP checkpoint")
    # Shapes give every field but the text tower's attention head count (the vision tower's is
    # vision_width // 64 by cn_clip's construction). A released architecture with these shapes fixes
    # it; for anything else it would be a guess, and a wrong guess exports a model that runs but
    # computes other embeddings (the fixture's tiny checkpoint: 2 heads of 32, not 1 of 64).
    shape_keys = [k for k in CONFIG_KEYS if k != "text_num_attention_heads"]
    for name in RELEASED:
        if all(ARCHS[name][k] == c[k] for k in shape_keys):
            return name, ARCHS[name]
    raise ExportError(f"{path}: matches no released architecture ({', '.join(RELEASED)}) and its tensor "
                      f"shapes do not determine the text attention head count; give --config FILE "
                      f"(the model's cn_clip config JSON)")


def parse_config(raw, where):
    """A cn_clip model config (vision and text fields merged) -> our config dict. vision_layers is a
    number (ViT) or four stage depths (ModifiedResNet), as a list or, as cn_clip's RN50.json has it,
    a string "[3,4,6,3]"; vision_patch_size is null for a ModifiedResNet."""
    try:
        config = {}
        for k in CONFIG_KEYS:
            v = raw[k]
            if k == "vision_layers" and isinstance(v, str):
                v = json.loads(v)
            if k == "vision_layers" and isinstance(v, list):
                if len(v) != 4 or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
                    raise ValueError(f"vision_layers {raw[k]!r} is not four stage depths")
                config[k] = v
            elif k == "vision_patch_size" and v is None:
                config[k] = None
            else:
                if isinstance(v, bool) or not isinstance(v, (int, float, str)) or int(v) != float(v):
                    raise ValueError(f"{k} {v!r} is not a whole number")
                config[k] = int(v)
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{where}: not a usable model config ({type(exc).__name__}: {exc})")
    return config


def check_config(config, where):
    """Fields the tensor shapes cannot check."""
    resnet = is_resnet(config)
    for k in CONFIG_KEYS:
        if k == "vision_layers" and resnet:
            if min(config[k]) <= 0:
                raise ExportError(f"{where}: every stage of vision_layers must have a block")
        elif k == "vision_patch_size" and resnet:
            if config[k] is not None:
                raise ExportError(f"{where}: vision_patch_size must be null for a ResNet (vision_layers a list)")
        elif config[k] is None or config[k] <= 0:
            raise ExportError(f"{where}: {k} must be positive")
    if config["text_hidden_size"] % config["text_num_attention_heads"]:
        raise ExportError(f"{where}: text_hidden_size {config['text_hidden_size']} is not a multiple of "
                          f"text_num_attention_heads {config['text_num_attention_heads']}")
    if resnet:
        if config["vision_width"] % 2 or config["image_resolution"] % 32:
            raise ExportError(f"{where}: a ResNet needs an even vision_width and an image_resolution that is a "
                              f"multiple of 32 (it has {config['vision_width']} and {config['image_resolution']})")
    elif config["vision_width"] % 64:
        raise ExportError(f"{where}: vision_width {config['vision_width']} is not a multiple of 64 "
                          f"(cn_clip's vision heads are 64 wide)")


def check_state_dict(sd, config, path):
    """Checks every tensor against config (names the first bad one); returns the state dict with a
    scalar stored as shape [1] made a scalar, as PyTorch's load_state_dict (and so cn_clip) accepts."""
    shapes = expected_shapes(config)
    sd = dict(sd)
    for key, shape in shapes.items():
        if key not in sd:
            if key.endswith(OPTIONAL_SUFFIX):
                continue
            raise ExportError(f"{path}: missing tensor '{key}'")
        if tuple(shape) == () and tuple(sd[key].shape) == (1,):
            sd[key] = sd[key].reshape(())
        if tuple(sd[key].shape) != tuple(shape):
            raise ExportError(f"{path}: tensor '{key}' has shape {list(sd[key].shape)}, "
                              f"expected {list(shape)} for this architecture")
    extra = sorted(set(sd) - set(shapes))
    if extra:
        raise ExportError(f"{path}: unexpected tensor '{extra[0]}' ({len(extra)} unexpected in all)")
    for key in shapes:
        if key not in sd:
            continue
        # A damaged checkpoint (or an fp32 value beyond fp16's range, rounded as cn_clip does) would
        # export a bundle whose embeddings are NaN.
        value = sd[key].float()
        if is_fp16_designated(key):
            value = value.half().float()
        if not bool(torch.isfinite(value).all()):
            raise ExportError(f"{path}: tensor '{key}' has NaN or infinite values"
                              + (" (after rounding to fp16, as cn_clip does)" if is_fp16_designated(key) else ""))
        if key.endswith(".running_var") and bool((value < 0).any()):
            raise ExportError(f"{path}: tensor '{key}' has negative values (a BatchNorm variance)")
    return sd


def random_state_dict(config, seed):
    """Random weights in cn_clip's key layout (fp16 where cn_clip keeps fp16), like a real checkpoint."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in expected_shapes(config).items():
        if key == "logit_scale":
            t = torch.tensor(math.log(1 / 0.07))
        elif key.endswith(OPTIONAL_SUFFIX):
            sd[key] = torch.tensor(1000, dtype=torch.long)
            continue
        elif key.endswith("running_var"):
            t = 0.5 + torch.rand(shape, generator=gen)
        elif re.search(r"\.bn3\.weight$", key) and key.startswith("visual.layer"):
            # Small gains at the end of each residual branch, as trained ResNets have (and cn_clip's
            # initialization, zeros): activations then stay in a realistic range over 16 blocks.
            t = 0.25 * (1.0 + 0.1 * torch.randn(shape, generator=gen))
        elif (key.endswith("LayerNorm.weight") or ".ln_" in key and key.endswith("weight")
              or re.search(r"\.(bn\d|downsample\.1)\.weight$", key)):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) >= 2 and "embedding" not in key:
            t = torch.randn(shape, generator=gen) / math.sqrt(shape[-1] if len(shape) == 2 else
                                                              shape[1] * shape[2] * shape[3])
        else:
            t = 0.1 * torch.randn(shape, generator=gen)
        sd[key] = t.half() if is_fp16_designated(key) else t.float()
    if is_resnet(config):
        calibrate_batchnorm(sd, config, gen)
    return sd


def calibrate_batchnorm(sd, config, gen):
    """Sets each BatchNorm's running mean and variance to the statistics of its input over a batch of
    smooth random images, as a trained network's are to its data. With arbitrary statistics a random
    ResNet's output is dominated by constant offsets (cosine 0.99999 between any two images); with
    these, embeddings differ from image to image as a real model's do, so comparisons mean something."""
    res = config["image_resolution"]
    pixels = F.interpolate(torch.randn(8, 3, 7, 7, generator=gen), size=(res, res), mode="bicubic",
                           align_corners=False)
    model = towers.ImageEncoder(config).eval()
    convs = {conv: bn for conv, bn, *_ in resnet_convs(config)}
    own = {model_key_for(k): v.float() for k, v in sd.items() if k.startswith("visual.")}
    for conv in convs:
        own[conv + ".bias"] = torch.zeros(own[conv + ".weight"].shape[0])
    for bn in convs.values():
        for n in BN_STATS + (OPTIONAL_SUFFIX[1:],):
            own.pop(f"{bn}.{n}")
    model.load_state_dict(own)

    def hook(conv):
        bn = convs[conv]

        def apply(_module, _inputs, out):
            mean, var = out.mean(dim=(0, 2, 3)), out.var(dim=(0, 2, 3), unbiased=False)
            sd[bn + ".running_mean"], sd[bn + ".running_var"] = mean.clone(), var.clone()
            return F.batch_norm(out, mean, var, sd[bn + ".weight"].float(), sd[bn + ".bias"].float(),
                                training=False, eps=1e-5)
        return apply

    for name, module in model.named_modules():
        if name in convs:
            module.register_forward_hook(hook(name))
    with torch.no_grad():
        model(pixels)


def fold_batchnorm(own, config):
    """Folds each BatchNorm of the ModifiedResNet into the convolution before it (in place on `own`,
    our model's state dict): W' = W·γ/√(σ²+ε), b' = β − μ·γ/√(σ²+ε), computed in float64 and rounded
    to float32 once. cn_clip computes conv, then BatchNorm, each rounded in float32; the folded
    convolution differs by float rounding only (measured on the full-size random RN50: see README)."""
    eps = 1e-5  # nn.BatchNorm2d's default, which cn_clip uses
    for conv, bn, *_ in resnet_convs(config):
        gamma, beta, mean, var = (own.pop(f"{bn}.{n}").double() for n in BN_STATS)
        own.pop(bn + OPTIONAL_SUFFIX, None)
        scale = gamma / torch.sqrt(var + eps)
        own[conv + ".weight"] = (own[conv + ".weight"].double() * scale[:, None, None, None]).float()
        own[conv + ".bias"] = (beta - mean * scale).float()


def build_encoders(sd, config):
    image, text = towers.ImageEncoder(config), towers.TextEncoder(config)
    for module, prefix_ok in ((image, lambda k: k.startswith("visual.")),
                              (text, lambda k: k.startswith("bert.") or k == "text_projection")):
        own = {}
        for key, value in sd.items():
            if not prefix_ok(key):
                continue
            value = value.float()
            if is_fp16_designated(key):
                # cn_clip converts the model to fp16 before loading, so fp32 checkpoints are rounded too.
                value = value.half().float()
            own[model_key_for(key)] = value
        if module is image and is_resnet(config):
            fold_batchnorm(own, config)
        missing, unexpected = module.load_state_dict(own, strict=False)
        if missing or unexpected:
            raise ExportError(f"internal: state mismatch, missing {missing[:3]}, unexpected {unexpected[:3]}")
        towers.fold_constants(module)
        towers.fuse_projections(module)
        module.eval()
    return image, text


def transpose_linear_storage(module):
    """Stores each Linear's weight [out, in] as the transpose of a contiguous [in, out] matrix: the
    same values and shape, so aten::linear and every reader see the same tensor, but the GEMM it calls
    (addmm(bias, x, weight.t())) then gets its weights unTransposed. For the text tower's short
    queries (15 rows) that is what lets a BLAS with small-matrix kernels read the weights in place
    instead of repacking them: measured with BLIS 0.9, 12 layers' Linears at 15 rows 47 -> 37 ms on
    one thread, 24 -> 19 ms on two; OpenBLAS 70 -> 67 ms; the image tower's 788 rows alike either way
    (README, "Against ONNX Runtime"). torch.jit.freeze and save keep the strides."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            m.weight = nn.Parameter(m.weight.detach().t().contiguous().t(), requires_grad=False)


def to_torchscript(module, example, precision, linear_storage="transposed"):
    if precision == "fp32" and linear_storage == "transposed":
        transpose_linear_storage(module)
    if precision == "int8":
        torch.backends.quantized.engine = "onednn" if "onednn" in torch.backends.quantized.supported_engines else "fbgemm"
        # Per-output-channel scales: per-tensor ones cost accuracy once the attention projections are
        # quantized too (benchmark photos, random ViT-B-16: min cosine to fp32 0.9989 per tensor, 0.9991
        # per channel, at the same speed).
        module = torch.quantization.quantize_dynamic(
            module, {nn.Linear: torch.quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8)
    with torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
    return torch.jit.freeze(traced.eval()) if precision == "fp32" else traced


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bundle(out, sd, config, arch, precision, vocab_path, source, linear_storage="transposed"):
    image, text = build_encoders(sd, config)
    res = config["image_resolution"]
    parent = os.path.dirname(os.path.abspath(out)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        with torch.no_grad():
            # Dynamic int8 reaches only Linear layers: in a ModifiedResNet just the attention pool's, 7% of
            # its multiply-adds (0.43 of 5.79 G), so it can save at most a few percent of the image
            # tower's time, and bench.sh --models measured no gain beyond the noise of a loaded machine
            # (RN50 index, 3 rounds: fp32 0.74/1.22/0.72 images/s, int8 0.88/0.91/1.04), while rounding
            # costs accuracy. Its image tower stays fp32; the RBT3 text tower is quantized.
            image_precision = "fp32" if is_resnet(config) else precision
            img_ts = to_torchscript(image, torch.zeros(2, 3, res, res), image_precision, linear_storage)
            txt_ts = to_torchscript(text, torch.tensor([[101, 2207, 102, 0], [101, 102, 0, 0]]), precision,
                                    linear_storage)
        img_ts.save(os.path.join(tmp, "image_encoder.pt"))
        txt_ts.save(os.path.join(tmp, "text_encoder.pt"))
        shutil.copyfile(vocab_path, os.path.join(tmp, "vocab.txt"))
        files = {}
        for name in ("image_encoder.pt", "text_encoder.pt", "vocab.txt"):
            p = os.path.join(tmp, name)
            files[name] = {"bytes": os.path.getsize(p), "sha256": sha256_file(p)}
        fingerprint = hashlib.sha256(json.dumps(
            [arch, precision, files["image_encoder.pt"]["sha256"], files["text_encoder.pt"]["sha256"],
             files["vocab.txt"]["sha256"]]).encode()).hexdigest()
        manifest = {
            "format": "cnclip-bundle",
            "format_version": BUNDLE_FORMAT_VERSION,
            "architecture": arch,
            "config": {k: config[k] for k in CONFIG_KEYS},
            "embedding_dim": config["embed_dim"],
            "normalized": True,
            "precision": precision,
            "image": {"size": res, "mean": list(towers.MEAN), "std": list(towers.STD), "resize": "squash",
                      "interpolation": "bicubic-pillow", "input": "float32 [B,3,R,R]"},
            "text": {"context_length": towers.CONTEXT_LENGTH, "tokenizer": "bert-wordpiece",
                     "lower_case": True, "max_chars_per_word": 200, "input": "int64 [B,L], 0 = padding"},
            "logit_scale": float(sd["logit_scale"].float().exp()),
            "source": source,
            "fingerprint": fingerprint,
            "files": files,
        }
        with open(os.path.join(tmp, "bundle.json"), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, ensure_ascii=False)
            f.write("\n")
        os.chmod(tmp, 0o755)
        if os.path.isdir(out):
            old = out.rstrip("/") + ".old-" + os.path.basename(tmp)
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        elif os.path.exists(out):
            raise ExportError(f"{out}: exists and is not a directory")
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="official Chinese-CLIP checkpoint (.pt)")
    src.add_argument("--random-init", metavar="ARCH", help="random weights: " + ", ".join(ARCHS))
    ap.add_argument("--out", help="bundle directory to write (required unless --print-architecture)")
    ap.add_argument("--print-architecture", action="store_true",
                    help="check the checkpoint, print its architecture name (RN50, ViT-B-16, ...) and exit")
    ap.add_argument("--arch", help="architecture name (default: inferred from tensor shapes)")
    ap.add_argument("--config", help="cn_clip model config JSON (vision and text fields merged)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "int8"])
    ap.add_argument("--seed", type=int, default=0, help="seed for --random-init")
    ap.add_argument("--linear-storage", default="transposed", choices=["transposed", "plain"],
                    help="how fp32 Linear weights are stored: transposed (default; fastest with BLIS) or plain "
                         "[out, in] as bundles exported before it (for tests)")
    ap.add_argument("--vocab", default=DEFAULT_VOCAB, help="vocab.txt (default: models/vocab.txt)")
    args = ap.parse_args(argv)
    if not args.out and not args.print_architecture:
        ap.error("the following arguments are required: --out")

    try:
        import torch as _t  # noqa: F401
    except ImportError:
        fail("torch is not importable; run with Debian's /usr/bin/python3 (python3-torch)")
    load_torch()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    try:
        if not os.path.isfile(args.vocab):
            raise ExportError(f"{args.vocab}: vocabulary file not found")
        config = None
        if args.config:
            try:
                with open(args.config, encoding="utf-8") as f:
                    raw = json.load(f)
            except (OSError, ValueError) as exc:
                raise ExportError(f"{args.config}: not a usable model config ({exc})")
            if not isinstance(raw, dict):
                raise ExportError(f"{args.config}: not a usable model config (not a JSON object)")
            config = parse_config(raw, args.config)
            check_config(config, args.config)
        if args.arch and args.arch not in ARCHS:
            raise ExportError(f"unknown architecture '{args.arch}' (known: {', '.join(ARCHS)})")
        if args.random_init:
            if args.random_init not in ARCHS:
                raise ExportError(f"unknown architecture '{args.random_init}' (known: {', '.join(ARCHS)})")
            arch = args.random_init
            config = config or ARCHS[arch]
            if args.print_architecture:
                print(arch)
                return
            sd = random_state_dict(config, args.seed)
            source = {"kind": "random-init", "seed": args.seed}
        else:
            sd = load_checkpoint(args.checkpoint)
            if config is not None:
                arch = args.arch or next((n for n, c in ARCHS.items()
                                          if all(c[k] == config[k] for k in CONFIG_KEYS)), "custom")
            elif args.arch:
                arch, config = args.arch, ARCHS[args.arch]
            else:
                arch, config = infer_config(sd, args.checkpoint)
            sd = check_state_dict(sd, config, args.checkpoint)
            if args.print_architecture:
                print(arch)
                return
            source = {"kind": "checkpoint", "file": os.path.basename(args.checkpoint),
                      "sha256": sha256_file(args.checkpoint)}
        manifest = write_bundle(args.out, sd, config, arch, args.precision, args.vocab, source, args.linear_storage)
    except ExportError as exc:
        fail(str(exc))
    print(f"export_model.py: wrote {manifest['architecture']} {manifest['precision']} bundle "
          f"(dim {manifest['embedding_dim']}) to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
