"""The README's Python examples run as written (with one epoch instead of seven), and its
first two commands are the install+tutorial and install+test commands that CI runs."""
import pathlib
import re

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 2
    quick = blocks[0].replace("epochs=7, batch_size=1)", "epochs=1, batch_size=1, progress=False)")
    assert quick != blocks[0], "the quick start's fit call changed; update this test"
    scope = {}
    exec(compile(quick, "README quick start", "exec"), scope)
    assert 0.5 < scope["net"].score(scope["X_test"], scope["y_test"]) <= 1.0
    scope["X_batch"], scope["y_batch"] = scope["X_train"][:8], scope["y_train"][:8]
    exec(compile(blocks[1], "README loop", "exec"), scope)
    assert np.isclose(scope["opt"].lr, 1e-4)


def test_first_commands_and_ci():
    commands = re.findall(r"```bash\n(.*?)```", README, re.S)[0].splitlines()
    assert commands[0].startswith("pip install -e . && python -m qatfhe tutorial")
    test_command = commands[1].split("#")[0].strip()
    assert test_command == ('pip install torch==2.13.0 && pip install -e ".[test,fhe]" && '
                            'python -m pytest')
    assert test_command in (ROOT / ".ci" / "run").read_text()
