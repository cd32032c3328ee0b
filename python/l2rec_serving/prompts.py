"""The prompt builders, re-exported: they live in ``l2rec_kernels.prompts`` so that training
(``l2rec_kernels.training``) and serving build the same prompts without the kernels package
depending on this serving integration."""

from l2rec_kernels.prompts import (
    DEFAULT_TEMPLATE,
    FixedLengthPromptBuilder,
    SyntheticPromptBuilder,
    TitlePromptBuilder,
    load_titles,
)

__all__ = ["DEFAULT_TEMPLATE", "FixedLengthPromptBuilder", "SyntheticPromptBuilder", "TitlePromptBuilder",
           "load_titles"]
