#!/usr/bin/env python3
# Writes the config_json_fuzz seeds into tests/fuzz/corpus_config_json: variants of the two real
# config.json files there, which `voxgrad train` wrote (the commands are below). Valid
# variants reach every branch of the reader; hostile ones each break one rule it checks.
import copy
import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent / "corpus_config_json"
# The real ones, kept as written (only the variants are made here):
# real_train.json:
#   voxgrad synth --out D --size 24 --cases 3 --test-cases 0
#   voxgrad train --data D --out R --patch 16 --base 4 --levels 3 --epochs 1 --iters-per-epoch 1 --device cpu
# real_train_ct_adam.json (same D):
#   voxgrad train --data D --out R --patch 8,16,16 --base 4 --levels 2 --epochs 1 --iters-per-epoch 1
#     --device cpu --norm ct --optim adam --deep-supervision --loss lovasz --seed 18446744073709551615


def base():
    return json.loads((HERE / "real_train.json").read_text())


def variant(name, change, compact=False):
    config = base()
    change(config)
    text = json.dumps(config, separators=(",", ":")) if compact else json.dumps(config, indent=2)
    (HERE / name).write_text(text + "\n")


def setter(path, value):
    def change(config):
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = copy.deepcopy(value)
    return change


def deleter(path):
    def change(config):
        node = config
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return change


def four_channels(config):
    config["dataset"]["channels"] = ["t1", "t1c", "t2", "flair"]
    config["model"]["in_channels"] = 4


def many_labels(config):
    config["dataset"]["labels"] = {str(v): f"label_{v}" for v in range(0, 256, 15)}
    config["model"]["classes"] = config["plan"]["classes"] = 256


def main():
    variant("valid_compact.json", lambda c: None, compact=True)
    variant("valid_four_channels_batch_norm.json",
            lambda c: (four_channels(c), setter(["model", "norm"], "batch")(c)))
    variant("valid_many_labels.json", many_labels)
    variant("valid_bounds.json", lambda c: c["training"].update(
        {"patch": [1, 4096, 1], "batch_size": 1, "epochs": 1 << 20, "iters_per_epoch": 1 << 20,
         "lr": 1e30, "weight_decay": 0, "grad_clip": 1e-300}))
    variant("hostile_format.json", setter(["format"], "voxgrad-run-2"))
    variant("hostile_missing_training.json", deleter(["training"]))
    variant("hostile_wrong_types.json", lambda c: c["model"].update(
        {"levels": "3", "deep_supervision": 1, "norm": None}))
    variant("hostile_huge_counts.json", lambda c: c["training"].update(
        {"epochs": 1 << 40, "iters_per_epoch": 1 << 40, "batch_size": 18446744073709551615}))
    variant("hostile_fractions.json", lambda c: c["training"].update({"epochs": 1.5, "patch": [16.5, 16, 16]}))
    variant("hostile_negative_seed.json", setter(["training", "seed"], -1))
    variant("hostile_label_keys.json", setter(["dataset", "labels"], {"-1": "a", "256": "b", "1x": "c", "": "d"}))
    variant("hostile_disagree.json", setter(["model", "in_channels"], 2))
    variant("hostile_spacing.json", setter(["plan", "target_spacing_zyx"], [0, -1, 1e300]))
    variant("hostile_ct_stats.json", setter(["plan", "ct_stats"], [{"lower": 0, "upper": 1, "mean": 0, "std": 0}]))
    variant("hostile_patch_rank.json", setter(["training", "patch"], [16, 16]))
    variant("hostile_cases_types.json", setter(["training", "train_cases"], [1, None, {"a": 1}]))
    variant("hostile_negative_patch.json", lambda c: c["training"].update({"patch": [-16, 16, 16], "batch_size": 0}))
    variant("hostile_label_300.json", setter(["dataset", "labels", "300"], "beyond_uint8"))
    variant("hostile_no_channels.json", lambda c: (setter(["dataset", "channels"], [])(c),
                                                   setter(["model", "in_channels"], 0)(c)))
    variant("hostile_one_class.json", lambda c: (setter(["model", "classes"], 1)(c), setter(["plan", "classes"], 1)(c)))
    # Numbers nlohmann cannot hold: out_of_range rather than parse_error.
    real = (HERE / "real_train.json").read_text()
    (HERE / "hostile_number_overflow.json").write_text(real.replace('"lr": 0.01', '"lr": 1e999'))
    (HERE / "hostile_nested.json").write_text("[" * 5000 + "]" * 5000 + "\n")
    (HERE / "hostile_not_json.json").write_text('{"format": "voxgrad-run-1", "dataset": {\n')
    (HERE / "hostile_bad_utf8.json").write_bytes(b'{"format": "voxgrad-run-\xff\xfe"}\n')
    (HERE / "empty.json").write_bytes(b"")


if __name__ == "__main__":
    main()
