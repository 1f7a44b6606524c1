"""Independent pieces (``ctx.cached_all``): the serial context stores each one exactly as
``ctx.cached`` did, and the experiments that declare pieces keep their store kinds and configs.

The expected kinds and configs are written out here from the formulas the experiments used when
they called ``ctx.cached`` once per piece (the stored full-run pieces must still be found), and
compared, as canonical JSON, with what reaches the store.  A recording store returns stand-in
metrics, so nothing is trained and no data is read.
"""

from __future__ import annotations

import json

import pytest

from overparam.engine import Piece, get
from overparam.engine.pieces import item_pieces, piece_config
from overparam.engine.runner import Context, resolve_config
from overparam.engine.store import Store, to_jsonable
from overparam.training.optimizers import DEFAULTS, TF1_DEFAULTS


class RecordingStore:
    """Stands in for :class:`Store`: records ``(kind, canonical config)``, computes nothing."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str]] = []

    def get_or_compute(self, kind, config, compute, force=False, timeout=None, on_wait=None):
        self.rows.append((kind, _canonical(config)))
        return _stand_in(kind, config), True


def _canonical(config) -> str:
    return json.dumps(to_jsonable(config), sort_keys=True)


def _stand_in(kind: str, config: dict) -> dict:
    """Metrics shaped like a stored piece of ``kind`` (what the merging code reads)."""
    if kind.endswith("/seed"):
        cells = {c["name"]: {"gap": [[1.0, 0.5] for _ in c["rates"]],
                             "diverged_step": [None for _ in c["rates"]]}
                 for c in config["cells"]}  # fmt: skip
        return {"L*": 0.0, "samples": 1, "batches": [1], "reconstructed_batches": [],
                "steps": [0, 1], "seconds": 0.0, "cells": cells}  # fmt: skip
    return {"stand_in": kind}


def _recorded(name: str, config: dict) -> list[tuple[str, str]]:
    store = RecordingStore()
    get(name).run(dict(config), Context(store, name, force=False, quiet=True))  # type: ignore[arg-type]
    return store.rows


@pytest.mark.parametrize("preset", ["quick", "full"])
def test_mnist_convnet_variant_pieces_keep_their_store_keys(preset):
    config = resolve_config(get("mnist-convnet"), preset, {})
    judge_only = ("variants", "min_speedup", "accuracy_tolerance")
    key = {k: v for k, v in config.items() if k not in judge_only}
    expected = [(f"mnist-convnet/{v}", _canonical({**key, "variant": v}))
                for v in config["variants"]]  # fmt: skip
    assert _recorded("mnist-convnet", config) == expected
    assert len(expected) == 6


@pytest.mark.parametrize("preset", ["quick", "full"])
def test_vs_adaptive_seed_pieces_keep_their_store_keys(preset):
    config = resolve_config(get("vs-adaptive"), preset, {"data": ["all", "b1-5"]})
    settings = {"tf1": TF1_DEFAULTS, "torch": DEFAULTS}
    cells = [{"name": name, "depth": int(m["depth"]), "optimizer": m["optimizer"],
              "hyper": dict(settings[m["defaults"]][m["optimizer"]]), "defaults": m["defaults"],
              "rates": [float(r) for r in m["rates"]]}
             for name, m in config["methods"].items()]  # fmt: skip
    expected = [
        ("vs-adaptive/seed", _canonical({"group": g, "p": 4.0, "cells": cells,
                                         "steps": int(config["steps"]),
                                         "points": int(config["points"]),
                                         "scale": config["scale"], "init": "near_zero",
                                         "seed": int(s)}))
        for g in config["data"] for s in config["seeds"]
    ]  # fmt: skip
    assert _recorded("vs-adaptive", config) == expected


def _depth_cells(lrs: dict, by_group: dict, loss: str, group: str, depths: list) -> list[dict]:
    grids = by_group.get(group, {}).get(loss, lrs[loss])
    return [{"name": f"depth{n}", "depth": int(n), "rates": [float(r) for r in grids[str(n)]],
             "optimizer": "gd"} for n in depths]  # fmt: skip


@pytest.mark.parametrize("preset", ["quick", "full"])
def test_lp_depth_grid_pieces_keep_their_store_keys(preset):
    c = resolve_config(get("lp-depth"), preset, {})

    def grid(group, p, cells, seeds, steps):
        return ("lp-depth/grid", _canonical({"group": group, "p": p, "cells": cells,
                                             "seeds": seeds, "steps": steps,
                                             "points": int(c["points"]), "scale": c["scale"],
                                             "init": "near_zero"}))  # fmt: skip

    seeds = [int(s) for s in c["seeds"]]
    expected = [grid(g, float(p), _depth_cells(c["lrs"], c["lrs_by_group"], f"l{int(p)}", g,
                                               c["depths"]), seeds, int(c["steps"]))
                for g in c["data"] for p in c["ps"]]  # fmt: skip
    sens_lrs = {"l4": c["sensitivity_lrs"]}
    expected += [grid(g, 4.0, _depth_cells(sens_lrs, c["lrs_by_group"], "l4", g, c["depths"]),
                      [int(s) for s in c["sensitivity_seeds"]], int(c["sensitivity_steps"]))
                 for g in c["sensitivity"]]  # fmt: skip
    assert _recorded("lp-depth", c) == expected


def _square(item: int) -> dict:
    return {"square": item * item}


def _piece(tag: str, ctx) -> dict:
    ctx.log(f"piece {tag}")
    return {"tag": tag, "inner": ctx.cached("inner", {"tag": tag}, lambda: {"n": len(tag)})}


def test_serial_cached_all_is_cached_in_order_and_map_uses_it(tmp_path, capsys):
    import functools

    store = Store(tmp_path / "store.sqlite")
    ctx = Context(store, "toy", force=False, quiet=False)
    pieces = [Piece("part", {"tag": t}, functools.partial(_piece, t)) for t in ("a", "bb")]
    assert ctx.cached_all(pieces) == [{"tag": "a", "inner": {"n": 1}},
                                      {"tag": "bb", "inner": {"n": 2}}]  # fmt: skip
    assert "[toy] piece a\n[toy] piece bb\n" in capsys.readouterr().err
    assert store.get("toy/part", {"tag": "bb"}) == {"tag": "bb", "inner": {"n": 2}}
    assert store.get("toy/inner", {"tag": "a"}) == {"n": 1}
    assert ctx.cached_all(pieces[:1]) == [{"tag": "a", "inner": {"n": 1}}]
    assert "piece a" not in capsys.readouterr().err  # from the store, not computed again
    # map: one piece per item, stored under the run's config and the item
    config = {"n": 3}
    assert ctx.map("sq", _square, [2, 3], config) == [{"square": 4}, {"square": 9}]
    assert store.get("toy/sq", {"run": {"n": 3}, "item": 3}) == {"square": 9}
    made = item_pieces("sq", _square, [2, 3], config)
    assert [p.config for p in made] == [piece_config(config, i) for i in (2, 3)]
    assert [p.name for p in made] == ["sq[2]", "sq[3]"]
