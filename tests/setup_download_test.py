"""scripts/setup.sh --model: download from a hub, check, cache, export, make it the default model.

A loopback HTTP server laid out like the hubs serves a random checkpoint in the released layout
(scripts/make_random_checkpoint.py, the reduced `tiny` configuration so that the suite stays fast;
setup is told `--arch tiny`, the one passthrough this needs):
  Hugging Face  HEAD/GET /OFA-Sys/<repo>/resolve/main/<file> -> 302 to /cdn/<file>, with
                X-Linked-Size and X-Linked-Etag (the sha256) as huggingface.co sends them;
                GET /api/models/OFA-Sys/<repo>/tree/main (lfs.oid, lfs.size)
  ModelScope    GET /api/v1/models/AI-ModelScope/<repo>/repo/files?Revision=master&Recursive=true
                GET /api/v1/models/AI-ModelScope/<repo>/repo?Revision=master&FilePath=<file>
Downloads honour Range (206), and the server can drop a connection after N bytes, publish a wrong
size or sha256, or leave the sha256 out of the headers. Every request is logged.

setup.sh runs with --no-build --no-packages and HF_ENDPOINT / MODELSCOPE_DOMAIN pointed at the
server, XDG_DATA_HOME and XDG_CACHE_HOME in a temporary directory.
Needs CNCLIP_BINARY (for model-info). Run with /usr/bin/python3 (torch, for the exporter).
"""
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PY = sys.executable
# What the server hosts: repository -> file (the same bytes under each), as cn_clip's _MODELS and the
# OFA-Sys model cards name them. ViT-B-16 is what setup installs; RN50 is downloaded only.
HOSTED = {"chinese-clip-vit-base-patch16": "clip_cn_vit-b-16.pt", "chinese-clip-rn50": "clip_cn_rn50.pt"}
HF_REPO, MS_REPO = "OFA-Sys/chinese-clip-vit-base-patch16", "AI-ModelScope/chinese-clip-vit-base-patch16"
FILE = "clip_cn_vit-b-16.pt"
RESOLVE = f"/{HF_REPO}/resolve/main/{FILE}"
CDN = f"/cdn/chinese-clip-vit-base-patch16/{FILE}"
CUT = 1_000_000  # bytes sent before a dropped connection


class Hub:
    """What the server publishes and serves; changed by the tests between runs."""

    def __init__(self, data):
        self.data = data
        self.sha = hashlib.sha256(data).hexdigest()
        self.reset()

    def reset(self):
        self.log = []                # (method, path with query, Range header or None)
        self.published_sha = self.sha
        self.published_size = len(self.data)
        self.etag_headers = True     # X-Linked-Etag / ETag on the resolve URL
        self.cuts = 0                # how many downloads to drop after CUT bytes
        self.down_after_cut = False  # after a drop, answer 503 to everything
        self.down = False
        self.ranges = True           # honour Range requests (else answer 200 with the whole file)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub = None

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.answer(head=True)

    def do_GET(self):
        self.answer(head=False)

    def send(self, status, body=b"", headers=(), head=False):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def answer(self, head):
        hub = self.hub
        hub.log.append((self.command, self.path, self.headers.get("Range")))
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        parts = url.path.split("/")
        if hub.down:
            return self.send(503, b"down", head=head)
        # /OFA-Sys/<repo>/resolve/main/<file>: a redirect to the file, with its size and sha256.
        if len(parts) == 6 and parts[1] == "OFA-Sys" and parts[3:5] == ["resolve", "main"] \
                and HOSTED.get(parts[2]) == parts[5]:
            headers = [("Location", f"/cdn/{parts[2]}/{parts[5]}"), ("X-Linked-Size", str(hub.published_size)),
                       ("X-Repo-Commit", "0" * 40)]
            if hub.etag_headers:
                headers += [("X-Linked-Etag", f'"{hub.published_sha}"'), ("ETag", f'"{hub.published_sha}"')]
            return self.send(302, b"", headers, head)
        # /api/models/OFA-Sys/<repo>/tree/main
        if len(parts) == 7 and parts[1:4] == ["api", "models", "OFA-Sys"] and parts[5:] == ["tree", "main"] \
                and parts[4] in HOSTED:
            body = json.dumps([{"type": "file", "oid": "1" * 40, "size": 134, "path": HOSTED[parts[4]],
                                "lfs": {"oid": hub.published_sha, "size": hub.published_size, "pointerSize": 134}},
                               {"type": "file", "oid": "2" * 40, "size": 9, "path": "README.md"}]).encode()
            return self.send(200, body, [("Content-Type", "application/json")], head)
        # /cdn/<repo>/<file>: where the resolve URL redirects.
        if len(parts) == 4 and parts[1] == "cdn" and HOSTED.get(parts[2]) == parts[3]:
            return self.file(head)
        # /api/v1/models/AI-ModelScope/<repo>/repo[/files]
        if len(parts) in (7, 8) and parts[1:5] == ["api", "v1", "models", "AI-ModelScope"] and parts[6] == "repo" \
                and parts[5] in HOSTED:
            if query.get("Revision") != ["master"]:
                return self.send(400, b"bad revision", head=head)
            if len(parts) == 8 and parts[7] == "files":
                body = json.dumps({"Code": 200, "Success": True, "Data": {"Files": [
                    {"Name": HOSTED[parts[5]], "Path": HOSTED[parts[5]], "Type": "blob",
                     "Size": hub.published_size, "Sha256": hub.published_sha},
                    {"Name": "README.md", "Path": "README.md", "Type": "blob", "Size": 9, "Sha256": "0" * 64}]}})
                return self.send(200, body.encode(), [("Content-Type", "application/json")], head)
            if len(parts) == 7 and query.get("FilePath") == [HOSTED[parts[5]]]:
                return self.file(head)
        return self.send(404, b"not found", head=head)

    def file(self, head):
        data, start = self.hub.data, 0
        rng = self.headers.get("Range") if self.hub.ranges else None
        if rng:
            first, _, last = rng.removeprefix("bytes=").partition("-")
            start = int(first)
            if start >= len(data):
                return self.send(416, b"", [("Content-Range", f"bytes */{len(data)}")], head)
            end = int(last) + 1 if last else len(data)
            body = data[start:end]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        if self.hub.cuts > 0 and len(body) > CUT:
            self.hub.cuts -= 1
            self.hub.down = self.hub.down_after_cut
            self.wfile.write(body[:CUT])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HubTestCase(unittest.TestCase):
    """The hub server, a checkpoint it serves, its direct export, temporary XDG homes; no tests."""
    ARCH = "tiny"                 # the checkpoint's configuration (make_random_checkpoint.py --arch)
    ARCH_ARGS = ("--arch", "tiny")  # what setup is told: a reduced checkpoint is not the ViT-B-16 it asks for

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="cnclip-setup-download-")
        ckpt = os.path.join(cls.tmp, FILE)
        subprocess.run([PY, f"{REPO}/scripts/make_random_checkpoint.py", "--arch", cls.ARCH, "--seed", "5",
                        "--out", ckpt], check=True)
        with open(ckpt, "rb") as f:
            cls.hub = Hub(f.read())
        assert len(cls.hub.data) > 2 * CUT, len(cls.hub.data)
        subprocess.run([PY, f"{REPO}/scripts/export_model.py", "--checkpoint", ckpt, "--arch", cls.ARCH,
                        "--out", os.path.join(cls.tmp, "direct")], check=True)
        cls.direct = cls.manifest(os.path.join(cls.tmp, "direct"))
        Handler.hub = cls.hub
        cls.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        cls.endpoint = f"http://127.0.0.1:{cls.server.server_address[1]}"
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()
        cls.ckpt = ckpt

    @classmethod
    def tearDownClass(cls):
        cls.server.shutdown()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.hub.reset()
        self.home = tempfile.mkdtemp(prefix=self._testMethodName + "-", dir=self.tmp)
        self.data = os.path.join(self.home, "data")
        self.cache = os.path.join(self.home, "cache")

    @staticmethod
    def manifest(bundle):
        with open(os.path.join(bundle, "bundle.json"), encoding="utf-8") as f:
            return json.load(f)

    def setup(self, *args, endpoint=None):
        env = {k: v for k, v in os.environ.items()
               if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "cnclip_model",
                                    "cnclip_checkpoint", "hf_endpoint", "modelscope_domain")}
        ep = endpoint or self.endpoint
        env.update(HOME=self.home, XDG_DATA_HOME=self.data, XDG_CACHE_HOME=self.cache, HF_ENDPOINT=ep,
                   MODELSCOPE_DOMAIN=ep, no_proxy="*")
        self.hub.log.clear()
        return subprocess.run(["bash", f"{REPO}/scripts/setup.sh", "--no-build", "--no-packages", *args],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)

    def seed_bundle(self):
        """Put the direct export where setup installs it, so that a test about the download does not
        pay for another export: setup keeps a bundle that is already this checkpoint's export (what
        the first test checks), and still links it and writes its origin."""
        shutil.copytree(os.path.join(self.tmp, "direct"), os.path.join(self.data, "cnclip", "models", "ViT-B-16"))

    def install(self, *args, **kw):
        r = self.setup("--model", "ViT-B-16", *self.ARCH_ARGS, *args, **kw)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r

    def model_info(self):
        env = {k: v for k, v in os.environ.items() if k != "CNCLIP_MODEL"}
        env.update(HOME=self.home, XDG_DATA_HOME=self.data)
        r = subprocess.run([os.environ["CNCLIP_BINARY"], "model-info"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)

    def requests(self, prefix):
        return [(m, p, rng) for m, p, rng in self.hub.log if p.startswith(prefix)]

    def assert_default_is_the_checkpoint(self, precision="fp32"):
        models = os.path.join(self.data, "cnclip", "models")
        name = "ViT-B-16" if precision == "fp32" else "ViT-B-16-int8"
        self.assertEqual(os.readlink(os.path.join(models, "default")), os.path.join(models, name))
        m = self.manifest(os.path.join(models, "default"))
        self.assertEqual(m["precision"], precision)
        self.assertEqual(m["source"]["sha256"], self.hub.sha)
        if precision == "fp32":
            self.assertEqual(m["fingerprint"], self.direct["fingerprint"])
        return m

    def assert_nothing_installed(self):
        models = os.path.join(self.data, "cnclip", "models")
        self.assertFalse(os.path.lexists(os.path.join(models, "default")))
        self.assertFalse(os.path.exists(os.path.join(models, "ViT-B-16")))
        left = os.listdir(os.path.join(self.cache, "cnclip", "checkpoints")) \
            if os.path.isdir(os.path.join(self.cache, "cnclip", "checkpoints")) else []
        self.assertEqual([f for f in left if f.endswith((".pt", ".part", ".pt.json", ".part.json"))], [], left)

    def one_line(self, stderr):
        lines = [l for l in stderr.splitlines() if l.strip()]
        self.assertEqual(len(lines), 1, stderr)
        return lines[0]


class SetupDownload(HubTestCase):
    """The reduced checkpoint (fast enough for the normal suite)."""

    def test_installs_the_default_model_and_a_second_run_makes_no_request(self):
        r = self.install()
        self.assertIn("default model: " + os.path.join(self.data, "cnclip", "models", "ViT-B-16"), r.stdout)
        self.assert_default_is_the_checkpoint()
        self.assertEqual(self.requests(RESOLVE)[0][0], "HEAD")
        self.assertEqual([m for m, _, _ in self.requests(CDN)], ["GET"])
        # cnclip model-info (default model, no --model) shows where it came from.
        info = self.model_info()
        self.assertEqual(info["fingerprint"], self.direct["fingerprint"])
        origin = info["origin"]
        self.assertEqual(origin["source"], "huggingface")
        self.assertEqual(origin["url"], self.endpoint + RESOLVE)
        self.assertEqual(origin["file"], FILE)
        self.assertEqual(origin["sha256"], self.hub.sha)
        self.assertEqual(origin["sha256_published"], self.hub.sha)
        self.assertEqual(origin["sha256_from"], "X-Linked-Etag")
        self.assertRegex(origin["downloaded"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        bundle_json = os.path.join(self.data, "cnclip", "models", "ViT-B-16", "bundle.json")
        mtime = os.stat(bundle_json).st_mtime_ns

        r = self.install()
        self.assertEqual(self.hub.log, [], "a second run made requests")
        self.assertEqual(os.stat(bundle_json).st_mtime_ns, mtime, "a second run exported again")
        self.assertIn("in the cache", r.stderr)
        self.assert_default_is_the_checkpoint()

        # A cached file damaged since (same size) is downloaded again, not used.
        cached = os.path.join(self.cache, "cnclip", "checkpoints", FILE)
        with open(cached, "r+b") as f:
            f.seek(len(self.hub.data) // 2)
            f.write(b"\xff\x00\xff")
        r = self.install()
        self.assertIn("no longer the one recorded", r.stderr)
        self.assertEqual([m for m, _, _ in self.requests(CDN)], ["GET"])
        with open(cached, "rb") as f:
            self.assertEqual(f.read(), self.hub.data)
        self.assertEqual(os.stat(bundle_json).st_mtime_ns, mtime, "the same checkpoint was exported again")

    def test_a_cached_file_without_its_record_is_checked_not_downloaded(self):
        self.seed_bundle()
        checkpoints = os.path.join(self.cache, "cnclip", "checkpoints")
        os.makedirs(checkpoints)
        shutil.copyfile(self.ckpt, os.path.join(checkpoints, FILE))
        self.install()
        self.assertEqual([m for m, _, _ in self.hub.log], ["HEAD"])
        self.assert_default_is_the_checkpoint()

    def test_a_file_the_hub_does_not_have(self):
        r = self.setup("--model", "ViT-L-14")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertEqual(self.one_line(r.stderr),
                         f"download_model.py: {self.endpoint}/OFA-Sys/chinese-clip-vit-large-patch14/resolve/main/"
                         "clip_cn_vit-l-14.pt: not found (HTTP 404) on huggingface; try --source modelscope, or "
                         "download the file by hand and run scripts/setup.sh --checkpoint FILE")
        self.assertFalse(os.path.lexists(os.path.join(self.data, "cnclip", "models", "default")))

    def test_rn50_is_downloaded_from_its_repository(self):
        for source, path in [("huggingface", "/OFA-Sys/chinese-clip-rn50/resolve/main/clip_cn_rn50.pt"),
                             ("modelscope", "/api/v1/models/AI-ModelScope/chinese-clip-rn50/repo?Revision=master"
                                            "&FilePath=clip_cn_rn50.pt")]:
            with self.subTest(source=source):
                self.hub.log.clear()
                cache = os.path.join(self.home, source)
                r = subprocess.run([PY, f"{REPO}/scripts/download_model.py", "--model", "RN50", "--source", source,
                                    "--cache-dir", cache],
                                   env=dict(os.environ, HF_ENDPOINT=self.endpoint, MODELSCOPE_DOMAIN=self.endpoint,
                                            no_proxy="*"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(r.stdout, os.path.join(cache, "clip_cn_rn50.pt") + "\n")
                with open(os.path.join(cache, "clip_cn_rn50.pt.json")) as f:
                    record = json.load(f)
                self.assertEqual((record["model"], record["url"], record["sha256"]),
                                 ("RN50", self.endpoint + path, self.hub.sha))
                self.assertIn(path, [p for _, p, _ in self.hub.log])

    def test_model_info_warns_about_a_damaged_origin_record(self):
        bundle = os.path.join(self.home, "bundle")
        shutil.copytree(os.path.join(self.tmp, "direct"), bundle)
        for content in ("{not json", "[1, 2]"):
            with self.subTest(content=content):
                with open(os.path.join(bundle, "origin.json"), "w") as f:
                    f.write(content)
                r = subprocess.run([os.environ["CNCLIP_BINARY"], "model-info", "--model", bundle],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertNotIn("origin", json.loads(r.stdout))
                self.assertEqual(self.one_line(r.stderr),
                                 f"cnclip: warning: {bundle}/origin.json: not a JSON object")

    def test_a_dropped_download_resumes_with_a_range_request(self):
        self.seed_bundle()
        self.hub.cuts = 1
        self.install()
        gets = self.requests(CDN)
        self.assertEqual([rng for _, _, rng in gets], [None, f"bytes={CUT}-"])
        self.assert_default_is_the_checkpoint()

    def test_a_server_that_cannot_resume_gets_the_whole_file_again(self):
        self.seed_bundle()
        self.hub.cuts, self.hub.ranges = 1, False
        r = self.install()
        self.assertIn("the server cannot resume", r.stderr)
        self.assertEqual([rng for _, _, rng in self.requests(CDN)], [None, f"bytes={CUT}-", None])
        self.assert_default_is_the_checkpoint()

    def test_a_partial_file_from_an_earlier_run_is_resumed(self):
        self.hub.cuts, self.hub.down_after_cut = 1, True
        r = self.setup("--model", "ViT-B-16", *self.ARCH_ARGS)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("HTTP 503", r.stderr)
        part = os.path.join(self.cache, "cnclip", "checkpoints", FILE + ".part")
        self.assertEqual(os.path.getsize(part), CUT)
        self.assert_nothing_installed_but_the_part()

        self.hub.reset()
        self.seed_bundle()
        self.install()
        self.assertEqual([rng for _, _, rng in self.requests(CDN)], [f"bytes={CUT}-"])
        self.assertFalse(os.path.exists(part))
        self.assert_default_is_the_checkpoint()

    def assert_nothing_installed_but_the_part(self):
        models = os.path.join(self.data, "cnclip", "models")
        self.assertFalse(os.path.lexists(os.path.join(models, "default")))
        self.assertFalse(os.path.exists(os.path.join(models, "ViT-B-16")))
        self.assertFalse(os.path.exists(os.path.join(self.cache, "cnclip", "checkpoints", FILE)))

    def test_a_wrong_checksum_is_refused_and_nothing_is_installed(self):
        self.hub.published_sha = hashlib.sha256(b"another file").hexdigest()
        r = self.setup("--model", "ViT-B-16", *self.ARCH_ARGS)
        self.assertEqual(r.returncode, 1, r.stderr)
        line = [l for l in r.stderr.splitlines() if "refused" in l]
        self.assertEqual(len(line), 1, r.stderr)
        self.assertIn(f"sha256 {self.hub.sha}, huggingface publishes {self.hub.published_sha}", line[0])
        self.assertIn("nothing installed", line[0])
        self.assert_nothing_installed()

    def test_a_wrong_size_is_refused_and_nothing_is_installed(self):
        for published in (len(self.hub.data) + 1000, len(self.hub.data) - 1000):
            with self.subTest(published=published):
                self.hub.published_size = published
                r = self.setup("--model", "ViT-B-16", *self.ARCH_ARGS)
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertIn("refused and deleted, nothing installed", r.stderr)
                self.assert_nothing_installed()

    def test_an_unreachable_hub_gives_one_line(self):
        endpoint = f"http://127.0.0.1:{free_port()}"
        r = self.setup("--model", "ViT-B-16", *self.ARCH_ARGS, endpoint=endpoint)
        self.assertEqual(r.returncode, 1, r.stderr)
        line = self.one_line(r.stderr)
        self.assertTrue(line.startswith(f"download_model.py: could not reach {endpoint}{RESOLVE} ("), line)
        self.assertTrue(line.endswith("; download the file by hand and run scripts/setup.sh --checkpoint FILE"), line)
        self.assert_nothing_installed()
        # cnclip, left without a model, says how to install one.
        env = {k: v for k, v in os.environ.items() if k != "CNCLIP_MODEL"}
        env.update(HOME=self.home, XDG_DATA_HOME=self.data)
        r = subprocess.run([os.environ["CNCLIP_BINARY"], "embed-text", "狗"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertEqual(self.one_line(r.stderr),
                         f"cnclip: error: {self.data}/cnclip/models/default: model bundle not found (give --model DIR or "
                         "set CNCLIP_MODEL; scripts/setup.sh --model ViT-B-16 installs one)")

    def test_modelscope_layout(self):
        self.seed_bundle()
        self.install("--source", "modelscope")
        self.assertEqual([p for _, p, _ in self.hub.log], [
            f"/api/v1/models/{MS_REPO}/repo/files?Revision=master&Recursive=true",
            f"/api/v1/models/{MS_REPO}/repo?Revision=master&FilePath={FILE}"])
        self.assert_default_is_the_checkpoint()
        origin = self.model_info()["origin"]
        self.assertEqual(origin["source"], "modelscope")
        self.assertEqual(origin["sha256_from"], "file list Sha256")
        self.assertEqual(origin["url"], f"{self.endpoint}/api/v1/models/{MS_REPO}/repo?Revision=master&FilePath={FILE}")

    def test_modelscope_wrong_checksum_is_refused(self):
        self.hub.published_sha = "f" * 64
        r = self.setup("--model", "ViT-B-16", *self.ARCH_ARGS, "--source", "modelscope")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("modelscope publishes " + "f" * 64, r.stderr)
        self.assert_nothing_installed()

    def test_sha256_from_the_tree_api_when_the_headers_have_none(self):
        self.hub.etag_headers = False
        self.seed_bundle()
        self.install()
        self.assertEqual(len(self.requests(f"/api/models/{HF_REPO}/tree/main")), 1)
        self.assertEqual(self.model_info()["origin"]["sha256_from"], "tree API lfs.oid")
        # ... and a wrong one there is refused too.
        self.setUp()
        self.hub.etag_headers = False
        self.hub.published_sha = "0" * 64
        r = self.setup("--model", "ViT-B-16", *self.ARCH_ARGS)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("(tree API lfs.oid): refused", r.stderr)
        self.assert_nothing_installed()

    def test_int8_beside_fp32(self):
        self.install("--precision", "int8")
        models = os.path.join(self.data, "cnclip", "models")
        self.assertEqual(self.manifest(os.path.join(models, "ViT-B-16"))["fingerprint"], self.direct["fingerprint"])
        m = self.assert_default_is_the_checkpoint("int8")
        self.assertEqual(m["architecture"], "tiny")
        self.assertEqual([m for m, _, _ in self.requests(CDN)], ["GET"])
        self.assertEqual(self.model_info()["origin"]["sha256"], self.hub.sha)

    def test_a_local_checkpoint_is_installed_the_same_way(self):
        r = self.setup("--checkpoint", self.ckpt, *self.ARCH_ARGS)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.hub.log, [])
        self.assert_default_is_the_checkpoint()
        origin = self.model_info()["origin"]
        self.assertEqual((origin["source"], origin["file"], origin["sha256"]), ("file", FILE, self.hub.sha))
        self.assertEqual(origin["checkpoint"], self.ckpt)

    def test_the_default_link_follows_the_latest_install_but_a_directory_is_left_alone(self):
        self.seed_bundle()
        self.install()
        models = os.path.join(self.data, "cnclip", "models")
        # Another model installed later becomes the default (the link is replaced).
        r = self.setup("--checkpoint", self.ckpt, "--model", "ViT-L-14", *self.ARCH_ARGS)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(os.readlink(os.path.join(models, "default")), os.path.join(models, "ViT-L-14"))
        self.assertEqual(self.manifest(os.path.join(models, "ViT-L-14"))["fingerprint"], self.direct["fingerprint"])
        # A directory there is the user's own.
        os.remove(os.path.join(models, "default"))
        os.mkdir(os.path.join(models, "default"))
        r = self.install()
        self.assertIn(f"{models}/default is not a link (left alone)", r.stderr)
        self.assertTrue(os.path.isdir(os.path.join(models, "default")) and
                        not os.path.islink(os.path.join(models, "default")))
        self.assertEqual(os.listdir(os.path.join(models, "default")), [])

    def test_help(self):
        r = subprocess.run(["bash", f"{REPO}/scripts/setup.sh", "--help"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("scripts/setup.sh [--model NAME]", r.stdout)
        self.assertIn("HF_ENDPOINT", r.stdout)
        self.assertNotIn("set -e", r.stdout)

    def test_usage_errors(self):
        for args, message in [(["--model", "ViT-B-32"], "unknown model 'ViT-B-32'"),
                              (["--model", "ViT-B-16", "--source", "github"], "unknown source 'github'"),
                              (["--model", "ViT-B-16", "--precision", "fp16"], "unknown precision 'fp16'"),
                              (["--precision", "int8"], "--precision needs --model NAME"),
                              (["--model"], "--model needs a value")]:
            with self.subTest(args=args):
                r = self.setup(*args)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(message, self.one_line(r.stderr))
                self.assertEqual(self.hub.log, [])


class SetupDownloadFullSize(HubTestCase):
    """A full-size ViT-B-16 checkpoint (random weights, released layout, 376 MB) installed by
    `setup.sh --model ViT-B-16` with nothing else: exported as ViT-B-16, searched with. ctest label
    `full` (setup_download_full_size_py)."""
    ARCH = "ViT-B-16"
    ARCH_ARGS = ()

    def test_the_released_layout_installs_as_vit_b_16(self):
        self.install()
        m = self.assert_default_is_the_checkpoint()
        self.assertEqual((m["architecture"], m["embedding_dim"]), ("ViT-B-16", 512))
        self.assertEqual(self.model_info()["origin"]["sha256"], self.hub.sha)
        env = {k: v for k, v in os.environ.items() if k != "CNCLIP_MODEL"}
        env.update(HOME=self.home, XDG_DATA_HOME=self.data)
        r = subprocess.run([os.environ["CNCLIP_BINARY"], "embed-text", "小狗"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(json.loads(r.stdout)["embedding"]), 512)


if __name__ == "__main__":
    unittest.main()
