"""Issue 13, item 5 at a reduced size: the open-vocabulary table's protocol (the full table is a benchmark,
``python -m ifseg_deploy.bench.open_vocabulary``, recorded in the README)."""

from __future__ import annotations

import json

import numpy as np


def test_the_table_keeps_four_names_unseen_and_adaptation_beats_the_unadapted_model(open_world, tmp_path):
    from ifseg_deploy.bench.open_vocabulary import SEEN_COUNT, markdown, run
    from ifseg_deploy.synthetic import ALL_CATEGORIES

    report = run(tmp_path, open_steps=30, steps=10, scenes=4, scene=128, world_steps=None, checkpoint=open_world)
    unseen = set(ALL_CATEGORIES[SEEN_COUNT:])
    assert set(report["unseen"]) == unseen and len(report["rows"]) == 6
    # the open-vocabulary model never saw the held-out names, in any sample's vocabulary
    trained_on = json.loads((tmp_path / "open" / "config.json").read_text())["metadata"]["vocabulary"]
    assert trained_on["mode"] == "open" and not unseen & set(trained_on["names"])
    for row in report["rows"]:
        assert 3 <= len(row["names"]) <= 8
        assert (row["kind"] == "with unseen") == bool(row["unseen"]) and set(row["unseen"]) <= unseen
        assert all(0.0 <= row[k] <= 1.0 for k in ("open", "per_vocabulary", "unadapted"))
    seen_rows = [r for r in report["rows"] if r["kind"] == "seen"]
    # even 30 steps lift the seen vocabularies far above the unadapted model (which scores near chance)
    print(markdown(report))
    assert np.mean([r["open"] for r in seen_rows]) > np.mean([r["unadapted"] for r in seen_rows]) + 0.05
    table = markdown(report)
    assert "| *mean* | seen |" in table and "**" in table  # unseen names are marked
