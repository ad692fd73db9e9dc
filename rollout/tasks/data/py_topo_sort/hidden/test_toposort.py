import pytest

from toposort import CycleError, topo_sort


def test_empty():
    assert topo_sort({}) == []


def test_chain():
    assert topo_sort({"c": ["b"], "b": ["a"]}) == ["a", "b", "c"]


def test_ties_are_lexicographic():
    assert topo_sort({"b": [], "a": [], "c": []}) == ["a", "b", "c"]
    deps = {"app": ["lib", "util"], "lib": ["base"], "util": ["base"], "zeta": []}
    assert topo_sort(deps) == ["base", "lib", "util", "app", "zeta"]


def test_nodes_only_as_dependencies_are_included():
    assert topo_sort({"x": ["y", "z"]}) == ["y", "z", "x"]


def test_duplicate_dependencies():
    assert topo_sort({"b": ["a", "a"]}) == ["a", "b"]


def test_respects_every_edge_in_larger_graph():
    deps = {f"n{i:02d}": [f"n{j:02d}" for j in range(i) if (i * j) % 7 == 1]
            for i in range(40)}
    order = topo_sort(deps)
    pos = {n: k for k, n in enumerate(order)}
    assert len(order) == 40
    for n, ds in deps.items():
        for d in ds:
            assert pos[d] < pos[n]


def test_cycle_reports_nodes():
    with pytest.raises(CycleError) as e:
        topo_sort({"a": ["b"], "b": ["c"], "c": ["a"], "d": []})
    assert e.value.nodes == ["a", "b", "c"]
