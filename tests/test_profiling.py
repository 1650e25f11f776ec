"""StepCounter (crystalframes.profiling) counts each kind of host synchronisation once, at the
source line that made it, counts aten operators, and leaves reads made outside the counted
source (torch's own, this test file's) out of the count.

Attribution is by source folder: the synchronising code is written to a module file in a
temporary folder passed as ``roots``, so its line numbers are known to the test; a counter with
the default root (the package) must then count none of them."""

import importlib.util
import sys
import textwrap

import pytest
import torch

from crystalframes import profiling
from crystalframes.profiling import StepCounter

# one synchronisation per function; the line of each is found by its marker comment
SOURCE = textwrap.dedent('''
    import torch

    def item(t):
        return t.sum().item()  # SYNC item()

    def truth(t):
        return bool(t.sum() > 0)  # SYNC bool()

    def nonzero(t):
        return torch.nonzero(t)  # SYNC aten::nonzero

    def mask(t):
        return t[t > 0]  # SYNC aten::index(bool mask)

    def repeat(t, counts):
        return torch.repeat_interleave(t, counts)  # SYNC aten::repeat_interleave

    def repeat_sized(t, counts, total):
        return torch.repeat_interleave(t, counts, output_size=total)

    def to_cpu(t):
        return t.cpu()  # SYNC cpu()

    def no_sync(t):
        return (t * 2 + 1).exp().sum(0)
''')


@pytest.fixture()
def probe(tmp_path):
    folder = tmp_path / "probe_pkg"
    folder.mkdir()
    path = folder / "syncs.py"
    path.write_text(SOURCE)
    spec = importlib.util.spec_from_file_location("probe_pkg_syncs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lines = {}
    for number, line in enumerate(SOURCE.splitlines(), start=1):
        if "# SYNC " in line:
            lines[line.split("# SYNC ")[1]] = f"probe_pkg/syncs.py:{number}"
    yield module, folder, lines
    sys.modules.pop("probe_pkg_syncs", None)


def counted(fn, roots):
    with StepCounter(roots=roots) as c:
        fn()
    return c


T = torch.tensor([0.0, 1.5, -2.0, 3.0])
COUNTS = torch.tensor([1, 0, 2, 1])

CASES = {
    "item()": lambda m: m.item(T),
    "bool()": lambda m: m.truth(T),
    "aten::nonzero": lambda m: m.nonzero(T),
    "aten::index(bool mask)": lambda m: m.mask(T),
    "aten::repeat_interleave": lambda m: m.repeat(T, COUNTS),
    "cpu()": lambda m: m.to_cpu(T),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_sync_counted_once_at_its_line(probe, kind):
    module, folder, lines = probe
    c = counted(lambda: CASES[kind](module), [folder])
    assert c.syncs == 1, c.where
    assert c.where == {f"{lines[kind]} {kind}": 1}
    assert c.ops > 0 or kind == "cpu()"  # a CPU tensor's .cpu() is itself, no operator runs
    assert not c.outside


def test_operators_without_sync(probe):
    module, folder, _ = probe
    c = counted(lambda: module.no_sync(T), [folder])
    assert c.syncs == 0 and not c.where
    assert c.ops >= 4  # mul, add, exp, sum at least
    # repeat_interleave with output_size: the host already knows the size
    c = counted(lambda: module.repeat_sized(T, COUNTS, int(COUNTS.sum())), [folder])
    assert c.syncs == 0 and c.ops > 0


def test_outside_the_roots_listed_not_counted(probe):
    module, folder, lines = probe
    # the probe's reads are outside the package: the default counter only lists them
    c = counted(lambda: [f(module) for f in CASES.values()], None)
    assert c.syncs == 0 and not c.where
    assert sum(c.outside.values()) == len(CASES) and c.ops > 0
    # and this file's own reads are outside the probe's folder
    c = counted(lambda: (T.sum().item(), torch.nonzero(T)), [folder])
    assert c.syncs == 0 and c.outside == {"item()": 1, "aten::nonzero": 1}


def test_torch_internal_reads_not_counted(probe):
    _, folder, _ = probe
    weight = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([weight], lr=0.1)

    def step():
        opt.zero_grad()
        (weight * 2).sum().backward()
        opt.step()  # reads its CPU step counter on the host

    step()
    c = counted(step, [folder])
    assert c.syncs == 0 and c.ops > 0
    assert sum(c.outside.values()) >= 1


def test_default_root_is_the_package_and_a_prefix_sibling_is_not_inside(tmp_path):
    assert StepCounter().roots == (profiling._PACKAGE,)
    assert profiling._PACKAGE.endswith("crystalframes")
    # a folder whose name merely starts with the root's (crystalframes_before next to
    # crystalframes) is a different source tree
    root = tmp_path / "pkg"
    sibling = tmp_path / "pkg_before"
    sibling.mkdir()
    path = sibling / "mod.py"
    path.write_text("def read(t):\n    return t.item()\n")
    spec = importlib.util.spec_from_file_location("pkg_before_mod", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = counted(lambda: module.read(T.sum()), [root])
    assert c.syncs == 0 and c.outside == {"item()": 1}
    c = counted(lambda: module.read(T.sum()), [sibling])
    assert c.where == {"pkg_before/mod.py:2 item()": 1}
