#!/usr/bin/python3
"""Download a released Chinese-CLIP checkpoint into the cache, checked, with curl.

    download_model.py --model ViT-B-16 [--source huggingface|modelscope] [--cache-dir DIR]

Prints the path of the checked checkpoint on stdout; everything else goes to stderr. Next to it,
FILE.json records where it came from (source, URL, size, sha256, date); scripts/setup.sh copies
that record into the exported bundle as origin.json, which `cnclip model-info` shows.

Where the files are. The file names are those of cn_clip's `_MODELS` table (cn_clip/clip/utils.py,
OFA-Sys/Chinese-CLIP commit 5bbd36af: "ViT-B-16" -> clip_cn_vit-b-16.pt, ... "RN50" ->
clip_cn_rn50.pt; cn_clip itself downloads them from its Aliyun OSS bucket). The hub repositories
are the OFA-Sys model cards of each size:
  huggingface  <HF_ENDPOINT>/OFA-Sys/<repo>/resolve/main/<file>
               HF_ENDPOINT as huggingface_hub reads it (default https://huggingface.co; a mirror
               such as https://hf-mirror.com works the same way)
  modelscope   https://<MODELSCOPE_DOMAIN>/api/v1/models/AI-ModelScope/<repo>/repo?Revision=master&FilePath=<file>
               MODELSCOPE_DOMAIN as the modelscope library reads it (default www.modelscope.cn;
               a value with a scheme, http://host:port, is used as it is)

What is checked, and from where:
  huggingface  a HEAD of the resolve URL, not following its redirect, as huggingface_hub's
               get_hf_file_metadata does: X-Linked-Size (else Content-Length) is the size, and
               X-Linked-Etag (else ETag) is the file's sha256 when it is 64 hex digits (an LFS
               file's etag is its sha256; a small git file's is a 40-digit git hash, not used).
               Without one, the tree API (<endpoint>/api/models/OFA-Sys/<repo>/tree/main, each
               LFS entry's lfs.oid is the sha256 and lfs.size the size).
  modelscope   the file list API (.../repo/files?Revision=master&Recursive=true: Data.Files[]
               with Path, Size and Sha256), what the modelscope library checks downloads against.
If a hub publishes no sha256, the size is checked and the record says "sha256_published": null.

Download: curl (Debian's) with a progress bar on a terminal, into FILE.part, resumed with a Range
request (curl -C -) after a dropped connection (up to 5 tries in a run) or in a later run. A file
of the wrong size or sha256 is deleted and refused (exit 1). A complete, recorded file in the cache
is used again without any request once its sha256 is still the recorded one (else it is downloaded
again); a complete file without its record (a run stopped just before writing it, or a file put
there by hand) is checked against the hub's size and sha256 instead of being downloaded. An unreachable hub gives one line:
  download_model.py: could not reach URL (REASON); download the file by hand and run scripts/setup.sh --checkpoint FILE
Exit status: 0 ok, 1 failure, 2 usage error.
"""
import argparse
import datetime
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse

PROG = "download_model.py"

# name -> (repository on the hubs, file name from cn_clip's _MODELS)
MODELS = {
    "ViT-B-16": ("chinese-clip-vit-base-patch16", "clip_cn_vit-b-16.pt"),
    "ViT-L-14": ("chinese-clip-vit-large-patch14", "clip_cn_vit-l-14.pt"),
    "ViT-L-14-336": ("chinese-clip-vit-large-patch14-336px", "clip_cn_vit-l-14-336.pt"),
    "ViT-H-14": ("chinese-clip-vit-huge-patch14", "clip_cn_vit-h-14.pt"),
    "RN50": ("chinese-clip-rn50", "clip_cn_rn50.pt"),
}
SOURCES = ("huggingface", "modelscope")
HF_ORG = "OFA-Sys"
MS_ORG = "AI-ModelScope"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
TRIES = 5  # curl runs in a row without progress before giving up
# curl exit codes meaning the host was never reached: couldn't resolve proxy or host, couldn't
# connect, timeout, TLS handshake failed, certificate not trusted.
UNREACHABLE = {5, 6, 7, 28, 35, 60}
# curl exit codes after which a resumed try may succeed: partial file, receive error, empty reply,
# HTTP/2 stream error, timeout, connection refused while a download was under way.
RETRYABLE = {7, 18, 28, 52, 55, 56, 92}
CURL_WORDS = {7: "connection refused", 18: "the connection closed early", 28: "too slow or timed out",
              52: "empty reply", 55: "send error", 56: "receive error", 92: "HTTP/2 stream error"}


class Failure(Exception):
    """One line for the user; exit 1."""


def log(msg):
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def unreachable(url, reason, extra=""):
    return Failure(f"could not reach {url} ({reason}){extra}; download the file by hand and run "
                   f"scripts/setup.sh --checkpoint FILE")


def cache_home():
    """$XDG_CACHE_HOME when absolute, else $HOME/.cache (XDG Base Directory rule)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg.startswith("/"):
        return xdg
    home = os.environ.get("HOME", "")
    if home.startswith("/"):
        return os.path.join(home, ".cache")
    raise Failure("cannot find a cache directory: neither XDG_CACHE_HOME nor HOME is an absolute path; "
                  "give --cache-dir DIR")


def curl_base():
    # -q: ignore ~/.curlrc, so what runs is what is written here.
    return ["curl", "-q", "--connect-timeout", "20", "--user-agent", "cnclip-setup (curl)"]


def run_curl(args):
    try:
        return subprocess.run(curl_base() + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        raise Failure("curl is not installed (apt-get install curl, or run scripts/setup.sh without --no-packages)")


def curl_reason(proc):
    """curl's own one-line message, without its 'curl: (N) ' prefix."""
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    msg = lines[-1] if lines else f"curl exit status {proc.returncode}"
    return re.sub(r"^curl: \(\d+\)\s*", "", msg)


def parse_header_blocks(text):
    """curl -I output -> list of (status, {lower-case name: value}), one per response."""
    blocks = []
    for line in text.splitlines():
        line = line.rstrip("\r")
        if line.startswith("HTTP/"):
            parts = line.split()
            blocks.append((int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0, {}))
        elif ":" in line and blocks:
            k, v = line.split(":", 1)
            blocks[-1][1][k.strip().lower()] = v.strip()
    return blocks


def head(url, follow):
    args = ["-sS", "-I", "-H", "Accept-Encoding: identity", "--max-time", "60"]
    if follow:
        args += ["-L", "--max-redirs", "10"]
    proc = run_curl(args + [url])
    if proc.returncode != 0:
        raise unreachable(url, curl_reason(proc))
    blocks = parse_header_blocks(proc.stdout)
    if not blocks:
        raise Failure(f"{url}: no HTTP response")
    return blocks


def get_json(url):
    proc = run_curl(["-sS", "-L", "--max-time", "60", "-w", "\n%{http_code}", url])
    if proc.returncode != 0:
        raise unreachable(url, curl_reason(proc))
    body, _, code = proc.stdout.rpartition("\n")
    if code != "200":
        return int(code) if code.isdigit() else 0, None
    try:
        return 200, json.loads(body)
    except ValueError:
        return 200, None


def http_failure(url, status, source, kept=""):
    what = {401: "not found or needs a login", 403: "access refused", 404: "not found"}.get(status, "failed")
    other = "modelscope" if source == "huggingface" else "huggingface"
    later = "try again later, or " if status == 429 or status >= 500 else ""
    return Failure(f"{url}: {what} (HTTP {status}) on {source}{kept}; {later}try --source {other}, or "
                   f"download the file by hand and run scripts/setup.sh --checkpoint FILE")


def norm_etag(value):
    v = (value or "").strip()
    if v.startswith("W/"):
        v = v[2:]
    return v.strip('"').lower()


def hf_metadata(repo, file):
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/{HF_ORG}/{repo}/resolve/main/{urllib.parse.quote(file)}"
    status, h = head(url, follow=False)[0]
    if status >= 400:
        raise http_failure(url, status, "huggingface")
    size = h.get("x-linked-size") or (h.get("content-length") if status == 200 else None)
    etag = norm_etag(h.get("x-linked-etag") or h.get("etag"))
    sha, sha_from = (etag, "X-Linked-Etag" if h.get("x-linked-etag") else "ETag") if HEX64.match(etag) else (None, None)
    if sha is None:
        tree_url = f"{endpoint}/api/models/{HF_ORG}/{repo}/tree/main"
        code, tree = get_json(tree_url)
        for entry in tree if isinstance(tree, list) else []:
            if isinstance(entry, dict) and entry.get("path") == file:
                lfs = entry.get("lfs") or {}
                if HEX64.match(str(lfs.get("oid", "")).lower()):
                    sha, sha_from = lfs["oid"].lower(), "tree API lfs.oid"
                size = size or lfs.get("size") or entry.get("size")
    if size is None and 300 <= status < 400:
        final_status, fh = head(url, follow=True)[-1]
        if final_status >= 400:
            raise http_failure(url, final_status, "huggingface")
        size = fh.get("content-length")
    return dict(url=url, bytes=int(size) if size is not None else None, sha256=sha, sha256_from=sha_from)


def ms_metadata(repo, file):
    domain = os.environ.get("MODELSCOPE_DOMAIN") or "www.modelscope.cn"
    endpoint = (domain if "://" in domain else "https://" + domain).rstrip("/")
    base = f"{endpoint}/api/v1/models/{MS_ORG}/{repo}/repo"
    url = f"{base}?Revision=master&FilePath={urllib.parse.quote_plus(file)}"
    list_url = f"{base}/files?Revision=master&Recursive=true"
    code, listing = get_json(list_url)
    if code != 200:
        raise http_failure(list_url, code, "modelscope")
    files = ((listing or {}).get("Data") or {}).get("Files") if isinstance(listing, dict) else None
    if not isinstance(files, list):
        raise Failure(f"{list_url}: not a ModelScope file list")
    for entry in files:
        if isinstance(entry, dict) and entry.get("Path") == file:
            sha = str(entry.get("Sha256") or "").lower()
            return dict(url=url, bytes=int(entry["Size"]) if entry.get("Size") is not None else None,
                        sha256=sha if HEX64.match(sha) else None,
                        sha256_from="file list Sha256" if HEX64.match(sha) else None)
    raise Failure(f"{list_url}: {file} is not in {MS_ORG}/{repo}; try --source huggingface, or download the "
                  f"file by hand and run scripts/setup.sh --checkpoint FILE")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def mb(n):
    return f"{n / 1e6:.1f} MB"


def remove(*paths):
    for p in paths:
        try:
            os.remove(p)
        except FileNotFoundError:
            pass


def fetch(meta, part):
    """curl the URL into `part`, resuming what is there; returns when curl reports a whole file."""
    url, expected = meta["url"], meta["bytes"]
    tries, restarted = 0, False
    while True:
        have = os.path.getsize(part) if os.path.exists(part) else 0
        if expected is not None and have == expected:
            return
        if expected is not None and have > expected:
            log(f"{part}: longer than the published size; starting again")
            remove(part)
            have = 0
        progress = ["--progress-bar"] if sys.stderr.isatty() else ["-sS"]
        resume = ["-C", "-"] if have else []
        if have:
            log(f"resuming {url} at {mb(have)}" + (f" of {mb(expected)}" if expected else ""))
        else:
            log(f"downloading {url}" + (f" ({mb(expected)})" if expected else ""))
        proc = subprocess.run(
            curl_base() + ["-fL", "--max-redirs", "10", "--speed-limit", "1024", "--speed-time", "60",
                           "-w", "%{http_code}", "-o", part] + resume + progress + [url],
            stdout=subprocess.PIPE, stderr=None if sys.stderr.isatty() else subprocess.PIPE, text=True)
        if proc.returncode == 0:
            return
        # On a terminal curl has printed its own message above its progress bar.
        reason = curl_reason(proc) if proc.stderr is not None else CURL_WORDS.get(
            proc.returncode, f"curl exit status {proc.returncode}")
        now = os.path.getsize(part) if os.path.exists(part) else 0
        code = proc.stdout.strip()[-3:]
        if proc.returncode in (33, 36) or (proc.returncode == 22 and code == "416"):
            # The server will not resume this file (no Range support, or the range is wrong).
            if restarted:
                raise Failure(f"{url}: the server cannot resume the download ({reason})")
            log(f"{url}: the server cannot resume ({reason}); starting again")
            remove(part)
            restarted = True
            continue
        if proc.returncode == 22:
            raise http_failure(url, int(code) if code.isdigit() else 0, meta["source"],
                               f"; {mb(now)} kept in {part}, resumed by the next run" if now else "")
        if proc.returncode in UNREACHABLE and now == 0 and have == 0:
            raise unreachable(url, reason)
        if proc.returncode not in RETRYABLE:
            raise Failure(f"{url}: download failed ({reason})")
        tries = 0 if now > have else tries + 1
        if tries >= TRIES:
            raise unreachable(url, reason, f"; {mb(now)} kept in {part}, resumed by the next run")
        log(f"{url}: {reason} at {mb(now)}; trying again")
        time.sleep(min(2 ** tries, 8) if tries else 0.5)


def download(name, source, cache_dir):
    repo, file = MODELS[name]
    os.makedirs(cache_dir, exist_ok=True)
    target = os.path.join(cache_dir, file)
    record_path, part, part_meta_path = target + ".json", target + ".part", target + ".part.json"
    lock = open(os.path.join(cache_dir, file + ".lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        log(f"waiting for another download of {file} into {cache_dir}")
        fcntl.flock(lock, fcntl.LOCK_EX)

    record = read_json(record_path)
    if (os.path.isfile(target) and isinstance(record, dict) and record.get("file") == file
            and record.get("bytes") == os.path.getsize(target) and HEX64.match(str(record.get("sha256", "")))):
        # Hashed again (seconds) rather than trusted: a file damaged in the cache is not exported.
        if sha256_file(target) == record["sha256"]:
            log(f"{target}: in the cache (from {record.get('url')}, {record.get('downloaded')}); not downloading")
            return target
        log(f"{target}: its sha256 is no longer the one recorded when it was downloaded; downloading it again")
        remove(target, record_path)
    adopted = os.path.isfile(target)
    if adopted:
        # Complete but unrecorded (a run stopped between the two renames, or put there by hand):
        # check it like a download that has just finished.
        os.replace(target, part)

    meta = hf_metadata(repo, file) if source == "huggingface" else ms_metadata(repo, file)
    meta["source"] = source
    if meta["bytes"] is not None:
        have = os.path.getsize(part) if os.path.exists(part) else 0
        free = shutil.disk_usage(cache_dir).free
        if meta["bytes"] - have > free:
            raise Failure(f"{cache_dir}: not enough space for {file} ({mb(meta['bytes'] - have)} to download, "
                          f"{mb(free)} free)")
    # A partial file is resumed only against the same published file.
    part_meta = read_json(part_meta_path)
    if os.path.exists(part) and not adopted and part_meta != {"url": meta["url"], "bytes": meta["bytes"],
                                                              "sha256": meta["sha256"]}:
        log(f"{part}: not a part of the file {source} publishes now; starting again")
        remove(part)
    write_json_atomic(part_meta_path, {"url": meta["url"], "bytes": meta["bytes"], "sha256": meta["sha256"]})

    fetch(meta, part)

    got = os.path.getsize(part)
    if meta["bytes"] is not None and got != meta["bytes"]:
        remove(part, part_meta_path)
        raise Failure(f"{meta['url']}: got {got} bytes, {source} publishes {meta['bytes']}: refused and deleted, "
                      f"nothing installed")
    log(f"checking the sha256 of {mb(got)}")
    sha = sha256_file(part)
    if meta["sha256"] is not None and sha != meta["sha256"]:
        remove(part, part_meta_path)
        raise Failure(f"{meta['url']}: sha256 {sha}, {source} publishes {meta['sha256']} ({meta['sha256_from']}): "
                      f"refused and deleted, nothing installed")
    if meta["sha256"] is None:
        log(f"{source} publishes no sha256 for {file}; checked its size only")
    record = {
        "model": name, "source": source, "url": meta["url"], "file": file, "bytes": got, "sha256": sha,
        "sha256_published": meta["sha256"], "sha256_from": meta["sha256_from"],
        "downloaded": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    write_json_atomic(record_path + ".new", record)
    os.replace(part, target)
    os.replace(record_path + ".new", record_path)
    remove(part_meta_path)
    log(f"{target}: {mb(got)}, sha256 {sha}" + (" (matches the published one)" if meta["sha256"] else ""))
    return target


def main(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="one of " + ", ".join(MODELS))
    ap.add_argument("--source", default="huggingface", help="huggingface (default) or modelscope")
    ap.add_argument("--cache-dir", help="where checkpoints are kept (default: $XDG_CACHE_HOME/cnclip/checkpoints, "
                                        "else ~/.cache/cnclip/checkpoints)")
    args = ap.parse_args(argv)
    if args.model not in MODELS:
        print(f"{PROG}: error: unknown model '{args.model}' (known: {', '.join(MODELS)})", file=sys.stderr)
        return 2
    if args.source not in SOURCES:
        print(f"{PROG}: error: unknown source '{args.source}' (known: {', '.join(SOURCES)})", file=sys.stderr)
        return 2
    try:
        cache_dir = args.cache_dir or os.path.join(cache_home(), "cnclip", "checkpoints")
        path = download(args.model, args.source, cache_dir)
    except Failure as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror
        print(f"{PROG}: {exc.filename or 'cache'}: {reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the partial download is kept and resumed by the next run", file=sys.stderr)
        return 130
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
