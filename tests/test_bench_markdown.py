"""BENCHMARKS.md's preset sections say when a run resumed stages of an earlier one."""
import json
import os

from benchmarks import markdown

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "results.json")


def test_a_preset_section_names_the_stages_resumed_from_an_earlier_run():
    with open(RESULTS) as f:
        res = json.load(f)
    res["presets.paper.reused_stages"] = {"from": "run X", "seconds": {"teachers": 1000.0, "cache": 20.4}}
    text = "\n".join(markdown.preset_section(res, "paper"))
    assert "The teachers, cache stages (1,020 s) are those of run X" in text
    res.pop("presets.paper.reused_stages")
    assert "are those of" not in "\n".join(markdown.preset_section(res, "paper"))
