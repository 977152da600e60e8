"""Shapes of URIs that try to leave an allowed folder: dot segments, encoded dots and slashes, backslashes.

``escapes(own, other, name)`` spells "``other``'s ``name``, reached from inside ``own``" every way a later
layer (a kernel, an HTTP server, a proxy, a decoder) could read as the other folder. ``own`` is a folder
URI ending in ``/`` (``file:///store/uploads/alice/``), ``other`` the sibling folder's name (``bob``).
Used by the URI-policy tests and bench/hostile.py's ``uris`` class.
"""

from __future__ import annotations

DOTS = {
    "plain": "..",
    "encoded_lower": "%2e%2e",
    "encoded_upper": "%2E%2E",
    "encoded_mixed": "%2e.",
    "encoded_mixed_2": ".%2E",
    "double_encoded": "%252e%252e",
    "overlong_utf8": "%c0%ae%c0%ae",
    "fullwidth": "\uff0e\uff0e",
    "fullwidth_encoded": "%EF%BC%8E%EF%BC%8E",
    "path_parameter": "..;x=1",
    "trailing_space": ".. ",
    "three_dots": "...",
}


def escapes(own: str, other: str, name: str) -> dict[str, str]:
    """Variant name -> URI that would read ``{parent of own}/{other}/{name}`` if a later layer resolved it."""
    assert own.endswith("/")
    shapes = {f"dots_{label}": f"{own}{dots}/{other}/{name}" for label, dots in DOTS.items()}
    shapes |= {
        "dots_then_encoded_slash": f"{own}..%2f{other}/{name}",
        "encoded_slash_upper": f"{own}%2E%2E%2F{other}%2F{name}",
        "encoded_backslash": f"{own}..%5c{other}%5c{name}",
        "raw_backslash": f"{own}..\\{other}\\{name}",
        "double_encoded_slash": f"{own}..%252f{other}/{name}",
        "fullwidth_solidus": f"{own}..\uff0f{other}\uff0f{name}",
        "single_dot_then_dots": f"{own}./../{other}/{name}",
        "empty_segment_then_dots": f"{own}/../{other}/{name}",
        "dots_at_end_of_name": f"{own}{name}/../../{other}/{name}",
        "deep_dots": f"{own}a/b/../../../{other}/{name}",
        "nul_byte": f"{own}%00/../{other}/{name}",
    }
    return shapes
