"""The run's readable table (Markdown), from its results JSON; a missing or failed figure shows as ``—``."""

from __future__ import annotations

from typing import Any

DASH = "—"
COLUMNS = (
    "engine",
    "model, auto precision (frames/s)",
    "vs fp32",
    "render (frames/s)",
    "live streams at 25 fps",
    "peak memory (MiB)",
    "cold start to 1st frame (s)",
    "clip end to end, warm (x real time)",  # the first request's when the run made only one
    "warm split: engine / encode (ms); decode (ms/frame)",
    "torch.compile",
)


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _best_model(model: dict[str, Any] | None) -> tuple[str, str]:
    if not model:
        return DASH, DASH
    label, best = max(model.items(), key=lambda item: item[1]["fps"])
    return f"{best['fps']:g} ({label})", f"{best['speedup_vs_fp32']:g}x (fp32 {best['fp32_fps']:g})"


def _cell(value: Any) -> str:
    return DASH if value is None else f"{value}"


def _memory(mem: dict[str, float] | None) -> str:
    if not mem:
        return DASH
    return f"{mem.get('gpu_peak_allocated_mib', mem.get('cpu_peak_rss_mib', DASH))}"


def _section_result(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The section's figures, also the partial ones of a section stopped at its box (listed under the table)."""
    section = results["sections"].get(name)
    return section.get("result") if section else None


def _errors(section: dict[str, Any]) -> dict[str, str]:
    result = section.get("result")
    return result.get("errors", {}) if isinstance(result, dict) else {}


def engine_row(results: dict[str, Any], engine: str) -> list[str]:
    bench = e2e = _section_result(results, f"engine:{engine}")
    compiled = _section_result(results, f"compile:{engine}")
    model, speedup = _best_model(_get(bench, "model"))
    warm = _get(e2e, "generate_video", "warm") or _get(e2e, "generate_video", "first")
    timings = _get(warm, "timings_ms") or {}
    split = DASH
    if warm:
        decode = _get(e2e, "decode_ms_per_frame")
        engine_ms = timings.get("features", 0) + timings.get("render", 0)  # features: until the first batch is out
        split = f"{engine_ms:.0f} / {timings.get('encode', 0):.0f}; {DASH if decode is None else decode}"
    compile_cell = DASH
    if compiled and compiled.get("compiled"):
        first = next((v for k, v in compiled.items() if isinstance(v, dict)), None)
        if first:
            compile_cell = f"{first['fps']:g} frames/s ({first['speedup']:g}x, 1st call {first['first_call_s']:g} s)"
    return [
        engine,
        model,
        speedup,
        _cell(_get(bench, "render", "fps")),
        _cell(_get(bench, "live", "streams_at_25fps")),
        _memory(_get(bench, "memory_peak")),
        _cell(_get(e2e, "cold_start", "to_first_frame_s")),
        f"{warm['real_time_factor']:g} ({warm['video_s']:g} s clip)" if warm else DASH,
        split,
        compile_cell,
    ]


def table(results: dict[str, Any]) -> str:
    ran = results["ran"]
    lines = [
        f"# bench/gpu.sh: {ran['where']}",
        "",
        f"profile `{ran['profile']}`, {ran['finished']}, {ran['seconds']:.0f} s; torch {ran['torch']}, "
        f"python {ran['python']}",
    ]
    tests = results["sections"].get("cuda_tests", {}).get("result")
    if tests:
        lines.append(f"CUDA tests (`pytest -m cuda`): {tests['summary']}")
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for engine in ran["engines"]:
        lines.append("| " + " | ".join(engine_row(results, engine)) + " |")
    papers = [f"{e}: {p}" for e, p in ran.get("papers", {}).items()]
    lines += ["", "Published figures (other hardware, for comparison only): " + "; ".join(papers)]
    failed = {name: s for name, s in results["sections"].items() if s.get("status") != "ok"}
    if failed:
        lines += ["", "Sections that did not finish (their figures so far are in the table):"]
        lines += [f"- `{name}`: {s['status']}: {s.get('error', '')}".rstrip(": ") for name, s in failed.items()]
    steps = [(name, step, why) for name, s in results["sections"].items() for step, why in _errors(s).items()]
    if steps:
        lines += ["", "Steps that did not finish:"] + [f"- `{name}` {step}: {why}" for name, step, why in steps]
    return "\n".join(lines) + "\n"
