#!/usr/bin/env python3
"""Builds a FAISS index with autofaiss over clip-retrieval-layout embeddings
and prints each query's top hits as JSON (used by tests/scale_out.rs).

    faiss_top1.py --embeddings DIR/img_emb --queries q.npy --work TMP [--k 5]

Output (standard output, one JSON object):
    {"index_key": "...", "rows": N, "dim": D,
     "faiss": [[[row, score], ...k], ...per query],   # autofaiss' index
     "exact": [[[row, score], ...k], ...per query]}   # numpy brute force, float32

Rows number the embeddings as autofaiss reads them: the .npy files of the
folder in name order, one after another. The queries are float32 and already
L2-normalized (`longclip embed`); the image embeddings are float16 rows,
normalized by longclip, compared in float32 here as in FAISS.

Index choice: autofaiss picks the index from the row count and the memory
and query-time budgets. For a few hundred rows it picks "Flat" (an exact
inner-product scan), which is what clip-retrieval users get at this size;
the budgets below are generous so that no approximate index is chosen just
to meet them. The script records autofaiss' choice and fails if it is not
an exact index: comparing an approximate index's top-1 with an exact search
would test the approximation, not longclip's embeddings. (IVF-PQ at scale is
the scale-out guide's business: docs/scale-out.md.)
"""

import argparse
import json
import logging
import os
import sys

import numpy as np


def top(scores: np.ndarray, ids: np.ndarray, k: int) -> list:
    return [[[int(i), float(s)] for i, s in zip(row_i[:k], row_s[:k]) if i >= 0] for row_i, row_s in zip(ids, scores)]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--embeddings", required=True, help="a folder of .npy files (clip-retrieval's img_emb/)")
    p.add_argument("--queries", required=True, help="a float32 .npy [Q, D], L2-normalized")
    p.add_argument("--work", required=True, help="a scratch folder for the index files")
    p.add_argument("--k", type=int, default=5)
    a = p.parse_args()

    logging.disable(logging.WARNING)  # autofaiss logs its steps at INFO
    import faiss
    from autofaiss import build_index

    os.makedirs(a.work, exist_ok=True)
    index_path = os.path.join(a.work, "knn.index")
    infos_path = os.path.join(a.work, "index_infos.json")
    # autofaiss prints its progress to stdout: keep stdout for our JSON
    real_stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        build_index(
            embeddings=a.embeddings,
            index_path=index_path,
            index_infos_path=infos_path,
            metric_type="ip",
            max_index_query_time_ms=1000,  # generous: no approximate index to meet a time budget
            max_index_memory_usage="1G",
            current_memory_available="2G",
            nb_cores=1,
            verbose=logging.ERROR,
        )
    finally:
        sys.stdout = real_stdout
    with open(infos_path) as f:
        infos = json.load(f)
    index_key = infos.get("index_key", "")
    if index_key != "Flat":
        print(f"autofaiss chose {index_key!r}, not an exact index: the top-1 comparison would test its approximation",
              file=sys.stderr)
        return 2

    index = faiss.read_index(index_path)
    queries = np.ascontiguousarray(np.load(a.queries), dtype=np.float32)
    k = min(a.k, index.ntotal)
    scores, ids = index.search(queries, k)

    files = sorted(f for f in os.listdir(a.embeddings) if f.endswith(".npy"))
    rows = np.concatenate([np.load(os.path.join(a.embeddings, f)) for f in files]).astype(np.float32)
    exact = queries @ rows.T
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    json.dump({
        "index_key": index_key,
        "rows": int(index.ntotal),
        "dim": int(index.d),
        "files": files,
        "faiss": top(scores, ids, k),
        "exact": top(np.take_along_axis(exact, order, axis=1), order, k),
    }, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
