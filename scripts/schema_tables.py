"""Write (or check) the docs' tables of every declared spec from its schema declaration.

    python scripts/schema_tables.py          # rewrite the tables in docs/
    python scripts/schema_tables.py --check  # exit 1 naming each table that differs

Each table sits between the markers ``<!-- generated: KEY ... -->`` and
``<!-- /generated: KEY -->`` in its document; ``tests/test_schema.py`` fails when one differs
from what its declaration gives.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from selva_core.schema import generated_block, replace_generated  # noqa: E402


def _eval_spec() -> str:
    from selva_core.evaluation.spec import SPEC_SCHEMA

    return SPEC_SCHEMA.markdown_table()


def _sweep() -> str:
    from selva_core.sweep import SWEEP_SCHEMA

    return SWEEP_SCHEMA.markdown_table()


def _train_flags() -> str:
    from selva_core.training.config import train_config_schema

    return train_config_schema().markdown_table(heading="flag", prefix="--")


def _adapter_metadata() -> str:
    from selva_core.model.lora.metadata import metadata_schema

    return metadata_schema().markdown_table(heading="metadata key")


def _peft_config() -> str:
    from selva_core.model.lora.peft_io import PEFT_CONFIG_SCHEMA

    return PEFT_CONFIG_SCHEMA.markdown_table(heading="adapter_config.json key")


#: key -> (document, table maker)
TABLES: dict[str, tuple[str, Callable[[], str]]] = {
    "eval-spec": ("docs/EVALUATION.md", _eval_spec),
    "sweep-file": ("docs/EVALUATION.md", _sweep),
    "train-flags": ("docs/TRAINING.md", _train_flags),
    "adapter-metadata": ("docs/LORA.md", _adapter_metadata),
    "peft-config": ("docs/LORA.md", _peft_config),
}


def stale_tables(root: Path = ROOT) -> list[str]:
    """``KEY (DOCUMENT)`` of every table that differs from its declaration."""
    stale = []
    for key, (doc, make) in TABLES.items():
        if generated_block((root / doc).read_text(encoding="utf-8"), key) != make():
            stale.append(f"{key} ({doc})")
    return stale


def write_tables(root: Path = ROOT) -> list[str]:
    """Rewrite every table; the documents changed."""
    changed = []
    for key, (doc, make) in TABLES.items():
        path = root / doc
        text = path.read_text(encoding="utf-8")
        new = replace_generated(text, key, make())
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(doc)
    return sorted(set(changed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="only report tables that differ from their declarations")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_tables()
        for entry in stale:
            print(f"stale table: {entry}; run python scripts/schema_tables.py", file=sys.stderr)
        return 1 if stale else 0
    for doc in write_tables():
        print(f"rewrote {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
