"""docs/api.md's Python blocks, run as they stand (one script, in a fresh folder), so the page cannot rot; README's
example and the docs' links and results pages checked."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "api.md"


def blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_api_page_runs(tmp_path):
    code = blocks(PAGE.read_text())
    assert len(code) >= 4, "docs/api.md lost its examples"
    script = tmp_path / "api_example.py"
    probe = ("import sys, mflow, mflow.geometry, mflow.data, mflow.models\n"
             "print('lightning imported:', 'lightning' in sys.modules)\n")
    script.write_text(probe + "\n".join(code))
    env = {"MFLOW_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path)}
    p = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"docs/api.md's example failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    out = p.stdout
    assert "2000 3 (2000, 3, 3)" in out and "(16, 16, 9, 9)" in out and "evaluate: test sigma" in out, out
    sigma_fs = float(re.search(r"sigma_FS = ([0-9.]+)", out).group(1))
    assert 0.33 < sigma_fs < 0.42, out
    assert "lightning imported: False" in out, "import mflow / mflow.geometry / mflow.data / mflow.models import Lightning"


def test_readme_example_runs(tmp_path):
    """README's Python example runs as written, at tiny sizes (fewer points, one epoch)."""
    (code,) = blocks((ROOT / "README.md").read_text())
    tiny = (code.replace("n_points=5000", "n_points=600").replace("max_epochs=3", "max_epochs=1")
            .replace("2000", "200").replace("points[:32]", "points[:8]"))
    assert tiny.count("200") >= 3 and "max_epochs=1" in tiny  # the sizes were found
    script = tmp_path / "readme_example.py"
    script.write_text(tiny)
    env = {"MFLOW_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path), "WANDB_MODE": "offline"}
    p = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"README's example failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    assert re.search(r"sigma [0-9.]+ gain [0-9.]+", p.stdout), p.stdout
    assert (tmp_path / "eval" / "eval.json").is_file()


def test_mflow_exports_what_it_lists():
    import mflow

    for name in mflow.__all__:
        assert getattr(mflow, name) is not None, name
    import mflow.geometry as geometry
    import mflow.models as models

    for mod in (geometry, models):
        assert all(hasattr(mod, n) for n in mod.__all__), mod.__name__


def test_docs_hold_together():
    """README stays a page (<= 200 lines); every relative link of README and docs/ resolves; every results page
    names a command that regenerates it and embeds its figures from docs/figures; nothing cites the conventions
    file that lived outside the repository (docs/conventions.md is the one)."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = [(p.name, t) for p in pages for t in re.findall(r"\]\(([^)#]+)[^)]*\)", p.read_text())
              if not t.startswith("http") and not (p.parent / t).exists()]
    assert not broken, broken
    for page in sorted((ROOT / "docs" / "results").glob("*.md")):
        text = page.read_text()
        assert re.search(r"`python [^`]+`|```bash\npython ", text), f"{page.name} names no command that regenerates it"
        for fig in re.findall(r"!\[[^]]*\]\(([^)]+)\)", text):
            assert fig.startswith("../figures/"), (page.name, fig)
    old = "REFERENCE" + ".md"  # spelled apart, so that this file does not cite it
    cited = [str(p.relative_to(ROOT)) for d in ("mflow", "tests", "bench", "studies", "docs")
             for p in (ROOT / d).rglob("*.py") if old in p.read_text()]
    assert not cited and old not in readme, cited
