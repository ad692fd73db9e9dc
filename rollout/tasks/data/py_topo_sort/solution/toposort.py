import heapq


class CycleError(Exception):
    def __init__(self, nodes):
        super().__init__(f"cycle among {nodes}")
        self.nodes = nodes


def topo_sort(deps):
    """Order the nodes of `deps` so that dependencies come first."""
    nodes = set(deps)
    for ds in deps.values():
        nodes.update(ds)
    pending = {n: set() for n in nodes}
    users = {n: [] for n in nodes}
    for node, ds in deps.items():
        for d in ds:
            if d not in pending[node]:
                pending[node].add(d)
                users[d].append(node)
    ready = [n for n in nodes if not pending[n]]
    heapq.heapify(ready)
    order = []
    while ready:
        n = heapq.heappop(ready)
        order.append(n)
        for u in users[n]:
            pending[u].discard(n)
            if not pending[u]:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise CycleError(sorted(nodes - set(order)))
    return order
