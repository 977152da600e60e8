"""The one error model: every code raised anywhere is in the table, and the README and OpenAPI come from it."""

from __future__ import annotations

import json
from pathlib import Path

from errors import CodedError, error_body
from errors.codes import CODES, markdown_table
from tools.error_docs import README, readme_section
from tools.source_map import CODE_PATTERN, ROOT, coded_bases, raised_codes, source_files


def test_every_code_raised_in_the_source_is_in_the_table() -> None:
    missing = {code: sorted(str(p.relative_to(ROOT)) for p in paths) for code, paths in raised_codes().items()}
    missing = {code: files for code, files in missing.items() if code not in CODES}
    assert not missing, f"codes raised but not in errors/codes.py: {missing}"


def test_the_scan_finds_codes_in_each_way_they_are_raised(tmp_path: Path) -> None:
    """The scan is what keeps the table whole: it must see a literal, a conditional, a name, a dict look-up,
    a subclass's own code, an ``error_code=`` keyword and a body built by hand."""
    source = tmp_path / "sample.py"
    source.write_text(
        "from errors import CodedError, error_body\n"
        "FINAL = {'a': 'from_dict'}\n"
        "class Refused(CodedError):\n"
        "    def __init__(self):\n"
        "        super().__init__('from_subclass', 'no')\n"
        "def f(x, status):\n"
        "    code = 'from_name' if x else 'from_else'\n"
        "    raise CodedError(code, 'm')\n"
        "def g(status):\n"
        "    raise CodedError(FINAL[status], 'm')\n"
        "def h():\n"
        "    return error_body('from_body', 'm'), {'error': 'm', 'error_code': 'from_dict_literal'}\n"
        "def k(Status):\n"
        "    return Status(error_code='from_keyword')\n"
    )
    errors_init = ROOT / "errors" / "__init__.py"
    found = set(raised_codes([errors_init, source]))
    expected = {"from_dict", "from_subclass", "from_name", "from_else", "from_body", "from_dict_literal"}
    assert expected | {"from_keyword"} <= found


def test_one_coded_error_base() -> None:
    """Only ``errors.CodedError`` stores a code itself; every other coded exception derives from it."""
    assert set(coded_bases(source_files(with_bench=False))) == {"CodedError"}


def test_table_rows_are_well_formed() -> None:
    assert list(CODES) == sorted(CODES)
    for code, row in CODES.items():
        assert CODE_PATTERN.fullmatch(code), code
        assert 400 <= row.http_status < 600 and row.meaning.endswith("."), code


def test_readme_list_is_generated_from_the_table() -> None:
    assert readme_section(README.read_text()) == markdown_table(), "stale: run `python -m tools.error_docs`"


def test_openapi_lists_every_code() -> None:
    from orchestrator.api.app import ErrorBody

    description = ErrorBody.model_json_schema()["properties"]["error_code"]["description"]
    assert all(f"`{code}`" in description for code in CODES)


def test_error_body_is_the_boundary_shape() -> None:
    exc = CodedError("too_large", "over the limit")
    assert json.loads(json.dumps(error_body(exc.code, exc.message))) == {
        "error": "over the limit",
        "error_code": "too_large",
    }
    assert exc.http_status == 413 and CodedError("no_such_code", "x").http_status == 500


def test_every_coded_exception_derives_from_the_one_base() -> None:
    from engines.errors import EngineError
    from handlers.errors import TaskError
    from orchestrator.core.backends.errors import BackendError
    from orchestrator.core.models import OrchestratorError
    from storage.errors import StorageError

    for cls in (TaskError, EngineError, StorageError, BackendError, OrchestratorError):
        assert issubclass(cls, CodedError), cls
