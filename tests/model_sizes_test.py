"""Every Chinese-CLIP model size through scripts/export_model.py, checked against an independent
plain-PyTorch reference of cn_clip's forward pass (cn_clip_reference.py, not the exporter's classes):

- RN50Tiny: a tiny RN50-shaped checkpoint in the released layout, written here from cn_clip's module
  structure (fp16 convolutions, fp32 BatchNorm parameters and buffers with num_batches_tracked,
  'module.' prefix, bert.pooler keys, logit_scale stored as [1]); TorchScript within 1e-5. Bad input.
- RN50FullSize (ctest rn50_full_size_py): a full-size random RN50 by scripts/make_random_checkpoint.py,
  exported; TorchScript and `cnclip embed-image` / `embed-text` within 1e-4 of the reference on the
  fixtures (cn_clip's own preprocessed tensors and token ids); then index, search and import with
  its 1024-dimensional embeddings.
- ReducedDepth (ctest vit_sizes_py): ViT-L-14, ViT-L-14-336 and ViT-H-14 with their per-layer shapes
  and one layer per tower, via --config; TorchScript within 1e-5.
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest
import urllib.parse
import urllib.request

import numpy as np
import torch
from torch.nn import functional as F

import cn_clip_reference as ref

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "..", "scripts")
EXPORT = os.path.join(SCRIPTS, "export_model.py")
MAKE_RANDOM = os.path.join(SCRIPTS, "make_random_checkpoint.py")
FIXTURES = os.environ.get("CNCLIP_FIXTURES_DIR", os.path.join(HERE, "..", "..", "shared", "fixtures"))
BINARY = os.environ.get("CNCLIP_BINARY")
WORK = os.environ.get("CNCLIP_TEST_WORK")  # where the full-size checkpoint is kept between runs

TINY_RN50 = {"embed_dim": 16, "image_resolution": 64, "vision_layers": "[1,2,1,1]", "vision_width": 16,
             "vision_patch_size": None, "vocab_size": 21128, "text_hidden_size": 32,
             "text_num_attention_heads": 2, "text_num_hidden_layers": 2, "text_intermediate_size": 64,
             "text_max_position_embeddings": 512, "text_type_vocab_size": 2,
             # cn_clip's config fields the exporter does not need are allowed
             "text_hidden_act": "gelu", "text_hidden_dropout_prob": 0.1}


def run(*cmd):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True)


def export(*args):
    return run(sys.executable, EXPORT, *args)


def write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def exporter():
    sys.path.insert(0, SCRIPTS)
    import export_model
    export_model.load_torch()
    return export_model


def numeric_config(raw):
    c = dict(raw)
    if isinstance(c["vision_layers"], str):
        c["vision_layers"] = json.loads(c["vision_layers"])
    return c


def fixture_inputs():
    """cn_clip's own preprocessed images [6,3,224,224] (alphabetical) and 20 token id rows."""
    names = sorted(n[:-4] for n in os.listdir(os.path.join(FIXTURES, "preprocess")) if n.endswith(".npy"))
    pixels = torch.from_numpy(np.stack([np.load(os.path.join(FIXTURES, "preprocess", n + ".npy")) for n in names]))
    with open(os.path.join(FIXTURES, "tokenizer_cases.jsonl"), encoding="utf-8") as f:
        cases = [json.loads(line) for line in f]
    cases = [c for c in cases if c["text"].strip()][:20]
    return names, pixels, cases


def max_diff(a, b):
    return float((a - b).abs().max())


def tiny_rn50_checkpoint(path, seed=0, logit_scale_shape=(1,), drop=(), bad=None):
    """A tiny RN50-shaped checkpoint in the released container, from cn_clip_reference's layout."""
    c = numeric_config(TINY_RN50)
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape, fp16 in ref.rn50_layout(c) + ref.bert_layout(c):
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(12345, dtype=torch.long)
            continue
        if key.endswith("running_var"):
            t = 0.5 + torch.rand(shape, generator=gen)
        elif key.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight", "LayerNorm.weight")):
            t = 1 + 0.2 * torch.randn(shape, generator=gen)
        elif len(shape) >= 2 and "embedding" not in key:
            fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[-1]
            t = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
        else:
            t = 0.2 * torch.randn(shape, generator=gen)
        sd[key] = t.half() if fp16 else t.float()
    sd["logit_scale"] = torch.full(logit_scale_shape, 4.6052)
    for key in drop:
        del sd[key]
    if bad:
        bad(sd)
    h = c["text_hidden_size"]
    state = {"module." + k: v for k, v in sd.items()}
    state["module.bert.pooler.dense.weight"] = torch.zeros(h, h, dtype=torch.float16)
    state["module.bert.pooler.dense.bias"] = torch.zeros(h, dtype=torch.float16)
    torch.save({"epoch": 3, "step": 900, "name": "tiny-rn50", "state_dict": state}, path)


class RN50Tiny(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.config = os.path.join(self.dir, "RN50-tiny.json")
        write_json(self.config, TINY_RN50)

    def tearDown(self):
        self.tmp.cleanup()

    def test_tiny_rn50_matches_the_reference(self):
        ckpt, out = os.path.join(self.dir, "tiny.pt"), os.path.join(self.dir, "b")
        tiny_rn50_checkpoint(ckpt)
        r = export("--checkpoint", ckpt, "--config", self.config, "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        m = read_json(os.path.join(out, "bundle.json"))
        self.assertEqual(m["embedding_dim"], 16)
        self.assertEqual(m["image"]["size"], 64)
        self.assertEqual(m["config"]["vision_layers"], [1, 2, 1, 1])
        self.assertIsNone(m["config"]["vision_patch_size"])
        self.assertAlmostEqual(m["logit_scale"], float(np.exp(np.float32(4.6052))), places=3)
        sd = ref.state_dict_of(ckpt)
        c = numeric_config(TINY_RN50)
        torch.manual_seed(0)
        pixels = F.interpolate(torch.randn(5, 3, 9, 9), size=(64, 64), mode="bicubic", align_corners=False)
        ids = torch.tensor([[101, 1911, 7345, 510, 102, 0, 0], [101, 2207, 4318, 102, 0, 0, 0],
                            [101, 3345, 2225, 7991, 4638, 2207, 102]])
        with torch.no_grad():
            want_img = F.normalize(ref.image_features(sd, c, pixels), dim=-1)
            want_txt = F.normalize(ref.text_features(sd, c, ids), dim=-1)
            got_img = torch.jit.load(os.path.join(out, "image_encoder.pt"))(pixels)
            got_txt = torch.jit.load(os.path.join(out, "text_encoder.pt"))(ids)
        # The images must give different embeddings, or agreement would prove little.
        self.assertLess(float((want_img @ want_img.T).min()), 0.99)
        # 2e-5 for the image: with OpenBLAS's AVX2 kernels forced on an AVX-512 CPU (this workplace's
        # OPENBLAS_CORETYPE=Haswell) the two computations round apart by 1.3e-5 (AMD EPYC, family
        # 1Ah); within 1e-5 with OpenBLAS's own kernels there.
        self.assertLessEqual(max_diff(got_img, want_img), 2e-5)
        self.assertLessEqual(max_diff(got_txt, want_txt), 1e-5)

    def test_int8_rn50_bundle(self):
        ckpt, fp32, int8 = (os.path.join(self.dir, n) for n in ("tiny.pt", "fp32", "int8"))
        tiny_rn50_checkpoint(ckpt)
        self.assertEqual(export("--checkpoint", ckpt, "--config", self.config, "--out", fp32).returncode, 0)
        r = export("--checkpoint", ckpt, "--config", self.config, "--precision", "int8", "--out", int8)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(read_json(os.path.join(int8, "bundle.json"))["precision"], "int8")
        # The image tower stays fp32 (int8 would reach only the attention pool and did not pay); the
        # text tower is quantized.
        pixels = torch.randn(2, 3, 64, 64)
        a = torch.jit.load(os.path.join(fp32, "image_encoder.pt"))(pixels)
        b = torch.jit.load(os.path.join(int8, "image_encoder.pt"))(pixels)
        self.assertTrue(torch.equal(a, b))
        ids = torch.tensor([[101, 1911, 7345, 510, 102, 0, 0], [101, 3345, 2225, 7991, 4638, 2207, 102]])
        a = torch.jit.load(os.path.join(fp32, "text_encoder.pt"))(ids)
        b = torch.jit.load(os.path.join(int8, "text_encoder.pt"))(ids)
        self.assertFalse(torch.equal(a, b))
        self.assertGreater(float((a * b).sum(-1).min()), 0.98)

    def test_checkpoint_variants_cn_clip_accepts(self):
        """logit_scale as [] or [1], num_batches_tracked present or not: the same bundle outputs."""
        outs = []
        for i, (shape, drop) in enumerate((((1,), ()), ((), ("visual.bn1.num_batches_tracked",)))):
            ckpt, out = os.path.join(self.dir, f"v{i}.pt"), os.path.join(self.dir, f"v{i}")
            tiny_rn50_checkpoint(ckpt, logit_scale_shape=shape, drop=drop)
            r = export("--checkpoint", ckpt, "--config", self.config, "--out", out)
            self.assertEqual(r.returncode, 0, r.stderr)
            outs.append(torch.jit.load(os.path.join(out, "image_encoder.pt"))(torch.ones(1, 3, 64, 64)))
        self.assertTrue(torch.equal(outs[0], outs[1]))

    def test_bad_rn50_checkpoints_are_refused_by_key(self):
        """Each refused, naming the tensor and the reason (in process, through the exporter's checks;
        the first also through the command: one line, exit 1, nothing written)."""
        export_model = exporter()

        def negative_var(sd):
            sd["visual.layer2.0.bn2.running_var"][3] = -1.0

        def missing_bn(sd):
            del sd["visual.layer3.0.downsample.1.running_mean"]

        def wrong_shape(sd):
            sd["visual.attnpool.c_proj.weight"] = torch.zeros(15, 512, dtype=torch.float16)

        def nan_conv(sd):
            sd["visual.layer1.0.conv2.weight"][0, 0, 0, 0] = float("nan")

        config = export_model.parse_config(TINY_RN50, "cfg")
        for i, (bad, key, why) in enumerate(((negative_var, "visual.layer2.0.bn2.running_var", "negative"),
                                             (missing_bn, "visual.layer3.0.downsample.1.running_mean", "missing"),
                                             (wrong_shape, "visual.attnpool.c_proj.weight", "shape"),
                                             (nan_conv, "visual.layer1.0.conv2.weight", "NaN"))):
            ckpt, out = os.path.join(self.dir, "bad.pt"), os.path.join(self.dir, "x")
            tiny_rn50_checkpoint(ckpt, bad=bad)
            with self.assertRaises(export_model.ExportError) as ctx:
                export_model.check_state_dict(export_model.load_checkpoint(ckpt), config, ckpt)
            self.assertIn(key, str(ctx.exception))
            self.assertIn(why, str(ctx.exception))
            if i == 0:
                r = export("--checkpoint", ckpt, "--config", self.config, "--out", out)
                self.assertEqual(r.returncode, 1, r.stderr)
                lines = r.stderr.strip().splitlines()
                self.assertEqual(len(lines), 1, r.stderr)
                self.assertIn(key, lines[0])
                self.assertFalse(os.path.exists(out))

    def test_resnet_config_checks(self):
        export_model = exporter()
        for change, needle in (({"vision_layers": "[1,2,1]"}, "four stage depths"),
                               ({"vision_patch_size": 16}, "vision_patch_size must be null"),
                               ({"image_resolution": 70}, "multiple of 32")):
            with self.assertRaises(export_model.ExportError) as ctx:
                export_model.check_config(export_model.parse_config(dict(TINY_RN50, **change), "cfg.json"),
                                          "cfg.json")
            self.assertIn(needle, str(ctx.exception))
            self.assertIn("cfg.json", str(ctx.exception))

    def test_layout_and_fp16_rule_match_cn_clip(self):
        """The exporter's RN50 key table and fp16 rule against cn_clip_reference's, written from
        cn_clip's modules (convert_weights: Conv2d/Linear half, BatchNorm and positional embedding not)."""
        export_model = exporter()
        c = export_model.ARCHS["RN50"]
        theirs = {k: (s, f) for k, s, f in ref.rn50_layout(c) + ref.bert_layout(c)}
        ours = export_model.expected_shapes(c)
        self.assertEqual(set(ours) - {"logit_scale"}, set(theirs))
        for key, (shape, fp16) in theirs.items():
            self.assertEqual(tuple(ours[key]), shape, key)
            self.assertEqual(export_model.is_fp16_designated(key), fp16, key)
        # RN50: 55 convolutions (stem 3, 16 bottlenecks of 3, 4 shortcuts), each with its BatchNorm's 5
        # tensors, plus the attention pool's 9; 77M parameters over both towers, as Chinese-CLIP's
        # README says.
        self.assertEqual(sum(1 for k in ours if k.startswith("visual.")), 55 * 6 + 9)
        params = sum(int(np.prod(s)) for k, s in ours.items() if not k.endswith(("running_mean", "running_var",
                                                                                    "num_batches_tracked")))
        self.assertEqual(round(params / 1e6), 77)


@unittest.skipUnless(BINARY, "needs CNCLIP_BINARY (run by ctest as rn50_full_size_py)")
class RN50FullSize(unittest.TestCase):
    """Full-size random RN50 in the released layout: export, then TorchScript and the C++ commands."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        work = WORK or cls.tmp.name
        os.makedirs(work, exist_ok=True)
        cls.ckpt = os.path.join(work, "rn50-random.pt")
        if not os.path.exists(cls.ckpt):
            r = run(sys.executable, MAKE_RANDOM, "--arch", "RN50", "--seed", "5", "--out", cls.ckpt)
            assert r.returncode == 0, r.stderr
        cls.bundle = os.path.join(cls.tmp.name, "rn50")
        r = export("--checkpoint", cls.ckpt, "--out", cls.bundle)
        assert r.returncode == 0, r.stderr
        cls.names, cls.pixels, cls.cases = fixture_inputs()
        cls.ids = torch.tensor([c["ids"] for c in cls.cases])
        sd = ref.state_dict_of(cls.ckpt)
        cls.config = read_json(os.path.join(cls.bundle, "bundle.json"))["config"]
        with torch.no_grad():
            cls.want_img = F.normalize(ref.image_features(sd, cls.config, cls.pixels), dim=-1)
            cls.want_txt = F.normalize(ref.text_features(sd, cls.config, cls.ids), dim=-1)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_manifest(self):
        m = read_json(os.path.join(self.bundle, "bundle.json"))
        self.assertEqual(m["architecture"], "RN50")  # inferred from the shapes
        self.assertEqual(m["embedding_dim"], 1024)
        self.assertEqual(m["config"]["vision_layers"], [3, 4, 6, 3])
        self.assertEqual(m["config"]["text_num_hidden_layers"], 3)
        # What scripts/setup.sh --checkpoint names the bundle directory by.
        r = export("--checkpoint", self.ckpt, "--print-architecture")
        self.assertEqual((r.returncode, r.stdout), (0, "RN50\n"), r.stderr)

    def test_embeddings_differ_between_inputs(self):
        self.assertLess(float((self.want_img @ self.want_img.T).min()), 0.99)
        self.assertLess(float((self.want_txt @ self.want_txt.T).min()), 0.99)

    def test_torchscript_matches_the_reference(self):
        with torch.no_grad():
            img = torch.jit.load(os.path.join(self.bundle, "image_encoder.pt"))(self.pixels)
            txt = torch.jit.load(os.path.join(self.bundle, "text_encoder.pt"))(self.ids)
        print(f"\nRN50 TorchScript vs reference: image {max_diff(img, self.want_img):.2e}, "
              f"text {max_diff(txt, self.want_txt):.2e}", file=sys.stderr)
        self.assertLessEqual(max_diff(img, self.want_img), 1e-4)
        self.assertLessEqual(max_diff(txt, self.want_txt), 1e-4)

    def test_cli_embeddings_match_the_reference(self):
        images = {n: next(os.path.join(FIXTURES, "images", f) for f in os.listdir(os.path.join(FIXTURES, "images"))
                          if f.startswith(n + ".")) for n in self.names}
        r = run(BINARY, "embed-image", "--model", self.bundle, "--ignore-exif", "--full-decode",
                *[images[n] for n in self.names])
        self.assertEqual(r.returncode, 0, r.stderr)
        got = torch.tensor([json.loads(line)["embedding"] for line in r.stdout.splitlines()])
        self.assertEqual(tuple(got.shape), (len(self.names), 1024))
        r = run(BINARY, "embed-text", "--model", self.bundle, *[c["text"] for c in self.cases])
        self.assertEqual(r.returncode, 0, r.stderr)
        got_txt = torch.tensor([json.loads(line)["embedding"] for line in r.stdout.splitlines()])
        print(f"\nRN50 cnclip vs reference: image {max_diff(got, self.want_img):.2e}, "
              f"text {max_diff(got_txt, self.want_txt):.2e}", file=sys.stderr)
        self.assertLessEqual(max_diff(got, self.want_img), 1e-4)
        self.assertLessEqual(max_diff(got_txt, self.want_txt), 1e-4)

    def test_index_search_and_import_with_1024_dimensions(self):
        index = os.path.join(self.tmp.name, "index")
        images = os.path.join(FIXTURES, "images")
        r = run(BINARY, "index", "-q", images, "--model", self.bundle, "--index", index)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run(BINARY, "search-image", os.path.join(images, "pokemon.jpeg"), "--model", self.bundle,
                "--index", index, "--format", "jsonl")
        self.assertEqual(r.returncode, 0, r.stderr)
        top = json.loads(r.stdout.splitlines()[0])
        self.assertTrue(top["path"].endswith("pokemon.jpeg"), top)
        self.assertGreater(top["score"], 0.999)
        r = run(BINARY, "search-text", "皮卡丘", "--model", self.bundle, "--index", index, "--format", "jsonl")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(r.stdout.splitlines()), 6)
        # Import: 1024-dimensional rows are taken, 512-dimensional ones refused with the reason.
        rows = os.path.join(self.tmp.name, "rows.jsonl")
        vec = self.want_txt[0].tolist()
        with open(rows, "w") as f:
            f.write(json.dumps({"path": "/elsewhere/a.jpg", "embedding": vec}) + "\n")
        r = run(BINARY, "import", rows, "--model", self.bundle, "--index", index)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run(BINARY, "search-text", self.cases[0]["text"], "--model", self.bundle, "--index", index,
                "--format", "jsonl")
        top = json.loads(r.stdout.splitlines()[0])
        self.assertEqual(top["path"], "/elsewhere/a.jpg")
        self.assertGreater(top["score"], 0.9999)
        with open(rows, "w") as f:
            f.write(json.dumps({"path": "/elsewhere/b.jpg", "embedding": vec[:512]}) + "\n")
        r = run(BINARY, "import", rows, "--model", self.bundle, "--index", index)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("1024", r.stderr)
        # serve: the same index and model, the same answer.
        server = subprocess.Popen([BINARY, "serve", "--port", "0", "--model", self.bundle, "--index", index],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            url = None
            for line in server.stderr:
                if "listening on " in line:
                    url = line.split("listening on ", 1)[1].strip().rstrip("/")
                    break
            self.assertIsNotNone(url, "serve did not start")
            with urllib.request.urlopen(url + "/api/v1/info", timeout=120) as resp:
                self.assertEqual(json.load(resp)["embedding_dim"], 1024)
            query = urllib.parse.quote(self.cases[0]["text"])
            with urllib.request.urlopen(f"{url}/api/v1/search?q={query}", timeout=120) as resp:
                body = json.load(resp)
            first = body["results"][0]
            self.assertEqual(first["path"], "/elsewhere/a.jpg")
            self.assertAlmostEqual(first["score"], top["score"], places=5)
        finally:
            server.terminate()
            server.wait(timeout=60)


class ReducedDepth(unittest.TestCase):
    """The larger released ViTs, at one layer per tower with their per-layer shapes (width, heads,
    patch, resolution, MLP and BERT sizes), exported via --config and checked against the reference."""

    def test_vit_sizes(self):
        sys.path.insert(0, SCRIPTS)
        import export_model
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("ViT-L-14", "ViT-L-14-336", "ViT-H-14"):
                with self.subTest(name=name):
                    config = dict(export_model.ARCHS[name], vision_layers=1, text_num_hidden_layers=1)
                    cfg, ckpt, out = (os.path.join(tmp, name + ext) for ext in (".json", ".pt", ""))
                    write_json(cfg, config)
                    r = run(sys.executable, MAKE_RANDOM, "--config", cfg, "--seed", "2", "--out", ckpt)
                    self.assertEqual(r.returncode, 0, r.stderr)
                    r = export("--checkpoint", ckpt, "--config", cfg, "--out", out)
                    self.assertEqual(r.returncode, 0, r.stderr)
                    m = read_json(os.path.join(out, "bundle.json"))
                    res = config["image_resolution"]
                    self.assertEqual((m["image"]["size"], m["embedding_dim"]), (res, config["embed_dim"]))
                    sd = ref.state_dict_of(ckpt)
                    pixels = F.interpolate(torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(1)),
                                           size=(res, res), mode="bicubic", align_corners=False)
                    ids = torch.tensor([[101, 1911, 7345, 510, 102, 0], [101, 3345, 2225, 7991, 4638, 102]])
                    with torch.no_grad():
                        want_img = F.normalize(ref.image_features(sd, config, pixels), dim=-1)
                        want_txt = F.normalize(ref.text_features(sd, config, ids), dim=-1)
                        got_img = torch.jit.load(os.path.join(out, "image_encoder.pt"))(pixels)
                        got_txt = torch.jit.load(os.path.join(out, "text_encoder.pt"))(ids)
                    self.assertLessEqual(max_diff(got_img, want_img), 1e-5)
                    self.assertLessEqual(max_diff(got_txt, want_txt), 1e-5)
                    self.assertLess(float((want_txt[0] * want_txt[1]).sum()), 0.99)
                    for f in os.listdir(out):
                        os.remove(os.path.join(out, f))
                    os.remove(ckpt)


if __name__ == "__main__":
    unittest.main()
