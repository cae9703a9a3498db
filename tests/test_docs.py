"""README documents every config key, and CI runs exactly the README's test command."""
import os
import re

from src.model_utils.config import ROOT_DIR, SCHEMA


def read(name):
    with open(os.path.join(ROOT_DIR, name), encoding="utf-8") as src:
        return src.read()


def test_readme_documents_every_config_key():
    readme = read("README.md")
    missing = [key for key in SCHEMA if f"| `{key}` |" not in readme]
    assert not missing, f"config keys missing from README: {missing}"


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.+?)\n```", read("README.md"), re.DOTALL)
    assert blocks[:2] == ["bash scripts/run_demo.sh", "bash scripts/setup_env.sh && .venv/bin/python -m pytest -q tests"]
    assert read(".ci/run").strip().splitlines()[-1] == blocks[1]
