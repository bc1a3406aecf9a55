"""The README's findings block is what tools/findings.py makes of the committed report files: a hand edit of a
number there, or a report regenerated without rerunning the script, fails here."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _findings():
    spec = importlib.util.spec_from_file_location("findings", ROOT / "tools" / "findings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_findings_are_generated_from_the_report_files():
    findings = _findings()
    _, block, _ = findings._split((ROOT / "README.md").read_text())
    assert block == findings.render(), "README.md's findings differ from the report files: run `python tools/findings.py`"


def test_a_hand_edited_number_is_caught(tmp_path, monkeypatch):
    findings = _findings()
    text = (ROOT / "README.md").read_text()
    head, block, tail = findings._split(text)
    edited = block.replace("## Findings", "## Findings (edited)")
    readme = tmp_path / "README.md"
    readme.write_text(head + edited + tail)
    monkeypatch.setattr(findings, "README", readme)
    monkeypatch.setattr(findings, "ROOT", ROOT)
    assert findings.main(["--check"]) == 1
    assert findings.main([]) == 0 and findings.main(["--check"]) == 0
