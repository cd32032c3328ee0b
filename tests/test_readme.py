"""The README's quick example runs as written and gives the shapes it promises."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_quick_example_runs():
    text = README.read_text()
    match = re.search(r"## Quick example\n\n```python\n(.*?)```", text, re.S)
    assert match, "README has no '## Quick example' python block"
    scope: dict = {}
    exec(compile(match.group(1), str(README), "exec"), scope)
    assert tuple(scope["out"].scores.shape) == (2, 201)
    assert tuple(scope["out"].gates.shape) == (2, 2, 4)
    scores, items = scope["scores"], scope["items"]
    assert scores.shape == items.shape == (2, 10)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    for row, history in zip(items.tolist(), [[3, 17, 42], [8, 9]]):
        assert not set(row) & set(history) and 0 not in row
