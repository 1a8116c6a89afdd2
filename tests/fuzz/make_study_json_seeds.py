#!/usr/bin/env python3
# Writes the study_json_fuzz seeds into tests/fuzz/corpus_study_json: real_quick.json, the quick
# tier's study.json as `voxgrad study` wrote it (docs/loss-study/quick/study.json), and variants of
# it. Valid variants reach every branch of the report; hostile ones each break one thing it reads.
import copy
import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent / "corpus_study_json"
SOURCE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "loss-study" / "quick" / "study.json"


def base():
    return json.loads((HERE / "real_quick.json").read_text())


def variant(name, change):
    # Compact, and with three of the preset's pairs: small seeds mutate faster.
    study = base()
    preset = study["per_preset"][0]
    preset["pairs"] = preset["pairs"][:3]
    change(preset)
    (HERE / name).write_text(json.dumps(study, separators=(",", ":")) + "\n")


def at(path, value=None, delete=False):
    def change(preset):
        node = preset
        for key in path[:-1]:
            node = node[key]
        if delete:
            del node[path[-1]]
        else:
            node[path[-1]] = copy.deepcopy(value)
    return change


def no_runs(preset):
    for arm in preset["arms"]:
        arm["seeds_done"] = []


def main():
    HERE.mkdir(exist_ok=True)
    (HERE / "real_quick.json").write_text(SOURCE.read_text())
    variant("valid_compact.json", lambda p: None)
    variant("valid_no_runs.json", no_runs)
    variant("valid_carried.json", at(["carried_from"], "elsewhere/study.json"))
    variant("valid_no_probe.json", at(["gradient_probe"], []))
    variant("hostile_missing_p_holm.json", at(["pairs", 0, "dice", "p_holm"], delete=True))
    variant("hostile_short_interval.json", at(["pairs", 0, "dice", "bootstrap_ci_cases"], [0.1]))
    variant("hostile_interval_object.json", at(["pairs", 1, "jaccard"], {"p_holm": [1]}))
    variant("hostile_probe_entry.json", at(["gradient_probe"], [{}]))
    variant("hostile_probe_shares.json", at(["gradient_probe", 0, "gradient_mass_fraction"], [0.5]))
    variant("hostile_per_class_number.json", at(["arms", 0, "per_class"], 3))
    variant("hostile_seed_means.json", at(["arms", 1, "seed_means_dice"], {"a": "b"}))
    variant("hostile_ranking_types.json", at(["ranking"], {"by_dice": [1], "by_jaccard": "x"}))
    variant("hostile_failures_types.json", at(["verdict", "failures"], [7, None]))
    variant("hostile_best_weighted.json", at(["verdict", "best_weighted_cross_entropy"], 3))
    variant("hostile_no_best_weighted.json", at(["verdict", "best_weighted_cross_entropy"], delete=True))
    variant("hostile_equivalence_entry.json", at(["equivalence"], [5]))
    variant("hostile_objects.json", at(["arms", 2, "objects_by_size"], [{"bin": 1}]))
    variant("hostile_carried_from.json", at(["carried_from"], 5))
    variant("hostile_no_verdict.json", at(["verdict"], delete=True))
    variant("hostile_arm_name.json", at(["arms", 0, "arm"], None))
    (HERE / "hostile_nested.json").write_text('{"per_preset":' + "[" * 5000 + "]" * 5000 + "}\n")
    (HERE / "hostile_not_study.json").write_text('{"tier": "quick"}\n')
    (HERE / "hostile_not_json.json").write_text('{"per_preset": [\n')
    (HERE / "empty.json").write_text("")


if __name__ == "__main__":
    main()
