"""The runtime must import and score with torch (and the training package) unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "training"}:
            raise ImportError(f"blocked by test: {name}", name=name)
        return None
sys.meta_path.insert(0, Block())
"""


def run_blocked(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_blocker_really_blocks() -> None:
    proc = run_blocked("import torch")
    assert proc.returncode != 0
    assert "blocked by test: torch" in proc.stderr


def test_monitor_imports_and_scores_without_torch(tiny_bundle: Path) -> None:
    proc = run_blocked(
        f"""
        import pkgutil, importlib, sys
        import numpy as np
        import monitor
        for info in pkgutil.walk_packages(monitor.__path__, "monitor."):
            importlib.import_module(info.name)
        from monitor.bundle import load_bundle
        from monitor.scoring import Scorer
        from monitor.cli import main
        assert main(["inspect", {str(tiny_bundle)!r}]) == 0
        scores = Scorer(load_bundle({str(tiny_bundle)!r}), device="cpu").score(
            np.zeros((4, 16, 3), dtype=np.float32))
        assert scores.score.shape == (4,)
        assert not any(m.split(".")[0] in {{"torch", "training"}} for m in sys.modules)
        print("OK")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("OK")


def test_train_without_torch_says_what_to_install(tmp_path: Path) -> None:
    proc = run_blocked(
        f"""
        from monitor.cli import main
        args = ["train", "--data", {str(tmp_path)!r}, "--out", {str(tmp_path / "b")!r}]
        raise SystemExit(main(args))
        """
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "pip install 'plantwatch[train]'" in lines[0]
