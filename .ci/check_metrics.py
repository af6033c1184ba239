"""CI: each metric named in .ci/bounds.json (the one place the bounds live) is present and
at most its bound. Exit 1 otherwise.

    python .ci/check_metrics.py
"""

import json
import math
import sys
from pathlib import Path

bounds = json.loads((Path(__file__).parent / "bounds.json").read_text())
failed = False
for file, limits in bounds.items():
    path = Path(file)
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    for name, bound in limits.items():
        value = metrics.get(name)
        ok = isinstance(value, (int, float)) and math.isfinite(value) and value <= bound
        print(f"{file}: {name} = {value} (bound <= {bound}): {'ok' if ok else 'FAILED'}")
        failed |= not ok
sys.exit(1 if failed else 0)
