"""Training and evaluating L2Rec models on Hugging Face's Trainer (docs/training.md).

The command-line entry points are ``python -m l2rec_kernels.train`` and
``python -m l2rec_kernels.evaluate``; the pieces they are made of:

* ``collator``    ``L2RecCollator``: ``Example``s -> the model's input tensors
* ``trainer``     ``L2RecTrainer`` (loss, ranking evaluation, checkpoints) and ``ranking_compute_metrics``
* ``baselines``   the most-popular and random rows of an evaluation table
* ``backbone``    ``--backbone DIR|tiny``: loading, building and saving the frozen backbone
* ``tokenizer``   the word-level tokenizer of the tiny backbone
* ``build``       presets, the model with its item-text table, titles and the prompt builder
* ``checkpoint``  the files of a trained checkpoint; loading weights into a model in place
* ``params``      trainable parameter counts by component
* ``cli``         what the two entry points share

Nothing is imported here, so ``import l2rec_kernels.training.params`` stays light.
"""
