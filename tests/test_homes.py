"""One home per concept, checked on the source: the letterbox, the detection JSON, serving code a reader can hold.

Each check reads the package's source (AST), so it fails the moment a second home appears, e.g. a module that builds
its own `LetterBox(...)` or writes detection dicts by hand.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ecc_yolo"
MAX_FUNCTION_LINES = 100  # issue 26: serving split into parts a reader can hold, ~100 lines per function group


def _modules() -> dict[str, ast.Module]:
    mods = {str(p.relative_to(PACKAGE.parent)): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}
    assert len(mods) > 40, "the package's modules were not found"
    return mods


def _where(predicate) -> list[str]:
    return sorted({f"{path}:{node.lineno}" for path, tree in _modules().items() for node in ast.walk(tree)
                   if predicate(node)})


def test_one_letterbox():
    """Frames are letterboxed in one place (`ecc_yolo.infer.letterbox`): the device, the server and the costs read the
    same pixels. A second `LetterBox(...)` anywhere in the package is a second home."""
    calls = _where(lambda n: isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None))
                   == "LetterBox")
    assert len(calls) == 1 and calls[0].startswith("ecc_yolo/infer.py:"), calls


def test_one_detection_json():
    """A detection becomes JSON in one place (`ecc_yolo.serve.protocol.detections_json`): the server's answers and
    detect's per-frame records share it. A dict literal with an "xyxy" key elsewhere is a second writer."""
    writers = _where(lambda n: isinstance(n, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == "xyxy"
                                                                for k in n.keys))
    assert len(writers) == 1 and writers[0].startswith("ecc_yolo/serve/protocol.py:"), writers


def test_serving_functions_fit_on_a_screen():
    """No function in the serving package (client, app, link, engine) is longer than MAX_FUNCTION_LINES."""
    long = []
    for path, tree in _modules().items():
        if not path.startswith("ecc_yolo/serve/"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long
    assert any(p.startswith("ecc_yolo/serve/") for p in _modules())
