"""Chinese-CLIP's forward pass in plain functional PyTorch, for the exporter tests: written from
cn_clip/clip/model.py (ModifiedResNet, VisualTransformer, encode_text) and its BERT, independently of
scripts/cnclip_towers.py. Each function takes cn_clip's state dict ('module.' stripped, tensors as
float32 after cn_clip's fp16 rounding) and a config, and computes what cn_clip computes in float32,
unfolded: BatchNorm as BatchNorm, attention through torch's own multi_head_attention_forward, scales
and QuickGELU as written.

Also the key layout of an RN50-shaped checkpoint (rn50_layout), from cn_clip's module structure, so
a test can write a checkpoint without the exporter's own tables.
"""
import math

import torch
from torch.nn import functional as F


def rn50_layout(c):
    """[(key, shape, fp16)] of cn_clip's ModifiedResNet image tower for config c. fp16: what
    convert_weights makes half (Conv2d and Linear weights and biases; not BatchNorm, not the
    attention pool's positional embedding)."""
    w = c["vision_width"]
    out = []

    def conv_bn(conv, bn, o, i, k):
        out.append((conv + ".weight", (o, i, k, k), True))
        for n in ("weight", "bias", "running_mean", "running_var"):
            out.append((f"{bn}.{n}", (o,), False))
        out.append((bn + ".num_batches_tracked", (), False))

    conv_bn("visual.conv1", "visual.bn1", w // 2, 3, 3)
    conv_bn("visual.conv2", "visual.bn2", w // 2, w // 2, 3)
    conv_bn("visual.conv3", "visual.bn3", w, w // 2, 3)
    inplanes = w
    for i, blocks in enumerate(c["vision_layers"]):
        planes = w * 2 ** i
        for j in range(blocks):
            p = f"visual.layer{i + 1}.{j}."
            stride = 2 if i > 0 and j == 0 else 1
            conv_bn(p + "conv1", p + "bn1", planes, inplanes, 1)
            conv_bn(p + "conv2", p + "bn2", planes, planes, 3)
            conv_bn(p + "conv3", p + "bn3", planes * 4, planes, 1)
            if stride > 1 or inplanes != planes * 4:
                conv_bn(p + "downsample.0", p + "downsample.1", planes * 4, inplanes, 1)
            inplanes = planes * 4
    d, grid = w * 32, c["image_resolution"] // 32
    out.append(("visual.attnpool.positional_embedding", (grid * grid + 1, d), False))
    for n in ("k", "q", "v"):
        out += [(f"visual.attnpool.{n}_proj.weight", (d, d), True), (f"visual.attnpool.{n}_proj.bias", (d,), True)]
    out += [("visual.attnpool.c_proj.weight", (c["embed_dim"], d), True),
            ("visual.attnpool.c_proj.bias", (c["embed_dim"],), True)]
    return out


def bert_layout(c):
    """[(key, shape, fp16)] of cn_clip's BERT text tower and projection (all fp16 in cn_clip)."""
    h, i = c["text_hidden_size"], c["text_intermediate_size"]
    out = [("bert.embeddings.word_embeddings.weight", (c["vocab_size"], h)),
           ("bert.embeddings.position_embeddings.weight", (c["text_max_position_embeddings"], h)),
           ("bert.embeddings.token_type_embeddings.weight", (c["text_type_vocab_size"], h)),
           ("bert.embeddings.LayerNorm.weight", (h,)), ("bert.embeddings.LayerNorm.bias", (h,))]
    for n in range(c["text_num_hidden_layers"]):
        p = f"bert.encoder.layer.{n}."
        for m in ("query", "key", "value"):
            out += [(p + f"attention.self.{m}.weight", (h, h)), (p + f"attention.self.{m}.bias", (h,))]
        out += [(p + "attention.output.dense.weight", (h, h)), (p + "attention.output.dense.bias", (h,)),
                (p + "attention.output.LayerNorm.weight", (h,)), (p + "attention.output.LayerNorm.bias", (h,)),
                (p + "intermediate.dense.weight", (i, h)), (p + "intermediate.dense.bias", (i,)),
                (p + "output.dense.weight", (h, i)), (p + "output.dense.bias", (h,)),
                (p + "output.LayerNorm.weight", (h,)), (p + "output.LayerNorm.bias", (h,))]
    out.append(("text_projection", (h, c["embed_dim"])))
    return [(k, s, True) for k, s in out]


def resnet_image_features(sd, c, pixels):
    """cn_clip's ModifiedResNet.forward: unnormalized [B, embed_dim]."""
    def conv_bn(x, conv, bn, stride=1, padding=0):
        x = F.conv2d(x, sd[conv + ".weight"], stride=stride, padding=padding)
        return F.batch_norm(x, sd[bn + ".running_mean"], sd[bn + ".running_var"], sd[bn + ".weight"],
                            sd[bn + ".bias"], training=False, eps=1e-5)

    x = F.relu(conv_bn(pixels, "visual.conv1", "visual.bn1", stride=2, padding=1))
    x = F.relu(conv_bn(x, "visual.conv2", "visual.bn2", padding=1))
    x = F.relu(conv_bn(x, "visual.conv3", "visual.bn3", padding=1))
    x = F.avg_pool2d(x, 2)
    for i, blocks in enumerate(c["vision_layers"]):
        for j in range(blocks):
            p = f"visual.layer{i + 1}.{j}."
            stride = 2 if i > 0 and j == 0 else 1
            out = F.relu(conv_bn(x, p + "conv1", p + "bn1"))
            out = F.relu(conv_bn(out, p + "conv2", p + "bn2", padding=1))
            out = F.avg_pool2d(out, stride)
            out = conv_bn(out, p + "conv3", p + "bn3")
            if p + "downsample.0.weight" in sd:
                identity = conv_bn(F.avg_pool2d(x, stride), p + "downsample.0", p + "downsample.1")
            else:
                identity = x
            x = F.relu(out + identity)
    # AttentionPool2d
    b, ch, h, w = x.shape
    x = x.reshape(b, ch, h * w).permute(2, 0, 1)  # (HW)NC
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
    x = x + sd["visual.attnpool.positional_embedding"][:, None, :]
    a = "visual.attnpool."
    x, _ = F.multi_head_attention_forward(
        query=x, key=x, value=x, embed_dim_to_check=ch, num_heads=c["vision_width"] * 32 // 64,
        q_proj_weight=sd[a + "q_proj.weight"], k_proj_weight=sd[a + "k_proj.weight"],
        v_proj_weight=sd[a + "v_proj.weight"], in_proj_weight=None,
        in_proj_bias=torch.cat([sd[a + "q_proj.bias"], sd[a + "k_proj.bias"], sd[a + "v_proj.bias"]]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=sd[a + "c_proj.weight"], out_proj_bias=sd[a + "c_proj.bias"],
        use_separate_proj_weight=True, training=False, need_weights=False)
    return x[0]


def vit_image_features(sd, c, pixels):
    """cn_clip's VisualTransformer.forward: unnormalized [B, embed_dim]."""
    w, p = c["vision_width"], c["vision_patch_size"]
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=p)
    x = x.reshape(x.shape[0], w, -1).permute(0, 2, 1)
    cls = sd["visual.class_embedding"] + torch.zeros(x.shape[0], 1, w)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]

    def ln(x, name):
        return F.layer_norm(x, (w,), sd[name + ".weight"], sd[name + ".bias"], eps=1e-5)

    x = ln(x, "visual.ln_pre").permute(1, 0, 2)  # LND
    for i in range(c["vision_layers"]):
        b = f"visual.transformer.resblocks.{i}."
        y = ln(x, b + "ln_1")
        y, _ = F.multi_head_attention_forward(
            y, y, y, w, w // 64, sd[b + "attn.in_proj_weight"], sd[b + "attn.in_proj_bias"], None, None, False,
            0.0, sd[b + "attn.out_proj.weight"], sd[b + "attn.out_proj.bias"], training=False, need_weights=False)
        x = x + y
        y = F.linear(ln(x, b + "ln_2"), sd[b + "mlp.c_fc.weight"], sd[b + "mlp.c_fc.bias"])
        y = y * torch.sigmoid(1.702 * y)
        x = x + F.linear(y, sd[b + "mlp.c_proj.weight"], sd[b + "mlp.c_proj.bias"])
    return ln(x.permute(1, 0, 2)[:, 0, :], "visual.ln_post") @ sd["visual.proj"]


def text_features(sd, c, ids):
    """cn_clip's encode_text (BERT, [CLS] @ text_projection): unnormalized [B, embed_dim]."""
    h, heads = c["text_hidden_size"], c["text_num_attention_heads"]
    d = h // heads
    mask = ids.ne(0).float()
    additive = (1.0 - mask)[:, None, None, :] * -10000.0

    def ln(x, name):
        return F.layer_norm(x, (h,), sd[name + ".weight"], sd[name + ".bias"], eps=1e-12)

    def lin(x, name):
        return F.linear(x, sd[name + ".weight"], sd[name + ".bias"])

    e = "bert.embeddings."
    x = (sd[e + "word_embeddings.weight"][ids] + sd[e + "position_embeddings.weight"][:ids.shape[1]]
         + sd[e + "token_type_embeddings.weight"][0])
    x = ln(x, e + "LayerNorm")
    bsz, n = ids.shape
    for i in range(c["text_num_hidden_layers"]):
        p = f"bert.encoder.layer.{i}."

        def heads_of(t):
            return t.reshape(bsz, n, heads, d).permute(0, 2, 1, 3)

        q, k, v = (heads_of(lin(x, p + f"attention.self.{m}")) for m in ("query", "key", "value"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + additive
        ctx = (torch.softmax(scores, dim=-1) @ v).permute(0, 2, 1, 3).reshape(bsz, n, h)
        a = ln(lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        y = F.gelu(lin(a, p + "intermediate.dense"))
        x = ln(lin(y, p + "output.dense") + a, p + "output.LayerNorm")
    return x[:, 0, :] @ sd["text_projection"]


def image_features(sd, c, pixels):
    if isinstance(c["vision_layers"], (list, tuple)):
        return resnet_image_features(sd, c, pixels)
    return vit_image_features(sd, c, pixels)


def state_dict_of(checkpoint_path):
    """cn_clip's loading of a released checkpoint, in float32 (model.float() after convert_weights:
    tensors stored as fp16 are used as they are; this helper is for checkpoints that store the fp16
    tensors as fp16)."""
    ckpt = torch.load(checkpoint_path, map_location="cpu")
    sd = ckpt["state_dict"]
    sd = {k[len("module."):]: v for k, v in sd.items() if "bert.pooler" not in k}
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
