"""Independent reference for combined queries and --not (tests/query_test.cpp), in numpy.

Reads one JSON object on stdin:
  {"vectors": {PATH: [floats]}, "terms": [{"weight": W, "embedding": [floats]}],
   "not": [[floats]], "not_threshold": S, "k": K}
Stored vectors are what `cnclip import` keeps (each normalized, as float32). The query is the
normalized weighted sum of the normalized term embeddings (float64, then float32 as cnclip keeps it);
photos whose cosine to any "not" vector is >= S are dropped, then the K best by cosine are printed as
{"paths": [...], "scores": [...]}.
"""
import json
import sys

import numpy as np


def unit32(v):
    v = np.asarray(v, dtype=np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


def main():
    req = json.load(sys.stdin)
    paths = list(req["vectors"])
    matrix = np.stack([unit32(req["vectors"][p]) for p in paths]).astype(np.float64)
    q = np.zeros(matrix.shape[1])
    for t in req["terms"]:
        e = np.asarray(t["embedding"], dtype=np.float64)
        q += t["weight"] * e / np.linalg.norm(e)
    q = (q / np.linalg.norm(q)).astype(np.float32).astype(np.float64)
    scores = matrix @ q
    keep = np.ones(len(paths), dtype=bool)
    for n in req.get("not", []):
        n = np.asarray(n, dtype=np.float32).astype(np.float64)
        keep &= (matrix @ n) < req["not_threshold"]
    order = [i for i in np.argsort(-scores, kind="stable") if keep[i]][: req["k"]]
    print(json.dumps({"paths": [paths[i] for i in order], "scores": [float(scores[i]) for i in order]}))


if __name__ == "__main__":
    main()
