"""The packages' one-way stack, read from the source (scripts/import_graph.py has the rules):
models (with the shard format) at the bottom; data_prep, training, evaluation import only
downward and never each other; no import circles; no module over 400 lines; only the format
module spells a shard member name. Each rule is also shown to catch a new violation."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import draw_design  # noqa: E402
import import_graph as graph  # noqa: E402

MODULES = graph.load()


def _fake(name: str, source: str) -> graph.Module:
    path = graph.ROOT / (name.replace(".", "/") + ".py")
    return graph.parse(source, name, path, set(graph.CHECKED))


def _with(*fakes: graph.Module) -> dict[str, graph.Module]:
    """The repository's modules plus ``fakes``, their imports resolved as ``load`` does."""
    modules = {**MODULES, **{fake.name: fake for fake in fakes}}
    for fake in fakes:
        fake.imports = {graph._owner(t, modules): n for t, n in fake.imports.items()}
    return modules


def test_every_package_imports_only_downward():
    assert graph.layer_problems(MODULES) == []
    edges = graph.package_edges(MODULES)
    assert ("evaluation", "training") not in edges and ("training", "evaluation") not in edges
    assert ("training", "models.shards") in edges and ("evaluation", "models.shards") in edges
    assert ("data_prep", "models.shards") in edges
    # cluster (SLURM, the local cluster) is at the bottom: every job's launcher uses it, and it
    # imports no other package of ours
    assert {("data_prep", "cluster"), ("training", "cluster"), ("evaluation", "cluster")} <= set(
        edges
    )
    assert not [pair for pair in edges if pair[0] == "cluster"]


def test_a_new_upward_or_sideways_import_fails():
    sideways = _fake("evaluation.newthing", "from training.samples import collate\n")
    upward = _fake("models.newthing", "def f():\n    import evaluation.report\n")
    shared = _fake("models.shards.newthing", "from models.bundle import load_model\n")
    scripts = _fake("training.newthing", "import scripts.bench_common\n")
    gone = _fake("data_prep.newthing", "from data_prep.shards import list_shards\n")
    launcher = _fake("cluster.newthing", "from training.config import RunConfig\n")
    beside = _fake("models.newthing2", "from cluster.slurm import SlurmError\n")
    fakes = (sideways, upward, shared, scripts, gone, launcher, beside)
    problems = graph.layer_problems(_with(*fakes))
    assert len(problems) == 7, problems
    assert any("cluster.newthing imports training.config" in p for p in problems)
    assert any("models.newthing2 imports cluster.slurm" in p for p in problems)
    assert any("imports data_prep.shards, which is no module" in p for p in problems)
    assert any("evaluation.newthing imports training.samples" in p for p in problems)
    assert any("models.newthing imports evaluation.report" in p for p in problems)
    assert any("models.shards imports only itself" in p for p in problems)
    assert any("scripts/ sits on top" in p for p in problems)


def test_no_import_circles():
    assert graph.cycles(MODULES) == []
    a = _fake("evaluation.circle_a", "from evaluation.circle_b import x\n")
    b = _fake("evaluation.circle_b", "def f():\n    from evaluation.circle_a import y\n")
    assert graph.cycles(_with(a, b)) == [["evaluation.circle_a", "evaluation.circle_b"]]


def test_no_module_over_the_size_limit():
    over = {m.name: m.lines for m in MODULES.values() if m.lines > graph.MAX_LINES}
    assert over == {}, f"split these by responsibility: {over}"


def test_only_the_format_module_spells_member_names():
    spelled = {
        name: module.member_names
        for name, module in MODULES.items()
        if module.member_names and name != graph.FORMAT_MODULE
    }
    assert spelled == {}, "use models.shards.format's names: " + str(spelled)
    assert MODULES[graph.FORMAT_MODULE].member_names  # the check sees literals where they are
    fake = _fake(
        "training.newthing", 'X = "cameras.npy"\ny = f"{3:03d}.png"\nz = f"v{3:03d}.png"\n'
    )
    assert [literal for _, literal in fake.member_names] == ["cameras.npy", "f'{...:03d}.png'"]


def test_the_design_picture_is_drawn_from_the_current_code():
    """docs/design.svg (docs/design.md opens with it) is what scripts/draw_design.py draws from
    the code now: a new import between packages or a renamed step changes it."""
    assert draw_design.PICTURE.read_text() == draw_design.draw(
        MODULES
    ), "docs/design.svg is stale: run `make design-picture` and commit it"
    upward = _fake("models.newthing", "import evaluation.report\n")
    red = f'stroke="{draw_design.BROKEN}"'  # an arrow that breaks the rule
    assert red not in draw_design.PICTURE.read_text() and red in draw_design.draw(_with(upward))
    assert all(draw_design.defined(m, f) for _, m, f in draw_design.SAMPLE_PATH)
    assert not draw_design.defined("training.samples", "no_such_step")
