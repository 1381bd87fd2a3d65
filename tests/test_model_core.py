"""The ECC model core: cut sets, exact split execution, routes, cfg validation, checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import CFG_DIR, REPO, SHIPPED_CFGS
from ultralytics.nn.tasks import DetectionModel

from ecc_yolo.checkpoint import load_ecc, save_ecc
from ecc_yolo.engine.trainer import freeze_parts
from ecc_yolo.nn.ecc_model import ECCModel
from ecc_yolo.nn.graph import IMAGE, cut_set, execute
from ecc_yolo.spec import ECCConfigError, load_spec

FAMILIES = {
    "yolov5nu.yaml": {10: [4, 6, 9], 11: [4, 6, 10]},
    "yolov8n.yaml": {10: [4, 6, 9], 13: [4, 9, 12]},
    "yolo11n.yaml": {11: [4, 6, 10], 13: [4, 10, 12]},
    "yolo26n.yaml": {11: [4, 6, 10], 17: [10, 13, 16]},
}


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("yaml", FAMILIES)
def test_cut_set_is_derived_from_the_graph(yaml):
    model = DetectionModel(yaml, verbose=False)
    for entry, expected in FAMILIES[yaml].items():
        assert cut_set(model, entry) == expected


@pytest.mark.parametrize("yaml", FAMILIES)
def test_tail_from_any_entry_reproduces_the_full_network(yaml):
    """Every possible entry layer: head to the entry, then the tail on the cut set, equals the whole network."""
    model = DetectionModel(yaml, verbose=False).eval()
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        full = _first(model(x))
        for entry in range(1, len(model.model)):
            cuts = cut_set(model, entry)
            _, kept = execute(model, {IMAGE: x}, stop=entry, keep=cuts)
            assert sorted(kept) == cuts
            tail = _first(execute(model, kept, start=entry)[0])
            assert (tail - full).abs().max() <= 1e-5, f"entry {entry}"


@pytest.mark.parametrize("cfg", SHIPPED_CFGS, ids=lambda p: p.stem)
def test_cloud_tail_on_own_cuts_is_exact_for_every_shipped_cfg(cfg):
    model = ECCModel(cfg, verbose=False).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        full = _first(model.cloud(x))
        tail = _first(model.cloud_tail(model.cloud_cuts(x)))
    assert (tail - full).abs().max().item() <= 1e-5


def test_routes_share_one_edge_pass_and_match_single_routes(tiny_ecc, images):
    with torch.no_grad():
        together = tiny_ecc.run_routes(images)
        assert set(together) == {"edge", "cloud", "adapted", "gate", "feat"}
        assert torch.equal(_first(together["edge"]), _first(tiny_ecc.edge(images)))
        assert torch.equal(_first(together["cloud"]), _first(tiny_ecc.cloud(images)))
        assert torch.equal(_first(together["adapted"]), _first(tiny_ecc.adapted_forward(images)))
        assert together["gate"].shape == (2, 2)
        for route in ("edge", "cloud", "adapted"):
            assert torch.equal(_first(tiny_ecc.set_route(route)(images)), _first(together[route]))
    with pytest.raises(ValueError, match="route must be one of"):
        tiny_ecc.set_route("fog")


def test_active_route_decides_what_ultralytics_sees_as_the_detector(tiny_ecc):
    assert tiny_ecc.set_route("edge").model is tiny_ecc.edge.model
    assert tiny_ecc.set_route("adapted").model is tiny_ecc.cloud.model
    assert tiny_ecc.names == {i: str(i) for i in range(8)}
    assert tiny_ecc.nc == 8 and int(tiny_ecc.stride.max()) == 32


def _cfg(**changes):
    d = load_spec(CFG_DIR / "ecc-tiny-11.yaml").to_dict()
    d.update(changes)
    return d


@pytest.mark.parametrize(
    "changes, field, message",
    [
        ({"adapters": [{"cloud": 4, "edge": 6}, {"cloud": 6, "edge": 6}, {"cloud": 10, "edge": 10}]},
         "adapters[0].edge", "stride 16 but cloud layer 4"),
        ({"adapters": [{"cloud": 4, "edge": 4}, {"cloud": 6, "edge": 6}]}, "adapters", "no adapter produces [10]"),
        ({"adapters": [{"cloud": 4, "edge": 4}, {"cloud": 6, "edge": 6}, {"cloud": 10, "edge": 10},
                       {"cloud": 2, "edge": 2}]}, "adapters[3].cloud", "not needed to enter"),
        ({"adapters": [{"cloud": 4, "edge": 4, "bits": 9}]}, "adapters[0].bits", "1..8"),
        ({"adapters": [{"cloud": 4, "edge": 23}, {"cloud": 6, "edge": 6}, {"cloud": 10, "edge": 10}]},
         "adapters[0].edge", "not a feature-map layer"),
        ({"adapters": [{"cloud": 4, "edge": 4, "bottleneck": 999}, {"cloud": 6, "edge": 6},
                       {"cloud": 10, "edge": 10}]}, "adapters[0].bottleneck", "exceeds"),
        ({"entry": 99}, "entry", "layers"),
        ({"entry": 0}, "entry", "positive layer index"),
        ({"colour": "red"}, "colour", "unknown key"),
        ({"edge": "no-such-model.yaml"}, "edge", "cannot load model YAML"),
        ({"cloud": "missing.pt"}, "cloud", "not found"),
        ({"edge": "yolo11.yaml"}, "edge", "several scales"),
        ({"gate": {"hidden": 0}}, "gate.hidden", "positive integer"),
    ],
)
def test_cfg_validation_names_the_bad_field(changes, field, message):
    with pytest.raises(ECCConfigError) as e:
        ECCModel(_cfg(**changes), verbose=False)
    assert f": {field}: " in str(e.value) and message in str(e.value)


def test_checkpoint_round_trip_keeps_outputs_and_fingerprint(tiny_ecc, images, tmp_path):
    path = save_ecc(tiny_ecc, tmp_path / "ecc.pt")
    loaded, ckpt = load_ecc(path)
    assert isinstance(loaded, ECCModel) and ckpt["ecc_yolo_version"]
    reference = copy.deepcopy(tiny_ecc).half().float()  # checkpoints store fp16
    with torch.no_grad():
        for route in ("edge", "cloud", "adapted"):
            a = _first(reference.set_route(route)(images))
            b = _first(loaded.set_route(route)(images))
            assert torch.equal(a, b), route
    assert loaded.fingerprint() == tiny_ecc.fingerprint()
    assert loaded.spec.to_dict() == tiny_ecc.spec.to_dict()


def test_fingerprint_changes_with_weights(tiny_ecc):
    before = tiny_ecc.fingerprint()
    with torch.no_grad():
        next(tiny_ecc.adapters.parameters()).add_(1.0)
    assert tiny_ecc.fingerprint() != before


def _save_plain_yolo(model: DetectionModel, path):
    torch.save({"model": copy.deepcopy(model).half(), "train_args": {}}, path)
    return path


def test_ecc_built_from_ultralytics_checkpoints_carries_their_weights(tmp_path):
    tiny = load_spec(CFG_DIR / "ecc-tiny-11.yaml").to_dict()
    edge = DetectionModel(tiny["edge"], nc=8, verbose=False)
    cloud = DetectionModel(tiny["cloud"], nc=8, verbose=False)
    edge.names = cloud.names = {i: f"shape{i}" for i in range(8)}
    with torch.no_grad():
        for p in edge.parameters():
            p.uniform_(-0.1, 0.1)
    paths = _save_plain_yolo(edge, tmp_path / "edge.pt"), _save_plain_yolo(cloud, tmp_path / "cloud.pt")
    model = ECCModel({**tiny, "edge": str(paths[0]), "cloud": str(paths[1])}, verbose=False)
    expected = copy.deepcopy(edge).half().float().state_dict()
    for k, v in model.edge.state_dict().items():
        assert torch.equal(v, expected[k]), k
    assert model.names == {i: f"shape{i}" for i in range(8)}

    reheaded = ECCModel({**tiny, "nc": 3, "edge": str(paths[0]), "cloud": str(paths[1])}, verbose=False)
    assert reheaded.nc == 3 and reheaded.edge.model[-1].nc == 3
    backbone = "model.0.conv.weight"
    assert torch.equal(reheaded.edge.state_dict()[backbone], expected[backbone])

    with pytest.raises(TypeError, match="not an ECC model"):
        load_ecc(paths[0])


def test_part_nc_mismatch_is_reported(tmp_path):
    tiny = load_spec(CFG_DIR / "ecc-tiny-11.yaml").to_dict()
    cloud = DetectionModel(tiny["cloud"], nc=5, verbose=False)
    path = _save_plain_yolo(cloud, tmp_path / "cloud5.pt")
    with pytest.raises(ECCConfigError, match="nc: the edge predicts 80 classes and the cloud 5"):
        ECCModel({**tiny, "nc": None, "cloud": str(path)}, verbose=False)


def test_tail_copy_starts_equal_and_is_its_own_part(images):
    shared = ECCModel(CFG_DIR / "ecc-tiny-11.yaml", verbose=False).eval()
    copied = ECCModel({**shared.spec.to_dict(), "tail": "copy"}, verbose=False).eval()
    copied.load(shared, verbose=False)
    with torch.no_grad():
        assert torch.equal(_first(copied.adapted_forward(images)), _first(shared.adapted_forward(images)))
        with_copy = copied.run_routes(images)
        next(copied.adapted_cloud.model[-1].parameters()).add_(1.0)  # train the copy: the cloud route is unaffected
        assert torch.equal(_first(copied.cloud_forward(images)), _first(with_copy["cloud"]))
        assert not torch.equal(_first(copied.adapted_forward(images)), _first(with_copy["adapted"]))
    freeze_parts(copied, ("edge", "cloud", "gate"))
    assert all(p.requires_grad for p in copied.adapted_cloud.parameters())
    assert copied.set_route("adapted").model is copied.adapted_cloud.model
    assert not any(isinstance(m, torch.nn.Conv2d) for m in copied.adapted_cloud.model[:11].modules())
    with pytest.raises(ECCConfigError, match="tail: must be one of shared, copy"):
        ECCModel({**shared.spec.to_dict(), "tail": "mirror"}, verbose=False)


@pytest.mark.parametrize("design", ["entry5", "entry7", "half-bits2"])
def test_a_frontier_design_starts_from_a_trained_models_edge_cloud_and_tail(design, tmp_path):
    """tools/sweep_frontier.py builds another cut of the same edge and cloud (its DESIGNS) and loads a trained model
    into it: edge and cloud carry over, and tail-copy layers the source never had (an earlier entry) start as the
    loaded cloud's, not at their initial weights."""
    import sys

    import yaml

    sys.path.insert(0, str(REPO / "tools"))
    from sweep_frontier import DESIGNS, design_cfg

    base = yaml.safe_load((CFG_DIR / "ecc-tiny-11.yaml").read_text())
    base["tail"] = "copy"
    source = ECCModel(base, verbose=False)
    with torch.no_grad():
        for p in source.cloud.parameters():
            p.add_(0.1)  # "trained": away from any fresh model's initial weights
        source.sync_tail_copy()
    entry, bottlenecks, bits, _ = DESIGNS[design]
    target = ECCModel(design_cfg(base, entry, bottlenecks, bits, design), verbose=False)
    target.load(source, verbose=False)
    assert target.spec.entry == entry and [target.adapters[str(k)].bits for k in bottlenecks] == [bits] * len(bottlenecks)
    cloud = target.cloud.state_dict()
    assert all(torch.equal(cloud[k], v) for k, v in source.cloud.state_dict().items())
    copy = target.adapted_cloud.state_dict()
    early = [k for k in copy if int(k.split(".")[1]) < source.spec.entry]  # layers the source's copy did not have
    assert early or entry >= source.spec.entry
    assert copy and all(torch.equal(v, cloud[k]) for k, v in copy.items())
