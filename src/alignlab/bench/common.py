"""What every benchmark returns: a name and rows of (case, value, target, ok, detail), printed alike. A value is
a ratio measured side by side in one run, or an absolute reading with its unit ("s", "tok/s", "MB"; no target)."""

from __future__ import annotations


def row(case: str, value: float, target: float | None, detail: str = "", higher_is_better: bool = False,
        unit: str = "x") -> dict:
    ok = None if target is None else (value >= target if higher_is_better else value <= target)
    return {"case": case, "value": value, "unit": unit, "target": target, "ok": ok, "detail": detail,
            "direction": "≥" if higher_is_better else "≤"}


def verdict(r: dict) -> str:
    return "" if r["ok"] is None else ("ok" if r["ok"] else "MISSED")


def fmt_value(r: dict) -> str:
    return f"{r['value']:.3f}" if r["unit"] == "x" else f"{r['value']:.1f} {r['unit']}"


def fmt_target(r: dict) -> str:
    return "" if r["target"] is None else f"{r['direction']} {r['target']:.3f}"


def print_result(result: dict) -> None:
    print(result["name"])
    for r in result["rows"]:
        print(f"  {r['case']:<44} {fmt_value(r):>9}  {fmt_target(r):<8} {verdict(r):<7} {r['detail']}")
