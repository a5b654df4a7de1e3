"""scripts/export_model.py: bundles from the fixture checkpoint, random bundles, and bad input."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
EXPORT = os.path.join(HERE, "..", "scripts", "export_model.py")
FIXTURES = os.environ.get("CNCLIP_FIXTURES_DIR", os.path.join(HERE, "..", "..", "shared", "fixtures"))
TINY = os.path.join(FIXTURES, "tiny_checkpoint.pt")
TINY_CONFIG = os.path.join(FIXTURES, "tiny_config.json")


def export(*args):
    return subprocess.run([sys.executable, EXPORT, *args], capture_output=True, text=True)


class ExportTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def assert_one_line_error(self, result, *needles):
        self.assertEqual(result.returncode, 1, result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        for n in needles:
            self.assertIn(n, lines[0])

    def test_fixture_checkpoint_bundle(self):
        out = os.path.join(self.dir, "b")
        r = export("--checkpoint", TINY, "--config", TINY_CONFIG, "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        m = json.load(open(os.path.join(out, "bundle.json")))
        self.assertEqual(m["architecture"], "tiny")
        self.assertEqual(m["embedding_dim"], 32)
        self.assertEqual(m["text"]["context_length"], 52)
        self.assertAlmostEqual(m["logit_scale"], 13.809393882751465, places=5)
        for name in ("image_encoder.pt", "text_encoder.pt", "vocab.txt"):
            self.assertEqual(os.path.getsize(os.path.join(out, name)), m["files"][name]["bytes"])
        # Any batch size and any length up to the context length.
        text = torch.jit.load(os.path.join(out, "text_encoder.pt"))
        for shape in ((1, 3), (5, 52)):
            ids = torch.randint(1, 21128, shape)
            self.assertEqual(tuple(text(ids).shape), (shape[0], 32))

    def test_text_attention_projections_are_one_product(self):
        """Query, key and value are one product in every text layer but the last, whose queries come
        from its first row (key and value one product there): 4 Linears per layer and one more in the
        last instead of 6 each. int8 embeddings are exactly those of separate products (the same
        per-channel scales, the same quantized activations), fp32 ones equal to float rounding."""
        sys.path.insert(0, os.path.join(HERE, "..", "scripts"))
        import export_model
        import cnclip_towers
        export_model.load_torch()
        with open(TINY_CONFIG, encoding="utf-8") as f:
            config = export_model.parse_config(json.load(f), TINY_CONFIG)
        sd = export_model.check_state_dict(export_model.load_checkpoint(TINY), config, TINY)
        layers = config["text_num_hidden_layers"]
        ids = torch.tensor([[101, 1911, 7345, 510, 102, 0, 0], [101, 3345, 2225, 7991, 4638, 1, 102]])
        example = torch.tensor([[101, 2207, 102, 0], [101, 102, 0, 0]])
        fuse = cnclip_towers.fuse_projections
        for precision, linear, tolerance in (("fp32", "aten::linear", 1e-6),
                                             ("int8", "quantized::linear_dynamic", 0.0)):
            with self.subTest(precision=precision):
                outputs, counts = [], []
                for fused in (True, False):
                    try:
                        if not fused:
                            cnclip_towers.fuse_projections = lambda module: None
                        text = export_model.build_encoders(sd, config)[1]
                    finally:
                        cnclip_towers.fuse_projections = fuse
                    ts = export_model.to_torchscript(text, example, precision)
                    graph = torch.jit.freeze(ts.eval()).graph if precision == "int8" else ts.graph
                    torch._C._jit_pass_inline(graph)
                    counts.append(sum(1 for n in graph.nodes() if n.kind() == linear))
                    with torch.no_grad():
                        outputs.append(ts(ids))
                self.assertEqual(counts, [4 * layers + 1, 6 * layers])
                self.assertLessEqual((outputs[0] - outputs[1]).abs().max().item(), tolerance)

    def test_fp32_checkpoint_is_rounded_like_cn_clip(self):
        ckpt = torch.load(TINY, map_location="cpu")
        # Tiny fp32 perturbations that vanish when rounded to fp16, as cn_clip does before loading.
        ckpt["state_dict"] = {k: (v.float() * (1 + 1e-5) if v.dtype == torch.float16 else v)
                              for k, v in ckpt["state_dict"].items()}
        fp32 = os.path.join(self.dir, "fp32.pt")
        torch.save(ckpt, fp32)
        a, b = os.path.join(self.dir, "a"), os.path.join(self.dir, "b")
        self.assertEqual(export("--checkpoint", TINY, "--config", TINY_CONFIG, "--out", a).returncode, 0)
        self.assertEqual(export("--checkpoint", fp32, "--config", TINY_CONFIG, "--out", b).returncode, 0)
        ids = torch.tensor([[101, 1911, 7345, 102, 0]])
        ta = torch.jit.load(os.path.join(a, "text_encoder.pt"))(ids)
        tb = torch.jit.load(os.path.join(b, "text_encoder.pt"))(ids)
        self.assertTrue(torch.equal(ta, tb))

    def test_logit_scale_of_shape_1_is_accepted(self):
        """PyTorch's load_state_dict (so cn_clip's loader) takes a [1] tensor for a scalar parameter."""
        ckpt = torch.load(TINY, map_location="cpu")
        ckpt["state_dict"]["module.logit_scale"] = ckpt["state_dict"]["module.logit_scale"].reshape(1)
        path = os.path.join(self.dir, "scale1.pt")
        torch.save(ckpt, path)
        out = os.path.join(self.dir, "b")
        r = export("--checkpoint", path, "--config", TINY_CONFIG, "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(out, "bundle.json")) as f:
            self.assertAlmostEqual(json.load(f)["logit_scale"], 13.809393882751465, places=5)
        ckpt["state_dict"]["module.logit_scale"] = ckpt["state_dict"]["module.logit_scale"].reshape(1, 1)
        torch.save(ckpt, path)
        self.assert_one_line_error(export("--checkpoint", path, "--config", TINY_CONFIG, "--out", out + "2"),
                                   "logit_scale", "shape [1, 1]")

    def test_random_init(self):
        out = os.path.join(self.dir, "r")
        r = export("--random-init", "tiny", "--seed", "3", "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        m = json.load(open(os.path.join(out, "bundle.json")))
        self.assertEqual(m["source"], {"kind": "random-init", "seed": 3})

    def test_missing_checkpoint(self):
        out = os.path.join(self.dir, "x")
        self.assert_one_line_error(export("--checkpoint", "/nonexistent.pt", "--out", out), "/nonexistent.pt")
        self.assertFalse(os.path.exists(out))

    def test_not_a_checkpoint(self):
        bad = os.path.join(self.dir, "bad.pt")
        open(bad, "w").write("hello")
        out = os.path.join(self.dir, "x")
        self.assert_one_line_error(export("--checkpoint", bad, "--out", out), bad)
        self.assertFalse(os.path.exists(out))

    def test_unknown_architecture(self):
        self.assert_one_line_error(export("--checkpoint", TINY, "--arch", "ViT-Z-99", "--out", self.dir + "/x"),
                                   "ViT-Z-99")

    def test_unknown_architecture_needs_config(self):
        """The tiny checkpoint's shapes match no released model and do not give its text head count:
        without --config the exporter refuses instead of guessing (it guessed 1 head; the model has 2)."""
        out = os.path.join(self.dir, "x")
        self.assert_one_line_error(export("--checkpoint", TINY, "--out", out), TINY, "--config", "head count")
        self.assertFalse(os.path.exists(out))
        self.assertEqual(sorted(os.listdir(self.dir)), [])

    def test_config_head_count_must_divide_the_width(self):
        cfg = json.load(open(TINY_CONFIG))
        cfg["text_num_attention_heads"] = 3
        path = os.path.join(self.dir, "bad_config.json")
        json.dump(cfg, open(path, "w"))
        self.assert_one_line_error(export("--checkpoint", TINY, "--config", path, "--out", self.dir + "/x"),
                                   path, "text_num_attention_heads 3")

    def test_wrong_shape_names_the_key(self):
        ckpt = torch.load(TINY, map_location="cpu")
        key = "module.visual.transformer.resblocks.1.mlp.c_fc.weight"
        ckpt["state_dict"][key] = torch.zeros(5, 5, dtype=torch.float16)
        bad = os.path.join(self.dir, "shape.pt")
        torch.save(ckpt, bad)
        self.assert_one_line_error(export("--checkpoint", bad, "--config", TINY_CONFIG, "--out", self.dir + "/x"),
                                   "visual.transformer.resblocks.1.mlp.c_fc.weight")

    def test_non_finite_weights_are_refused(self):
        """NaN in a tensor, or an fp32 value that becomes infinite when rounded to fp16 as cn_clip does."""
        for key, value in (("module.visual.proj", float("nan")), ("module.text_projection", 1e6)):
            ckpt = torch.load(TINY, map_location="cpu")
            t = ckpt["state_dict"][key].float()
            t[0, 0] = value
            ckpt["state_dict"][key] = t
            bad = os.path.join(self.dir, "nan.pt")
            torch.save(ckpt, bad)
            out = os.path.join(self.dir, "x")
            self.assert_one_line_error(export("--checkpoint", bad, "--config", TINY_CONFIG, "--out", out),
                                       bad, key[len("module."):], "NaN or infinite")
            self.assertFalse(os.path.exists(out))

    def test_failed_export_keeps_the_old_bundle(self):
        out = os.path.join(self.dir, "b")
        self.assertEqual(export("--random-init", "tiny", "--out", out).returncode, 0)
        before = open(os.path.join(out, "bundle.json")).read()
        self.assertEqual(export("--checkpoint", "/nonexistent.pt", "--out", out).returncode, 1)
        self.assertEqual(open(os.path.join(out, "bundle.json")).read(), before)
        self.assertEqual(sorted(os.listdir(self.dir)), ["b"])


class LayoutTest(unittest.TestCase):
    def test_vitb16_layout_matches_cn_clip(self):
        """Every key and shape of the real ViT-B-16 state_dict (vitb16_keys.json), fp16 rule included."""
        sys.path.insert(0, os.path.join(HERE, "..", "scripts"))
        import export_model
        ref = json.load(open(os.path.join(FIXTURES, "vitb16_keys.json")))
        real = {e["key"]: (tuple(e["shape"]), e["dtype"]) for e in ref["keys"] if e["in_model_state_dict"]}
        ours = export_model.expected_shapes(export_model.ARCHS["ViT-B-16"])
        self.assertEqual(set(ours), set(real))
        for key, shape in ours.items():
            self.assertEqual(tuple(shape), real[key][0], key)
            self.assertEqual(export_model.is_fp16_designated(key), real[key][1] == "float16", key)

    def test_released_architectures_are_inferred_from_shapes(self):
        """Shapes alone pick each released architecture; anything else is refused, naming --config."""
        sys.path.insert(0, os.path.join(HERE, "..", "scripts"))
        import export_model
        export_model.load_torch()

        def shaped(config):
            return {k: torch.empty(shape, device="meta") for k, shape in export_model.expected_shapes(config).items()}

        for name in export_model.RELEASED:
            arch, config = export_model.infer_config(shaped(export_model.ARCHS[name]), "ckpt.pt")
            self.assertEqual(arch, name)
            self.assertEqual(config, export_model.ARCHS[name])
        odd = dict(export_model.ARCHS["ViT-B-16"], text_num_hidden_layers=6)
        for config in (export_model.ARCHS["tiny"], odd):
            with self.assertRaises(export_model.ExportError) as ctx:
                export_model.infer_config(shaped(config), "ckpt.pt")
            self.assertIn("--config", str(ctx.exception))


if __name__ == "__main__":
    unittest.main()
