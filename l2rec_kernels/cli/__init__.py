"""The command-line entry points, all here (each a ``main(argv) -> int``):

==================================  =========================  ==================================
command                             module                     does
==================================  =========================  ==================================
``python -m l2rec_kernels.train``   ``cli/train.py``           train L2Rec (both stages)
``python -m l2rec_kernels.evaluate``  ``cli/evaluate.py``      full-ranking metrics of a checkpoint
``python -m l2rec_kernels.compare``   ``cli/compare.py``       L2Rec, SASRec and peers on one split
``python -m l2rec_kernels.tune``    ``cli/tune.py``            fill the ``backend="auto"`` cache
``python -m l2rec_kernels.training.params``  ``cli/params.py``  count trainable parameters
==================================  =========================  ==================================

The modules the commands name (``l2rec_kernels/train.py`` and the others) only run these
``main`` functions, so the commands keep their names. ``_run.run`` gives every command
argparse's error format for bad input. The serving package's commands are its own
(``python -m l2rec_serving``, ``python -m l2rec_serving.batch``).
"""
