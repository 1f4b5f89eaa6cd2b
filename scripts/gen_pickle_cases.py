#!/usr/bin/env python3
"""Pickles of a CIFAR-like dict as Python 3 writes them (protocol 2 spells
bytes as _codecs.encode(..., 'latin1'); protocol 4 uses BINBYTES, FRAME and
MEMOIZE), for src/datasets/pickle.rs. Needs numpy.

usage: gen_pickle_cases.py  (writes tests/fixtures/pickles/)
"""
import pickle

import numpy as np

d = {b"data": np.arange(12, dtype=np.uint8).reshape(2, 6), b"labels": [1, 300], b"label_names": [b"cat", b"dog"]}
for protocol in (2, 4):
    with open(f"tests/fixtures/pickles/numpy_p{protocol}.pkl", "wb") as f:
        pickle.dump(d, f, protocol=protocol)
