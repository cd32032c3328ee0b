"""Models: the PyTorch reference ``L2Rec``, the fast ``FusedL2Rec`` and their shared pieces."""
