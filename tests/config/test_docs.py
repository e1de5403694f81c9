"""docs/configuration.md is generated from the pydantic models and must not go stale."""

from wrinklefree_core.config.docs import DOC_PATH, render


def test_configuration_doc_is_current():
    assert DOC_PATH.read_text() == render(), (
        "docs/configuration.md is stale: run `.venv/bin/python -m wrinklefree_core.config.docs --write`"
    )


def test_every_field_has_a_description():
    text = render()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) > 50
    for row in rows:
        description = row.rstrip("|").rsplit("|", 1)[-1].strip()
        assert description, f"field without description: {row}"
