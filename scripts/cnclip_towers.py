"""Chinese-CLIP's towers as cnclip exports them: our own PyTorch definition, computing what cn_clip
computes (see ../shared/fixtures/README.md), batch-first, with plain nn.Linear everywhere (so that
dynamic int8 quantization reaches the attention projections too).

    import cnclip_towers
    image = cnclip_towers.ImageEncoder(config)   # float [B,3,R,R] normalized pixels -> unit [B,D]
    text = cnclip_towers.TextEncoder(config)     # int64 ids [B,L], 0 = padding -> unit [B,D]

`config` is a cn_clip model config, vision and text fields merged (scripts/export_model.py's ARCHS).
The classes take the state_dict keys of cn_clip's model (see export_model.model_key_for for the one
renamed key); export_model.py loads the weights, folds constants (fold_constants) and traces them.

MEAN and STD are the image normalization every released Chinese-CLIP model uses; the exporter writes
them into bundle.json, where the C++ side and the Python tools read them.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
CONTEXT_LENGTH = 52
QUICK_GELU_FACTOR = 1.702


class VisionAttention(nn.Module):
    """Multi-head self-attention over rows laid out as [B*N, W] (see VisualTransformer)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.scale = float(self.head_dim) ** -0.5
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def fold_constants(self):
        """Moves the 1/sqrt(head_dim) of q into the q rows of in_proj (see fold_constants)."""
        w = self.in_proj.weight.shape[1]
        self.in_proj.weight[:w].mul_(self.scale)
        self.in_proj.bias[:w].mul_(self.scale)

    def forward(self, x, n: int):
        bn, w = x.shape
        qkv = self.in_proj(x).reshape(bn // n, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # q is already scaled (fold_constants)
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)), dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(bn, w)
        return self.out_proj(out)

class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), as cn_clip. fold_constants replaces it with SiLU (one pass, no temporary)."""
    def forward(self, x):
        return torch.sigmoid(x * QUICK_GELU_FACTOR).mul_(x)

class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = VisionAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width, eps=1e-5)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * 4))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(width * 4, width))
        self.ln_2 = nn.LayerNorm(width, eps=1e-5)

    def fold_constants(self):
        """QuickGELU(x) = x * sigmoid(1.702 x) = SiLU(1.702 x) / 1.702: the 1.702 goes into c_fc and
        the 1/1.702 into c_proj's weights, and the MLP needs one elementwise pass instead of three."""
        self.mlp.c_fc.weight.mul_(QUICK_GELU_FACTOR)
        self.mlp.c_fc.bias.mul_(QUICK_GELU_FACTOR)
        self.mlp.c_proj.weight.div_(QUICK_GELU_FACTOR)
        self.mlp.gelu = nn.SiLU()

    def forward(self, x, n: int):
        x = x + self.attn(self.ln_1(x), n)
        return x + self.mlp(self.ln_2(x))

class VisualTransformer(nn.Module):
    def __init__(self, resolution: int, patch: int, width: int, layers: int, output_dim: int):
        super().__init__()
        heads = width // 64  # as cn_clip: vision_heads = vision_width // 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        grid = resolution // patch
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width, eps=1e-5)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads) for _ in range(layers)])
        self.ln_post = nn.LayerNorm(width, eps=1e-5)
        self.proj = nn.Parameter(torch.zeros(width, output_dim))

    def forward(self, x):
        x = self.conv1(x)
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, x.shape[-1])
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        b, n, w = x.shape
        # Rows as a [B*N, W] matrix: every Linear is then one plain GEMM.
        x = self.ln_pre(x).reshape(b * n, w)
        for block in self.transformer.resblocks:
            x = block(x, n)
        return self.ln_post(x.reshape(b, n, w)[:, 0, :]) @ self.proj

class BertSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def split(self, x):
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

    def fold_constants(self):
        """Moves the 1/sqrt(head_dim) of the scores into the query projection (see fold_constants)."""
        self.query.weight.mul_(self.scale)
        self.query.bias.mul_(self.scale)

    def forward(self, x, additive_mask):
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) + additive_mask  # q is pre-scaled
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
        b, h, n, d = ctx.shape
        return ctx.transpose(1, 2).reshape(b, n, h * d)

class BertDenseLayerNorm(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=1e-12)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)

class BertAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.self = BertSelfAttention(hidden, heads)
        self.output = BertDenseLayerNorm(hidden, hidden)

    def forward(self, x, additive_mask):
        return self.output(self.self(x, additive_mask), x)

class BertIntermediate(nn.Module):
    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.dense = nn.Linear(hidden, inter)

    def forward(self, x):
        return F.gelu(self.dense(x))

class BertLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, inter: int):
        super().__init__()
        self.attention = BertAttention(hidden, heads)
        self.intermediate = BertIntermediate(hidden, inter)
        self.output = BertDenseLayerNorm(inter, hidden)

    def forward(self, x, additive_mask):
        a = self.attention(x, additive_mask)
        return self.output(self.intermediate(a), a)

class BertEmbeddings(nn.Module):
    def __init__(self, vocab: int, hidden: int, max_pos: int, type_vocab: int):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(max_pos, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, ids):
        positions = torch.arange(ids.shape[1], dtype=torch.long, device=ids.device)
        x = (self.word_embeddings(ids) + self.position_embeddings(positions).unsqueeze(0)
             + self.token_type_embeddings.weight[0])
        return self.LayerNorm(x)

class BertEncoder(nn.Module):
    def __init__(self, hidden: int, heads: int, inter: int, layers: int):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(hidden, heads, inter) for _ in range(layers)])

    def forward(self, x, additive_mask):
        for layer in self.layer:
            x = layer(x, additive_mask)
        return x

class Bert(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embeddings = BertEmbeddings(c["vocab_size"], c["text_hidden_size"],
                                         c["text_max_position_embeddings"],
                                         c["text_type_vocab_size"])
        self.encoder = BertEncoder(c["text_hidden_size"], c["text_num_attention_heads"],
                                   c["text_intermediate_size"], c["text_num_hidden_layers"])

class ImageEncoder(nn.Module):
    """float [B,3,R,R] (normalized pixels) -> L2-normalized float [B,D]."""

    def __init__(self, c):
        super().__init__()
        self.visual = VisualTransformer(c["image_resolution"], c["vision_patch_size"],
                                        c["vision_width"], c["vision_layers"], c["embed_dim"])

    def forward(self, pixels):
        return F.normalize(self.visual(pixels), dim=-1)

class TextEncoder(nn.Module):
    """int64 token ids [B,L] (0 = padding) -> L2-normalized float [B,D]."""

    def __init__(self, c):
        super().__init__()
        self.bert = Bert(c)
        self.text_projection = nn.Parameter(torch.zeros(c["text_hidden_size"], c["embed_dim"]))

    def forward(self, ids):
        mask = (ids != 0).to(torch.float32)
        additive = ((1.0 - mask) * -10000.0)[:, None, None, :]
        x = self.bert.embeddings(ids)
        x = self.bert.encoder(x, additive)
        return F.normalize(x[:, 0, :] @ self.text_projection, dim=-1)


def fold_constants(module):
    """Moves constant factors of the forward pass into the weights next to them, so the traced graph
    makes fewer elementwise passes over the activations (LibTorch on CPU cannot fuse them): ~3% of
    the ViT-B-16 image tower. The attention scales are 1/8 for 64-dimensional heads, a power of two,
    so that fold is exact; the QuickGELU fold changes results by float rounding only (max abs 1e-7
    on a ViT-B-16 embedding)."""
    with torch.no_grad():
        for m in list(module.modules()):  # each once: the attention folds itself, not via its block
            if m is not module and hasattr(m, "fold_constants"):
                m.fold_constants()
