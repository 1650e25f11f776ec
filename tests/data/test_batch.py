import numpy as np
import torch

from crystalframes.data.batch import collate
from crystalframes.data.graph import GraphSettings, build_graph
from crystalframes.io import Crystal


def test_collate_offsets_and_targets(nacl):
    other = Crystal("C", np.eye(3) * 3.0, [6], [[0.1, 0.2, 0.3]], targets={"e": 1.5})
    graphs = [build_graph(nacl, GraphSettings(k=4)), build_graph(other, GraphSettings(k=4))]
    b = collate(graphs, target_names=["e"], dtype=torch.float64)
    assert b.num_graphs == 2 and b.num_atoms.tolist() == [8, 1]
    assert b.batch.tolist() == [0] * 8 + [1]
    e0 = graphs[0].num_edges
    assert b.edge_index[:, :e0].max() < 8 and (b.edge_index[:, e0:] == 8).all()
    assert torch.isnan(b.targets[0, 0]) and b.targets[1, 0] == 1.5
    assert b.edge_vec.dtype == torch.float64 and b.lattice.shape == (2, 3, 3)
    assert b.edge_batch.tolist() == [0] * e0 + [1] * graphs[1].num_edges
    assert torch.allclose(b.edge_vec, torch.from_numpy(np.concatenate([g.edge_vec for g in graphs])))


def test_to_casts_floats_only(nacl):
    b = collate([build_graph(nacl)]).to(dtype=torch.float64)
    assert b.pos.dtype == torch.float64 and b.edge_index.dtype == torch.long and b.atomic_numbers.dtype == torch.long
