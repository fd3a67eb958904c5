"""Paper Figure 2: FS distance matrix unordered / batched clustering / full clustering (sec. 3.1).

usage: python scripts/cluster_figure.py [--manifold fermat_quintic] [--points 1000] [--clusters 10]
       [--batches 5] [--seed 0] [--merge greedy] [--linkage complete] [--out figure2.png]
"""

import torch

from mflow.cli.options import Parser
from mflow.geometry.presets import manifold
from mflow.geometry.points import sample
from mflow.data.clustering import LINKAGES, MERGES, cluster_figure


def main(argv=None):
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--manifold", default="fermat_quintic")
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--clusters", type=int, default=10)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--merge", choices=MERGES, default="greedy")
    p.add_argument("--linkage", choices=LINKAGES, default="complete")
    p.add_argument("--out", default="figure2.png")
    a = p.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    X = manifold(a.manifold)
    z = sample(X, a.points, a.seed).z
    res = cluster_figure(z, a.out, a.clusters, a.batches, a.seed, a.merge, a.linkage, X=X)
    print(f"wrote {res['path']} ({len(z)} points, ARI batched vs full = {res['ari']:.3f})")


if __name__ == "__main__":
    main()
