"""The documentation keeps up with the code: the recipe reference, the README's size, links, recipes.

- docs/config.md holds the reference generated from the schema (`ntp_rl.config_reference`), and an
  independent walk of the schema finds every key of every model nested under `Recipe` (through
  optionals, lists, mappings and the union of stage kinds) in its tables, with its default.
- README.md stays a manual: at most 15 KB. Figures from runs live in docs/LOG.md.
- Every relative link in README.md, docs/*.md and rewards/README.md points to a file that exists
  (and to a heading that exists, for a `#anchor` into a Markdown file).
- Every shipped recipe is named in the README or a guide page.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, create_model

from ntp_rl import config_reference
from ntp_rl.config import Recipe

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONFIG_DOC = ROOT / "docs" / "config.md"
LOG = ROOT / "docs" / "LOG.md"
README_MAX_BYTES = 15 * 1024
REGENERATE = "regenerate it: .venv/bin/python -m ntp_rl.config_reference --write docs/config.md"


def _doc_pages() -> list[Path]:
    return [README, ROOT / "rewards" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# --------------------------------------------------------------------------------------------
# The recipe reference


def _models_in(annotation: typing.Any) -> list[type[BaseModel]]:
    """BaseModel classes an annotation can hold, through Annotated, Optional, unions, lists, dicts."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def _reachable(root: type[BaseModel]) -> dict[type[BaseModel], int]:
    """Every model nested under `root`, with its depth (root = 0), breadth first."""
    depth = {root: 0}
    queue = [root]
    while queue:
        model = queue.pop(0)
        for field in model.model_fields.values():
            for sub in _models_in(field.annotation):
                if sub not in depth:
                    depth[sub] = depth[model] + 1
                    queue.append(sub)
    return depth


def _reference_rows(text: str) -> list[tuple[str, str]]:
    """(key path, default) of every row of the reference tables in `text`."""
    rows = []
    for line in text.splitlines():
        match = re.match(r"^\| `([^`]+)` \| (.*?) \| (.*?) \| .* \|$", line)
        if match:
            rows.append((match.group(1), match.group(3)))
    return rows


def _missing_from(text: str, root: type[BaseModel]) -> list[str]:
    """`Model.field` for each key of the schema with no row ending in its name with its default."""
    rows = _reference_rows(text)
    missing = []
    for model in _reachable(root):
        for name, field in model.model_fields.items():
            default = config_reference.default_text(field)
            if not any((key == name or key.endswith(f".{name}")) and shown == default for key, shown in rows):
                missing.append(f"{model.__name__}.{name} (default {default})")
    return missing


def test_config_reference_matches_the_schema():
    text = CONFIG_DOC.read_text(encoding="utf-8")
    assert config_reference.region() in text, (
        f"docs/config.md is out of date with ntp_rl/config.py; {REGENERATE}"
    )


def test_every_schema_key_has_a_meaning():
    assert config_reference.undocumented() == [], (
        "keys without a meaning: add each to DESCRIPTIONS in ntp_rl/config_reference.py "
        f"(or give the field a Field(description=...)), then {REGENERATE}"
    )


def test_no_meaning_is_left_over_from_a_removed_key():
    assert config_reference.unused_descriptions() == [], (
        "DESCRIPTIONS in ntp_rl/config_reference.py names keys the schema no longer has: remove them"
    )


def test_every_schema_key_is_in_the_reference_with_its_default():
    models = _reachable(Recipe)
    # The walk must get through the union of stage kinds and the optionals inside them
    # (Recipe -> the eval stage, one member of the union in `stages` -> probes -> one instrument).
    assert max(models.values()) >= 3, models
    missing = _missing_from(CONFIG_DOC.read_text(encoding="utf-8"), Recipe)
    assert missing == [], f"docs/config.md lacks {missing}; {REGENERATE}"


def test_a_new_key_without_docs_fails():
    # A field added to the schema, at the top and inside a nested model, is reported missing.
    run_model = Recipe.model_fields["run"].annotation
    extended_run = create_model("ExtendedRun", __base__=run_model, brand_new_nested_key=(int, 5))
    extended = create_model(
        "ExtendedRecipe", __base__=Recipe, run=(extended_run, ...), brand_new_top_key=(str, "x")
    )
    text = CONFIG_DOC.read_text(encoding="utf-8")
    assert _missing_from(text, extended) == [
        "ExtendedRecipe.brand_new_top_key (default `x`)",
        "ExtendedRun.brand_new_nested_key (default `5`)",
    ]
    assert config_reference.region(extended) not in text
    assert set(config_reference.undocumented(extended)) == {"run.brand_new_nested_key", "brand_new_top_key"}


def test_reference_key_paths_follow_the_schema():
    paths = [key.path for key in config_reference.walk(Recipe)]
    assert len(paths) == len(set(paths))
    assert "stages[rl].rewards[].weight" in paths  # a list inside a stage kind
    assert "data.arithmetic.num_train" in paths  # a nested model
    # A model met again (a stage's own data:) points to its first place instead of repeating it.
    assert not any(p.startswith("stages[sft].data.") for p in paths)


# --------------------------------------------------------------------------------------------
# README, links, recipes, log


def test_readme_is_a_manual_not_a_log():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes, over {README_MAX_BYTES}: move details to docs/ and figures to docs/LOG.md"
    )


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M)}


@pytest.mark.parametrize("page", _doc_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target} (no heading #{anchor} in {linked.name})")
    assert broken == [], f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_link_check_can_fail(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n[a](missing.md) [b](#title) [c](#nowhere) [d](https://example.org)\n")
    text = page.read_text()
    targets = LINK.findall(text)
    assert targets == ["missing.md", "#title", "#nowhere", "https://example.org"]
    assert _anchors(page) == {"title"}


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_is_documented(recipe):
    name = f"recipes/{recipe.name}"
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    assert any(name in p.read_text(encoding="utf-8") for p in pages), f"{name} is named in no doc page"


def test_lab_log_is_dated_newest_first():
    dates = re.findall(r"^## (\d{4}-\d{2}-\d{2}) · ", LOG.read_text(encoding="utf-8"), flags=re.M)
    assert dates, "docs/LOG.md has no dated entries ('## YYYY-MM-DD · title')"
    assert dates == sorted(dates, reverse=True), "docs/LOG.md entries must be newest first"
