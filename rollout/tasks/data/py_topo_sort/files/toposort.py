class CycleError(Exception):
    def __init__(self, nodes):
        super().__init__(f"cycle among {nodes}")
        self.nodes = nodes


def topo_sort(deps):
    """Order the nodes of `deps` so that dependencies come first."""
    raise NotImplementedError
