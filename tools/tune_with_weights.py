"""Throw-away: facecloak bench tune with some surrogates' weights replaced: ROBUST='name=path,name=path'."""

import dataclasses
import os
import sys

import torch

import facecloak.core.bench_tune as bt
from facecloak.core.cli import main

swap = dict(kv.split("=") for kv in os.environ.get("ROBUST", "").split(",") if kv)
_load = bt.load_model


def load_model(name, *a, **k):
    base = name[:-2] if name.endswith("_r") else name
    m = _load(base, *a, **k)
    if base != name:
        m.spec = dataclasses.replace(m.spec, name=name)
    if name in swap:
        m.network.load_state_dict(torch.load(swap[name]))
        print(f"{name}: weights from {swap[name]}", flush=True)
    return m


bt.load_model = load_model
sys.exit(main(sys.argv[1:]))
