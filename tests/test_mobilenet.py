"""MMRazor's SPOS MobileNet space: its layout, labels and width rounding as MMRazor builds them,
its ImageNet-size counts as MMRazor's ResourceEstimator gives them, MMRazor's subnet YAML and
checkpoints read and written, and the runs of the other spaces on it (search, baselines, train,
eval, ONNX, latency tables, resume, init_from).

The counts and the imported logits were taken from MMRazor's own classes (SearchableMobileNetV2,
MBBlock, Identity, OneShotMutableOP, mmcls's ImageClassifier) run once on the CPU with its counter
rules; only the figures, the key list and the logits are kept here."""

import json

import pytest
import torch
from torch import nn

from conftest import dsnas_error
from dsnas import spaces
from dsnas.arch import Architecture, load_arch, save_arch
from dsnas.choice import active_path
from dsnas.cost import count
from dsnas.export import load_child
from dsnas.published import import_checkpoint, to_input
from dsnas.spaces.mobilenet import OPS, IdentityOp, MBBlock, MobileNetSpace, block_labels
from published_checkpoints import checkpoint, fixture, images

SMALL = {"num_classes": 10, "in_channels": 1, "input_size": 28, "width": 0.25}
TINY_RUN = ["space=mobilenet", "space.width=0.25", "train_limit=256", "test_limit=64", "batch_size=64", "epochs=3",
            "warmup_epochs=1", "search_epochs=2", "lr_warmup_epochs=1", "arch_lr=0.05", "eval_bn_recalibrate=64",
            "checkpoint_every=2", "seed=5", "early_fix=0.05"]
SPOS_RUN = TINY_RUN + ["method=spos", "candidates=4", "population=2", "select_images=64"]
LABELS = (["backbone.layer1.0"] + [f"backbone.layer{n}.{b}" for n in range(2, 7) for b in range(4)]
          + ["backbone.layer7.0"])
# (in, out, stride) of each block at width 1 (MMRazor's SearchableMobileNetV2 at widen 1.0)
LAYOUT = ([(40, 24, 1)] + [(24, 32, 2)] + [(32, 32, 1)] * 3 + [(32, 56, 2)] + [(56, 56, 1)] * 3 + [(56, 112, 2)]
          + [(112, 112, 1)] * 3 + [(112, 128, 1)] + [(128, 128, 1)] * 3 + [(128, 256, 2)] + [(256, 256, 1)] * 3
          + [(256, 432, 1)])


def _arch(*ops: str) -> list[str]:
    return ["mb_k3e1", *ops]


MIXED = _arch("mb_k7e6", "mb_k5e6", "mb_k3e6", "mb_k5e3", "mb_k7e3", "mb_k3e3", "mb_k3e3", "mb_k3e3", "mb_k5e3",
              "mb_k7e6", "mb_k5e6", "identity", "mb_k3e6", "mb_k5e6", "identity", "mb_k7e6", "mb_k5e6", "mb_k3e6",
              "mb_k3e6", "identity", "mb_k5e3")
# AngleNAS's SPOS model (its SPOS/training model_id "2 2 -1 0 0 -1 -1 0 5 -1 4 4 0 0 4 2 3 4 4 4 3"), which
# MMRazor's README lists as its AngleNAS-searched subnet of this space: 5.94 M params, 0.49 GFLOPs
ANGLENAS = _arch("mb_k5e3", "mb_k5e3", "identity", "mb_k3e3", "mb_k3e3", "identity", "identity", "mb_k3e3",
                 "mb_k7e6", "identity", "mb_k7e3", "mb_k7e3", "mb_k3e3", "mb_k3e3", "mb_k7e3", "mb_k5e3", "mb_k5e6",
                 "mb_k7e3", "mb_k7e3", "mb_k7e3", "mb_k5e6")
# (MFLOPs, M params) of MMRazor's network at 1x3x224x224, 1000 classes, by its ResourceEstimator's rules
MMRAZOR_COUNTS = {"mb_k3e3": (_arch(*["mb_k3e3"] * 21), 483.454, 5.152),
                  "mb_k7e6": (_arch(*["mb_k7e6"] * 21), 1076.139, 8.382),
                  "identity": (_arch(*["identity"] * 21), 87.690, 2.650),
                  "mixed": (MIXED, 705.947, 6.116), "anglenas": (ANGLENAS, 490.136, 5.937),
                  "imported": (fixture("mmrazor-mobilenet")["arch"], 525.705, 5.931)}
# the mixed child under other widths: (stem, stage outputs, head channels), MFLOPs, M params
MMRAZOR_WIDTHS = {0.25: ((16, (8, 8, 16, 32, 32, 64, 112), 1728), 90.409, 2.215),
                  0.5: ((24, (16, 16, 32, 56, 64, 128, 216), 1728), 243.522, 3.087),
                  1.5: ((64, (40, 48, 88, 168, 192, 384, 648), 2592), 1538.781, 12.295)}


def _archs(n: int, seed: int = 0) -> list[list[str]]:
    g = torch.Generator().manual_seed(seed)
    return [_arch(*[OPS[int(i)] for i in torch.randint(len(OPS), (21,), generator=g)]) for _ in range(n)]


@pytest.fixture(scope="module")
def small():
    """The small supernet, its BN statistics moved away from their initial values."""
    torch.manual_seed(0)
    net = spaces.build("mobilenet", SMALL, init="kaiming").train()
    with torch.no_grad():
        for arch in _archs(3, seed=9):
            with active_path(net, arch):
                net(torch.randn(8, 1, 28, 28))
    return net.eval()


@pytest.fixture(scope="module")
def imagenet():
    """The ImageNet-size supernet (224 px, 3 channels, 1000 classes, width 1) and its cost table."""
    net = spaces.build("mobilenet", init="torch")
    return net, net.costs


def _stage_outputs(settings) -> tuple[int, ...]:
    layout = settings.layout()
    return tuple(layout[i][1] for i in (0, 1, 5, 9, 13, 17, 21))


# --- the space as MMRazor builds it --------------------------------------------------------------

def test_the_labels_are_mmrazors_mutable_names_with_the_fixed_first_block():
    decisions = MobileNetSpace.decisions()
    assert [label for label, _ in decisions] == block_labels() == LABELS
    assert decisions[0][1] == ["mb_k3e1"]
    assert all(names == list(OPS) for _, names in decisions[1:])
    assert list(OPS) == ["mb_k3e3", "mb_k5e3", "mb_k7e3", "mb_k3e6", "mb_k5e6", "mb_k7e6", "identity"]


def test_the_imagenet_network_has_mmrazors_layout(imagenet):
    net, _ = imagenet
    s = net.settings
    assert s.layout() == LAYOUT and (s.stem_channels, s.head_channels, s.small_input) == (40, 1728, False)
    assert (net.stem.conv.stride, net.head.conv.in_channels, net.classifier.in_features) == ((2, 2), 432, 1728)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.bias is None for m in convs) and net.classifier.bias is not None
    assert all(m.eps == 1e-5 for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert {type(m) for m in net.modules() if isinstance(m, (nn.ReLU, nn.ReLU6, nn.Hardswish))} == {nn.ReLU6}
    for block, (cin, cout, stride) in zip(net.blocks, LAYOUT):
        changes = stride != 1 or cin != cout
        for name, op in zip(block.names, block.candidates):
            if name == "identity":
                assert isinstance(op, IdentityOp) and (op.downsample is not None) == changes
                if changes:  # a 1x1 conv with the block's stride and BN, no activation
                    assert (op.downsample.conv.kernel_size, op.downsample.conv.stride) == ((1, 1), (stride, stride))
                    assert [type(m) for m in op.downsample] == [nn.Conv2d, nn.BatchNorm2d]
                continue
            kernel, expand = int(name[4]), int(name[6])
            assert isinstance(op, MBBlock) and op.residual == (not changes)
            assert (op.expand is None) == (expand == 1)
            assert op.depthwise.conv.groups == op.depthwise.conv.in_channels == cin * expand
            assert (op.depthwise.conv.kernel_size, op.depthwise.conv.stride) == ((kernel, kernel), (stride, stride))
            assert [type(m) for m in op.project] == [nn.Conv2d, nn.BatchNorm2d]
    assert sum(p.numel() for p in net.parameters()) == 27_852_880


@pytest.mark.parametrize("width", sorted(MMRAZOR_WIDTHS))
def test_widths_round_as_mmrazor_rounds_them(width):
    (stem, stages, head), _, _ = MMRAZOR_WIDTHS[width]
    s = spaces.settings_of("mobilenet", {"width": width})
    assert (s.stem_channels, _stage_outputs(s), s.head_channels) == (stem, stages, head)


def test_an_identity_passes_through_where_rounding_keeps_the_channels():
    """At width 0.25, 112 and 128 channels both round to 32: layer5.0's identity passes its input
    through, as MMRazor's does."""
    net = spaces.build("mobilenet", SMALL)
    layer5 = net.blocks[LABELS.index("backbone.layer5.0")]
    assert layer5.candidates[OPS.index("identity")].downsample is None
    assert layer5.candidates[OPS.index("mb_k3e3")].residual


def test_settings_are_checked_in_one_line():
    for bad, why in [({"width": 0}, "width must be a number in (0, 8]"), ({"width": 9}, "width must be"),
                     ({"width": True}, "width must be"), ({"small_input": "yes"}, "small_input must be"),
                     ({"input_size": 0}, "input_size must be an integer"), ({"channels": 8}, "unknown space setting")]:
        assert why in dsnas_error(spaces.build, "mobilenet", bad), bad
    s = spaces.settings_of("mobilenet", {"input_size": 28})
    assert s.small_input and not s.replace(input_size=224).small_input


def test_the_small_image_stem_ends_28_px_at_2x2():
    net = spaces.build("mobilenet", SMALL).eval()
    assert net.stem.conv.stride == (1, 1)
    with torch.no_grad():
        assert net.forward_features(torch.zeros(1, 1, 28, 28)).shape == (1, 112, 2, 2)


def test_aligned_candidates_of_a_block_start_as_one_function():
    """Every MBBlock of a block computes what the others compute; where the block adds its input
    back they are all the identity, like the identity candidate."""
    torch.manual_seed(0)
    net = spaces.build("mobilenet", SMALL).train()
    x = torch.randn(4, 8, 14, 14)
    for label in ("backbone.layer2.0", "backbone.layer2.1"):
        block = net.blocks[LABELS.index(label)]
        with torch.no_grad():
            outs = [op(x) for op in block.candidates]
        for name, out in zip(block.names, outs):
            if name == "identity":
                assert torch.equal(out, x) == (label == "backbone.layer2.1"), label
            else:
                assert torch.allclose(out, outs[0], atol=1e-5), (label, name)
    assert not torch.equal(outs[0], torch.zeros_like(outs[0]))
    kaiming = spaces.build("mobilenet", SMALL, init="kaiming").train().blocks[2]
    with torch.no_grad():
        assert not torch.allclose(kaiming.candidates[0](x), kaiming.candidates[3](x), atol=1e-3)


# --- counting ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MMRAZOR_COUNTS)
def test_imagenet_counts_equal_mmrazors_resource_estimator(imagenet, name):
    arch, mflops, params_m = MMRAZOR_COUNTS[name]
    _, table = imagenet
    costs = table.costs(arch)
    assert (costs["mflops"], costs["params_m"]) == (mflops, params_m)


def test_the_anglenas_subnet_counts_what_mmrazors_readme_says(imagenet):
    costs = imagenet[1].costs(ANGLENAS)
    assert round(costs["params_m"], 2) == 5.94 and round(costs["mflops"] / 1000, 2) == 0.49


@pytest.mark.parametrize("width", sorted(MMRAZOR_WIDTHS))
def test_a_child_under_a_width_counts_what_mmrazors_does(width):
    _, mflops, params_m = MMRAZOR_WIDTHS[width]
    child = spaces.build_child("mobilenet", MIXED, {"width": width}, init="torch")
    counted, _ = count(child, torch.zeros(1, 3, 224, 224))
    assert (round(counted["mflops"], 3), round(counted["params_m"], 3)) == (mflops, params_m)


def test_the_cost_table_sums_to_the_counted_child(small):
    table = small.costs
    assert table.labels == LABELS and table.names[0] == ["mb_k3e1"]
    passes = [i for i, (cin, cout, stride) in enumerate(small.settings.layout()) if stride == 1 and cin == cout]
    for metric in ("mflops", "macs_m", "params_m"):
        for i, row in enumerate(table.entries[metric]):
            for name, value in zip(table.names[i], row):
                assert (value == 0) == (name == "identity" and i in passes), (metric, i, name)
    for arch in _archs(5) + [_arch(*["identity"] * 21)]:
        counted, _ = count(small.child(arch), torch.zeros(1, 1, 28, 28))
        for metric in ("mflops", "macs_m", "params_m"):
            assert table.total(arch, metric) == pytest.approx(counted[metric], rel=1e-9, abs=1e-9), (arch, metric)


def test_info_prints_the_space_and_its_range(dsnas_main):
    r = dsnas_main("info", "--space", "mobilenet", "--json")
    out = json.loads(r.stdout)
    assert (out["space"], out["blocks"], out["candidates_per_block"]) == ("mobilenet", 22, [1] + [7] * 21)
    assert out["candidates"] == ["mb_k3e1", *OPS] and out["supernet_params_m"] == 27.853
    assert out["mflops"] == {"min": 87.69, "mean": 657.361, "max": 1076.139}
    assert out["params_m"] == {"min": 2.65, "mean": 6.106, "max": 8.382}
    assert (out["stem_channels"], out["head_channels"], out["architectures"]) == (40, 1728, 7 ** 21)
    r = dsnas_main("info", "--space", "mobilenet")
    assert r.stdout.startswith("mobilenet space: 22 blocks x 8 candidates") and "max  1076.139" in r.stdout


# --- the supernet and its children ---------------------------------------------------------------

def test_a_child_computes_what_the_supernet_computes_on_its_path(small):
    x = torch.randn(3, 1, 28, 28)
    for arch in _archs(4, seed=1) + [_arch(*["identity"] * 21), _arch(*["mb_k7e6"] * 21)]:
        with torch.no_grad(), active_path(small, arch):
            expected = small(x)
        child = small.child(arch).eval()
        with torch.no_grad():
            assert torch.equal(child(x), expected), arch
        fresh = spaces.build_child("mobilenet", arch, small.settings)
        assert fresh.state_dict().keys() == child.state_dict().keys()
    with pytest.raises(ValueError, match="backbone.layer1.0: unknown op 'mb_k3e3'"):
        spaces.build_child("mobilenet", ["mb_k3e3"] * 22, SMALL)


def test_the_child_exports_to_onnx(small, tmp_path):
    pytest.importorskip("onnxruntime")
    from dsnas.export import export_onnx

    diff = export_onnx(small.child(MIXED), tmp_path / "c.onnx", 28, 1)
    assert diff is not None and diff <= 1e-4


def test_a_latency_table_times_every_candidate_at_its_shape():
    from dsnas.latency import _block_inputs, measure_latency

    space = spaces.build("mobilenet", SMALL, init="torch")
    parts, inputs, features = _block_inputs(space, space.example_input())
    size, sizes = 28, []
    for _, _, stride in space.settings.layout():
        sizes.append(size)
        size = -(-size // stride)
    for recorded, (cin, _, _), px in zip(inputs, space.settings.layout(), sizes):
        assert [tuple(x.shape) for _, x in recorded] == [(1, cin, px, px)]
    assert tuple(features.shape) == (1, 112, 2, 2) and set(parts) == {"stem"}
    table = measure_latency(space, repeats=3, warmup=1, fit_children=2, holdout=2)
    assert list(table.blocks) == LABELS and list(table.blocks[LABELS[0]]) == ["mb_k3e1"]
    assert all(list(table.blocks[label]) == list(OPS) for label in LABELS[1:])
    assert {"stem", "head", "call"} == set(table.fixed)
    costs = space.costs.with_latency(table)
    assert [len(row) for row in costs.entries["latency_ms"]] == [1] + [7] * 21
    assert all(v >= 0 for row in costs.entries["latency_ms"] for v in row)


# --- MMRazor's files -----------------------------------------------------------------------------

def test_mmrazor_subnet_yaml_round_trips_through_the_generic_reader(tmp_path):
    arch = Architecture(ANGLENAS, "mobilenet", SMALL)
    save_arch(arch, tmp_path / "subnet.yaml", mmrazor=True)
    text = (tmp_path / "subnet.yaml").read_text()
    assert text.splitlines()[:2] == ["backbone.layer1.0: {chosen: mb_k3e1}", "backbone.layer2.0: {chosen: mb_k5e3}"]
    again = load_arch(tmp_path / "subnet.yaml")
    assert (again.space, again.choices, again.names_settings) == ("mobilenet", ANGLENAS, False)
    # as MMRazor dumps it: every key prefixed, each choice with its meta
    dumped = "".join(f"architecture.{label}:\n  chosen: {op}\n  meta:\n    all_choices: [{op}]\n"
                     for label, op in zip(LABELS, ANGLENAS))
    (tmp_path / "dumped.yaml").write_text(dumped)
    assert load_arch(tmp_path / "dumped.yaml").choices == ANGLENAS
    (tmp_path / "short.yaml").write_text("".join(text.splitlines(keepends=True)[1:]))
    assert "lacks block backbone.layer1.0" in dsnas_error(load_arch, tmp_path / "short.yaml")
    (tmp_path / "bad.yaml").write_text(text.replace("layer2.0: {chosen: mb_k5e3}", "layer2.0: {chosen: mb_k3e1}"))
    assert "unknown op 'mb_k3e1'" in dsnas_error(load_arch, tmp_path / "bad.yaml")


def _rel_error(got, want) -> float:
    return float((got - want).norm() / want.norm())


def _imported_logits(out) -> torch.Tensor:
    arch = load_arch(out / "arch.yaml")
    child = load_child(arch, out / "child.safetensors").eval()
    with torch.no_grad():
        return child(to_input(images(0), arch.metadata["input_convention"]))


@pytest.fixture(scope="module")
def subnet_checkpoint(tmp_path_factory):
    """MMRazor's subnet checkpoint of the fixture (runner format, ``architecture.`` keys)."""
    path = tmp_path_factory.mktemp("mmrazor") / "subnet.pth"
    torch.save(checkpoint(fixture("mmrazor-mobilenet")), path)
    return path


def test_import_matches_mmrazors_network(subnet_checkpoint, tmp_path, dsnas_main):
    fx = fixture("mmrazor-mobilenet")
    r = dsnas_main("import", subnet_checkpoint, "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    assert "(mmrazor-mobilenet, mobilenet space, input mmrazor)" in r.stdout and "BN eps 1e-05" in r.stdout
    want = torch.tensor(fx["logits"])
    got = _imported_logits(tmp_path / "run")
    assert _rel_error(got, want) <= 1e-4 and torch.equal(got.argmax(-1), want.argmax(-1))
    arch = load_arch(tmp_path / "run" / "arch.yaml")
    assert arch.space == "mobilenet" and arch.choices == fx["arch"]
    assert arch.settings == {"num_classes": 1000, "in_channels": 3, "input_size": 224, "width": 1.0,
                             "small_input": False}
    # the same tensors under their unprefixed keys (a checkpoint of the subnet model itself)
    state = {k.removeprefix("architecture."): v for k, v in checkpoint(fx)["state_dict"].items()}
    torch.save({"meta": {}, "state_dict": state}, tmp_path / "plain.pth")
    res = import_checkpoint(tmp_path / "plain.pth", tmp_path / "plain", layout="mmrazor-mobilenet")
    assert res["format"] == "mmrazor-mobilenet" and res["choices"] == fx["arch"]
    assert torch.equal(_imported_logits(tmp_path / "plain"), got)
    assert "width 1 (no widen_factor" in " ".join(res["notes"])


def test_a_subnet_of_another_width_imports_with_the_width_of_its_config(tmp_path):
    """Our child under MMRazor's keys, saved with the config line MMRazor's runner keeps in
    ``meta``: it imports at that width and computes what it computed; without the line the
    width-1 network it then expects is refused on the first shape."""
    from dsnas.spaces.mobilenet import MMRazorSubnet

    child = spaces.build_child("mobilenet", ANGLENAS, {"width": 0.5, "num_classes": 7}, init="kaiming").eval()
    state = {"architecture." + MMRazorSubnet().key(k, child, ANGLENAS): v for k, v in child.state_dict().items()}
    assert "architecture.backbone.layer4.0._candidates.mb_k7e6.linear_conv.bn.running_var" in state
    cfg = "nas_backbone = dict(type='SearchableMobileNetV2', first_channels=40, widen_factor=0.5)"
    torch.save({"meta": {"cfg": cfg}, "state_dict": state}, tmp_path / "half.pth")
    res = import_checkpoint(tmp_path / "half.pth", tmp_path / "run")
    assert (res["settings"]["width"], res["settings"]["num_classes"], res["choices"]) == (0.5, 7, ANGLENAS)
    x = to_input(images(0), "mmrazor")
    with torch.no_grad():
        assert torch.equal(_imported_logits(tmp_path / "run"), child(x))
    torch.save({"meta": {"cfg": ""}, "state_dict": state}, tmp_path / "bare.pth")
    assert "has shape (24, 3, 3, 3), expected (40, 3, 3, 3)" in dsnas_error(import_checkpoint, tmp_path / "bare.pth",
                                                                           tmp_path / "bare")


def test_import_refuses_a_file_that_is_not_this_network(subnet_checkpoint, tmp_path):
    base = torch.load(subnet_checkpoint, weights_only=True)
    state = base["state_dict"]
    prefix = "architecture.backbone."
    drop = f"{prefix}layer3.1._candidates.mb_k3e6.expand_conv.bn.running_var"
    downsample = [k for k in state if k.startswith(f"{prefix}layer5.0._candidates.identity.downsample.")]
    cases = {"has no backbone.layer3.1._candidates.mb_k3e6.expand_conv.bn.running_var":
                 {k: v for k, v in state.items() if k != drop},
             "unexpected key backbone.conv2.extra.weight": {**state, f"{prefix}conv2.extra.weight": torch.zeros(1)},
             "has shape (3,)": {**state, drop: torch.zeros(3)},
             "holds candidates ['mb_k3e3', 'mb_k3e6']": {**state, drop.replace("mb_k3e6", "mb_k3e3"): state[drop]},
             # a pass-through identity where the block changes its channels
             "no backbone.layer5.0._candidates.identity.downsample.conv.weight":
                 {k: v for k, v in state.items() if k not in downsample},
             "block backbone.layer8.0": {**state, f"{prefix}layer8.0._candidates.mb_k3e3.linear_conv.conv.weight":
                                         torch.zeros(1)}}
    for i, (expected, sd) in enumerate(cases.items()):
        path = tmp_path / f"case{i}.pth"
        torch.save({**base, "state_dict": sd}, path)
        assert expected in dsnas_error(import_checkpoint, path, tmp_path / f"out{i}"), expected
    assert "BN eps 1e-05" in dsnas_error(import_checkpoint, subnet_checkpoint, tmp_path / "eps", bn_eps=0.01)


# --- runs ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_dsnas_search_runs_on_fashion_mnist(tmp_path):
    """The whole DSNAS loop on the embedded 28 px images at width 0.25; the saved child loads,
    computes what the run's child computed and exports to ONNX."""
    from dsnas.config import load_config
    from dsnas.train import run_search

    result = run_search(load_config(None, TINY_RUN), tmp_path / "dsnas", quiet=True)
    arch = load_arch(tmp_path / "dsnas" / "arch.yaml")
    assert arch.space == "mobilenet" and arch.labels == LABELS and arch.settings["width"] == 0.25
    assert result.metrics["top1"] is not None and (tmp_path / "dsnas" / "alpha.png").exists()
    child = load_child(arch, tmp_path / "dsnas" / "child.safetensors").eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(child(x), result.space.child(arch.choices).eval()(x))


@pytest.mark.slow
def test_the_baselines_train_eval_and_export_run_on_fashion_mnist(tmp_path, dsnas_main):
    """Random search and SPOS's evolution rank children of the supernet; ``dsnas train`` trains
    the one SPOS found from scratch; ``eval`` and ``export`` read the run folder."""
    from dsnas.config import load_config
    from dsnas.train import run_search

    random = run_search(load_config(None, TINY_RUN + ["method=random", "candidates=3", "select_images=64"]),
                        tmp_path / "random", quiet=True)
    assert random.metrics["selection"]["evaluated"] == 3
    spos = run_search(load_config(None, SPOS_RUN), tmp_path / "spos", quiet=True)
    assert spos.metrics["method"] == "spos" and spos.metrics["selection"]["evaluated"] == 4
    found = tmp_path / "spos" / "arch.yaml"
    assert load_arch(found).space == "mobilenet"
    args = [f"--set={s}" for s in TINY_RUN]
    r = dsnas_main("train", found, "--quiet", "--out", tmp_path / "fixed", *args)
    assert r.returncode == 0, r.stderr
    trained = json.loads((tmp_path / "fixed" / "metrics.json").read_text())
    assert trained["method"] == "fixed"
    assert load_arch(tmp_path / "fixed" / "arch.yaml").choices == load_arch(found).choices
    r = dsnas_main("eval", "--run", tmp_path / "fixed")
    assert r.returncode == 0 and "top1" in r.stdout, r.stderr
    r = dsnas_main("export", "--run", tmp_path / "fixed", "--onnx", tmp_path / "c.onnx", "--mmrazor",
                   tmp_path / "subnet.yaml")
    assert r.returncode == 0, r.stderr
    assert load_arch(tmp_path / "subnet.yaml").choices == load_arch(found).choices


def _interrupted_then_resumed(tmp_path, monkeypatch, settings: list[str]):
    """The run of ``settings`` stopped right after its third checkpoint, then resumed in this
    process; returns the folders of an uninterrupted run and of the resumed one."""
    import dsnas.train as train
    from dsnas.config import load_config

    train.run_search(load_config(None, settings), tmp_path / "ref", quiet=True)
    real_save, saves = train.save_checkpoint, []

    class Stop(Exception):
        pass

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        saves.append(1)
        if len(saves) == 3:
            raise Stop

    monkeypatch.setattr(train, "save_checkpoint", save_then_stop)
    with pytest.raises(Stop):
        train.run_search(load_config(None, settings), tmp_path / "run", quiet=True)
    monkeypatch.setattr(train, "save_checkpoint", real_save)
    assert not (tmp_path / "run" / "child.safetensors").exists()
    train.run_search(load_config(None, settings), tmp_path / "run", resume=True, quiet=True)
    return tmp_path / "ref", tmp_path / "run"


def _assert_same_run(ref, run) -> None:
    from safetensors.torch import load_file

    a, b = (torch.load(d / "checkpoints" / "last.pt", weights_only=True) for d in (ref, run))
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for key in ("train_loss", "top1", "fixed", "entropy"):
        assert [h[key] for h in b["progress"]["history"]] == [h[key] for h in a["progress"]["history"]], key
    x, y = (load_file(str(d / "child.safetensors")) for d in (ref, run))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert load_arch(ref / "arch.yaml").choices == load_arch(run / "arch.yaml").choices


@pytest.mark.slow
def test_an_interrupted_search_resumes_bit_exact(tmp_path, monkeypatch):
    ref, run = _interrupted_then_resumed(tmp_path, monkeypatch, TINY_RUN)
    _assert_same_run(ref, run)
    a, b = (torch.load(d / "checkpoints" / "last.pt", weights_only=True)["search"] for d in (ref, run))
    assert a["fixed"] == b["fixed"] and all(torch.equal(a["alphas"][k], b["alphas"][k]) for k in LABELS)


@pytest.mark.slow
def test_an_interrupted_spos_run_resumes_bit_exact(tmp_path, monkeypatch):
    ref, run = _interrupted_then_resumed(tmp_path, monkeypatch, SPOS_RUN)
    _assert_same_run(ref, run)
    assert (ref / "candidates.csv").read_bytes() == (run / "candidates.csv").read_bytes()


@pytest.mark.slow
def test_a_run_starts_from_another_runs_supernet(tmp_path):
    """init_from: a run's supernet replaces the initialisation of another run's (same settings),
    a baseline trains from it, and other settings are refused in one line."""
    from dsnas.config import load_config
    from dsnas.train import run_search
    from dsnas.warm_start import start_from

    run_search(load_config(None, SPOS_RUN), tmp_path / "source", quiet=True)
    saved = torch.load(tmp_path / "source" / "checkpoints" / "last.pt", weights_only=True)["model"]
    space = spaces.build("mobilenet", SMALL, init="kaiming")
    start_from(space, tmp_path / "source")
    assert space.state_dict().keys() == saved.keys()
    assert all(torch.equal(v, saved[k]) for k, v in space.state_dict().items())
    wider = spaces.build("mobilenet", {**SMALL, "width": 0.5}, init="torch")
    assert "width 0.25" in dsnas_error(start_from, wider, tmp_path / "source")
    settings = TINY_RUN + ["method=random", "candidates=2", "select_images=64", "warmup_epochs=0",
                           f"init_from={tmp_path / 'source'}"]
    result = run_search(load_config(None, settings), tmp_path / "random", quiet=True)
    assert result.metrics["selection"]["evaluated"] == 2
    assert f"init_from: {tmp_path / 'source'}" in (tmp_path / "random" / "config.yaml").read_text()
