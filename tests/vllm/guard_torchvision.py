"""Lets a CUDA build of torchvision import beside a CPU-only torch (run with the vLLM venv's python).

torchvision's `_meta_registrations.py` registers fake kernels with `@torch.library.register_fake(...)`,
which fails at import when torchvision's compiled ops did not load. Those registrations matter only for
torchvision's own ops (nms, roi_align, ...), never used by the Qwen2-VL image processor, so each one is
made conditional on `torchvision.extension._has_ops()`. Idempotent: a patched file is left as it is.
"""

import importlib.util
import sys
from pathlib import Path

MARKER = "# mmcof-gen: register_fake guarded by _has_ops()"
GUARD = f'''
{MARKER}
def _register_fake_if_ops(name):
    if torchvision.extension._has_ops():
        return torch.library.register_fake(name)
    return lambda fn: fn
'''


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("guard_torchvision: torchvision is not installed; nothing to patch")
        return 0
    path = Path(spec.origin).parent / "_meta_registrations.py"
    text = path.read_text()
    if MARKER in text:
        print(f"guard_torchvision: {path} already patched")
        return 0
    if "@torch.library.register_fake(" not in text or "import torchvision" not in text:
        # another torchvision release: nothing of this shape to guard (setup_venv.sh's import check decides)
        print(f"guard_torchvision: {path} has no unguarded register_fake; left as it is")
        return 0
    lines = text.splitlines(keepends=True)
    # The helper goes after the last top-level import, so `torch` and `torchvision` are bound.
    last_import = max(i for i, line in enumerate(lines) if line.startswith(("import ", "from ")))
    lines.insert(last_import + 1, GUARD)
    patched = "".join(lines).replace("@torch.library.register_fake(", "@_register_fake_if_ops(")
    path.write_text(patched)
    print(f"guard_torchvision: patched {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
