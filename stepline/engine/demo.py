"""The demo pipeline's steps (jobs/codebase_classify.toml): real work
on a real directory, by default Stepline's own source."""

import ast
import json
import os
from collections import Counter, defaultdict
from pathlib import Path

from stepline.engine.context import StepContext, StepFailed

SKIP_DIRS = {".git", "__pycache__", ".venv", "venv", "node_modules", ".pytest_cache",
             ".ruff_cache", ".hypothesis", "stepline-work", "build", "dist"}
RULES = [  # (class, test on the relative path) — first match wins
    ("test", lambda p: p.name.startswith("test_") or "tests" in p.parts),
    ("template", lambda p: p.suffix in {".html", ".jinja", ".j2"}),
    ("vendored", lambda p: "vendor" in p.parts),
    ("source", lambda p: p.suffix in {".py", ".js", ".ts", ".go", ".rs", ".c", ".h", ".sh"}),
    ("style", lambda p: p.suffix in {".css", ".scss"}),
    ("docs", lambda p: p.suffix in {".md", ".rst", ".txt"} or p.name.startswith("LICENSE")),
    ("config", lambda p: p.suffix in {".toml", ".yaml", ".yml", ".json", ".ini", ".cfg"}
     or p.name.startswith(".")),
    ("data", lambda p: p.suffix in {".csv", ".db", ".sqlite", ".tsv"}),
]
STEPLINE_SOURCE = Path(__file__).resolve().parent.parent


def _root(path: str) -> Path:
    root = Path(path).expanduser() if path else STEPLINE_SOURCE
    if not root.is_dir():
        raise StepFailed(f"not a directory: {root}")
    return root.resolve()


def _read(ctx: StepContext, name: str):
    path = ctx.workdir / name
    if not path.exists():
        raise StepFailed(f"{name} is missing: did its step run?")
    return json.loads(path.read_text())


def import_files(ctx: StepContext, path: str = "", batch_size: int = 40) -> None:
    """Walk the tree and record every file (size, line count): one task per batch."""
    root = _root(path)
    ctx.log(f"walking {root}")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        found += [Path(dirpath, f) for f in sorted(filenames)]
    batches = [found[i:i + batch_size] for i in range(0, len(found), batch_size)]
    ctx.log(f"{len(found)} files in {len(batches)} batches")

    def record(batch: list[Path]) -> list[dict]:
        rows = []
        for file in batch:
            data = file.read_bytes()
            rows.append({"path": str(file.relative_to(root)), "bytes": len(data),
                         "lines": data.count(b"\n")})
        ctx.log(f"recorded {len(rows)} files, first {rows[0]['path']}")
        return rows

    result = ctx.spawn(batches, record, concurrency=4)
    files = [row for rows in result.results if rows for row in rows]
    (ctx.workdir / "files.json").write_text(json.dumps({"root": str(root), "files": files}))
    if result.failed:
        raise StepFailed(f"{len(result.failed)} batches failed")


def rule_classify_files(ctx: StepContext) -> None:
    """Give each recorded file a class by path and extension rules."""
    manifest = _read(ctx, "files.json")
    counts: Counter = Counter()
    for i, row in enumerate(manifest["files"], 1):
        path = Path(row["path"])
        row["class"] = next((name for name, test in RULES if test(path)), "other")
        counts[row["class"]] += 1
        ctx.log(f"{row['path']}: {row['class']}", "debug")
        ctx.progress(i, len(manifest["files"]))
    for name, n in counts.most_common():
        ctx.log(f"{name}: {n} files")
    (ctx.workdir / "classes.json").write_text(json.dumps(manifest))


def code_map(ctx: StepContext) -> None:
    """Per directory: files, lines, and Python classes and functions (via ast)."""
    manifest = _read(ctx, "files.json")
    root = Path(manifest["root"])
    by_dir: dict[str, list[dict]] = defaultdict(list)
    for row in manifest["files"]:
        by_dir[str(Path(row["path"]).parent)].append(row)

    def map_dir(item: tuple[str, list[dict]]) -> dict:
        directory, rows = item
        entry = {"dir": directory, "files": len(rows), "lines": sum(r["lines"] for r in rows),
                 "classes": 0, "functions": 0}
        for row in rows:
            if not row["path"].endswith(".py"):
                continue
            try:
                tree = ast.parse((root / row["path"]).read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError) as exc:
                ctx.log(f"{row['path']}: cannot parse: {exc}", "warn")
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    entry["classes"] += 1
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    entry["functions"] += 1
        ctx.log(f"{directory}/: {entry['files']} files, {entry['lines']} lines, "
                f"{entry['classes']} classes, {entry['functions']} functions")
        return entry

    result = ctx.spawn(sorted(by_dir.items()), map_dir, concurrency=4)
    (ctx.workdir / "code_map.json").write_text(json.dumps(result.results))


def report(ctx: StepContext) -> None:
    """Summarise what the other steps found (runs even if one failed)."""
    for name in ("classes.json", "code_map.json"):
        if not (ctx.workdir / name).exists():
            ctx.log(f"{name} missing: its step did not finish", "warn")
    if (ctx.workdir / "classes.json").exists():
        counts = Counter(r["class"] for r in _read(ctx, "classes.json")["files"])
        ctx.log("files by class: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    if (ctx.workdir / "code_map.json").exists():
        dirs = _read(ctx, "code_map.json")
        ctx.log(f"{sum(d['lines'] for d in dirs)} lines in {len(dirs)} directories, "
                f"{sum(d['classes'] for d in dirs)} classes, "
                f"{sum(d['functions'] for d in dirs)} functions")
