"""Scene data: the CLEVR-like renderer and dataset loaders."""
