"""Resumable batch "everything mode": one SA-1B annotation JSON (and optionally an overlay PNG) per input image.

The runner is built so that a run killed at any moment (SIGKILL included) and restarted ends with exactly the
files of an uninterrupted run, and so that no input is ever silently dropped:

* **Deterministic identity.** Each input has a *key*: its path relative to the input directory (or to the list
  file's directory), in POSIX form. Its outputs go to ``OUT/<key's parent>/<name>.<h>.json`` and
  ``.../<name>.<h>.overlay.png`` where ``<name>`` is the input's file name and ``<h>`` is the first 12 hex digits
  of ``sha256(job fingerprint, key, sha256(input bytes))``. The job fingerprint is the SHA-256 of ``job.json``:
  format version, segany version, model kind, SHA-256 of the model weights, device type, torch thread count
  (CPU scores differ in the last bits between thread counts) and the fully resolved generator parameters. Same
  input, same job: same name and same bytes, so redoing an item is harmless. An input that is not inside that
  directory (``../x.jpg`` or an absolute path in a list) is written to ``OUT/`` itself. Byte-identity holds for
  the same segany code on the same kind of CPU; an edit of segany that keeps its version number is not noticed.
* **Atomic publish.** Every file is written to a hidden temp file in its final directory, flushed and fsynced,
  renamed over the final name with ``os.replace`` and the directory fsynced. Readers never see a partial file;
  a crash leaves only ``.*.segany-tmp`` files, which the next run deletes.
* **Completion is a fact on disk.** An input is done when its JSON exists, parses as SA-1B and names the expected
  image id (and, with ``--overlay``, its PNG exists; the PNG is published before the JSON). Nothing else (no
  cursor, no log) is trusted on resume.
* **Poison inputs are data.** An input that cannot be read, decoded or segmented becomes a record in
  ``failures.jsonl`` (``input``, ``sha256``, ``error`` class, ``message``; sorted by input; rewritten atomically);
  failed inputs are retried on the next run. At the end every input must be either done or recorded as failed
  (``summary.json``); a gap is a hard error.
* **One run per directory.** ``OUT/.segany-auto.lock`` is held (``flock``) for the whole run, and ``job.json``
  pins the job: resuming into a directory made with other weights or parameters is refused.

Exit codes of ``run_job``'s summary (``BatchSummary.exit_code``): 0 every input done, 1 some inputs failed (all
recorded), 3 reconciliation gap (an input is neither done nor recorded: a bug or outside interference).

Engines: ``LocalEngine`` (this module) runs the model in-process; ``segany.batch_ray.RayEngine`` spreads the same
work over Ray actors. Both only *compute* (bytes in, bytes out); the driver alone reads inputs and writes outputs,
so both engines produce identical files and Ray workers need no shared storage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import inspect
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

FORMAT_VERSION = "segany-auto/1"
TMP_SUFFIX = ".segany-tmp"
LOCK_NAME = ".segany-auto.lock"
JOB_NAME = "job.json"
FAILURES_NAME = "failures.jsonl"
SUMMARY_NAME = "summary.json"
LIST_SUFFIXES = (".txt", ".lst", ".list")
# Generator parameters that cannot be expressed in JSON / on the command line, or that the runner fixes itself.
_NOT_CONFIGURABLE = ("self", "model", "point_grids", "output_mode")

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_GAP = 3


class BatchError(RuntimeError):
    """The run cannot start or continue (locked or foreign output directory, unusable input spec, ...)."""


# ----------------------------------------------------------------------------------------------------------------
# Atomic files


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> None:
    """Create ``path`` and missing parents, fsyncing each new directory's parent so the entry is durable."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        _fsync_dir(d.parent)


def atomic_write(path: Path, data: bytes) -> None:
    """Publish ``data`` at ``path`` all-or-nothing: temp file in the same dir, fsync, ``os.replace``, fsync dir.

    The temp file is in the destination directory because a rename is only atomic within one filesystem.
    """
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def remove_stale_temp_files(root: Path) -> int:
    """Delete temp files left by a crashed run under ``root``; returns how many were removed."""
    removed = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if name.startswith(".") and name.endswith(TMP_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
    return removed


@contextlib.contextmanager
def directory_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``out_dir`` for the run (released by the kernel even on SIGKILL)."""
    fd = os.open(out_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BatchError(f"another segany auto run is using {out_dir}") from None
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class InputItem:
    """One input image: ``key`` names it in outputs and records, ``path`` is where the driver reads it."""

    key: str
    path: Path


def discover_inputs(source: Path, exclude: Path | None = None) -> list[InputItem]:
    """List the inputs named by ``source``, sorted by key.

    * a directory: every non-hidden regular file below it (recursively, symlinks followed), whatever its
      extension, so that nothing is skipped silently: files that are not supported images become failure
      records. ``exclude`` (the output directory, if it lies inside) is skipped.
    * a ``.txt``/``.lst``/``.list`` file: one path per line (blank lines and ``#`` comments ignored), relative
      paths taken from the list file's directory. Duplicate keys are rejected.
    * any other file: that single image.
    """
    source = Path(source)
    if source.is_dir():
        root = source.resolve()
        excluded = exclude.resolve() if exclude is not None else None
        items = []
        visited: set[Path] = set()  # real directories seen: a symlink loop must not recurse forever
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            d = Path(dirpath)
            visited.add(d.resolve())
            dirnames[:] = sorted(
                n
                for n in dirnames
                if not n.startswith(".")
                and (d / n).resolve() not in visited
                and (d / n).resolve() != excluded
            )
            for name in filenames:
                if name.startswith("."):
                    continue
                p = d / name
                if p.is_file():
                    items.append(InputItem(p.relative_to(root).as_posix(), p))
        return sorted(items, key=lambda it: it.key)
    if not source.is_file():
        raise BatchError(f"input {source} is neither a directory nor a file")
    if source.suffix.lower() not in LIST_SUFFIXES:
        return [InputItem(source.name, source.resolve())]
    base = source.resolve().parent
    items = []
    seen: set[str] = set()
    for line in source.read_text(encoding="utf-8").splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = (base / entry).resolve()
        try:
            key = path.relative_to(base).as_posix()
        except ValueError:
            key = entry  # outside the list's directory: keep the entry as written (outputs go to OUT/)
        if key in seen:
            raise BatchError(f"{source}: input {entry!r} is listed twice")
        seen.add(key)
        items.append(InputItem(key, path))
    return sorted(items, key=lambda it: it.key)


# ----------------------------------------------------------------------------------------------------------------
# Job identity


@dataclass(frozen=True)
class ModelSpec:
    """Which model to build and how to run it; every worker builds it itself from this (so a checkpoint path
    must exist on every worker). ``threads``: torch intra-op threads (``None``: the engine's default)."""

    kind: str
    checkpoint: str | None = None
    device: str = "cpu"
    threads: int | None = None


@dataclass(frozen=True)
class Runtime:
    """Facts about the loaded model that the output bytes depend on; every worker of a job must agree.

    CPU kernels split reductions by thread count, so scores can differ in the last bits between 1 and 2 threads:
    the thread count is part of the job like the weights are.
    """

    weights_sha256: str
    device_type: str
    torch_threads: int


def model_runtime(model: Any, spec: ModelSpec) -> Runtime:
    import torch

    return Runtime(weights_sha256(model), spec.device.split(":")[0], torch.get_num_threads())


def generator_class() -> type:
    from segany.automatic import SamAutomaticMaskGenerator

    return SamAutomaticMaskGenerator


def generator_presets() -> Mapping[str, Mapping[str, Any]]:
    from segany.automatic import SA1B_PRESET

    return {"sa1b": SA1B_PRESET}


def resolve_generator_kwargs(preset: str | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """All generator parameters, explicit: signature defaults, then the preset, then ``overrides``.

    Resolving every parameter makes the job fingerprint independent of how a value was given (default, preset
    or flag). ``output_mode`` is always ``coco_rle`` (what SA-1B files hold).
    """
    params = inspect.signature(generator_class()).parameters
    kwargs: dict[str, Any] = {
        name: p.default
        for name, p in params.items()
        if name not in _NOT_CONFIGURABLE and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    if preset is not None:
        presets = generator_presets()
        if preset not in presets:
            raise BatchError(f"unknown preset {preset!r}; known: {sorted(presets)}")
        kwargs.update(presets[preset])
    for name, value in overrides.items():
        if name not in kwargs:
            raise BatchError(f"unknown generator parameter {name!r}")
        kwargs[name] = value
    for name in _NOT_CONFIGURABLE:
        kwargs.pop(name, None)
    missing = [k for k, v in kwargs.items() if v is inspect.Parameter.empty]
    if missing:
        raise BatchError(f"generator parameters without a value: {missing}")
    return kwargs


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def weights_sha256(model: Any) -> str:
    """SHA-256 over the model's state dict (names, dtypes, shapes, raw bytes): identifies the weights exactly,
    however they were obtained (checkpoint file, seeded random init)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def job_record(model: ModelSpec, runtime: Runtime, generator_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """What ``job.json`` holds: everything the output bytes depend on (and nothing they don't, e.g. paths)."""
    import segany

    return {
        "format": FORMAT_VERSION,
        "segany_version": segany.__version__,
        "model": model.kind,
        **dataclasses.asdict(runtime),
        "generator": dict(sorted(generator_kwargs.items())),
    }


# ----------------------------------------------------------------------------------------------------------------
# Per-item work (runs on the driver for the local engine, in Ray actors for the Ray engine)


@dataclass(frozen=True)
class Payload:
    """Everything a worker needs for one image, so that workers never touch the driver's files."""

    key: str
    image_id: int
    data: bytes
    annotation: bytes | None = None  # existing SA-1B JSON: only the overlay is missing
    overlay: bool = False


@dataclass(frozen=True)
class ItemResult:
    """A worker's answer: output bytes, or an error class and message (a failure record)."""

    key: str
    annotation: bytes | None = None
    overlay: bytes | None = None
    error: str | None = None
    message: str | None = None
    worker: str = ""
    # set when the image was segmented but yielded no mask: why (which filter removed every candidate)
    note: str | None = None


def load_model(spec: ModelSpec) -> Any:
    """Build the model of ``spec`` in eval mode on its device.

    Models without a checkpoint get seeded random weights (seed 0, without disturbing the caller's RNG), so that
    every worker of a job builds the same weights; the weights fingerprint checks that they did.
    """
    import torch

    from segany.build import load_model as build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_model(spec.kind, spec.checkpoint, spec.device)


def annotation_bytes(image_id: int, file_name: str, width: int, height: int, records: list[dict]) -> bytes:
    """Serialise one image's generator records as an SA-1B annotation file (the layout ``write_sa1b`` writes)."""
    from segany.data.sa1b import records_to_sa1b

    doc = records_to_sa1b(records, image_id=image_id, file_name=file_name, height=height, width=width)
    return json.dumps(doc.to_dict(), separators=(",", ":")).encode()


def read_annotation(data: bytes) -> Any:
    """Parse and validate SA-1B annotation bytes into an ``SA1BFile`` (raises on anything malformed)."""
    from segany.data.sa1b import sa1b_from_dict

    return sa1b_from_dict(json.loads(data))


def process_payload(payload: Payload, generator: Any, worker: str = "") -> ItemResult:
    """Decode, segment and encode one image. Errors become a failed ``ItemResult``, never an exception."""
    from segany.images import load_image
    from segany.overlay import encode_png, render_overlay

    try:
        image = load_image(payload.data, name=payload.key)
        note = None
        if payload.annotation is None:
            records = generator.generate(image)
            if not records:
                explain = getattr(generator, "explain_empty", None)
                note = (explain() if explain is not None else "") or "the generator returned no mask"
            annotation: bytes | None = annotation_bytes(
                payload.image_id, payload.key, image.shape[1], image.shape[0], records
            )
            masks = [r["segmentation"] for r in records]
        else:
            annotation = None
            masks = [a.segmentation for a in read_annotation(payload.annotation).annotations]
        png = encode_png(render_overlay(image, masks)) if payload.overlay else None
    except Exception as exc:  # poison inputs are data: the driver records them and carries on
        return ItemResult(payload.key, error=type(exc).__name__, message=str(exc)[:2000], worker=worker)
    return ItemResult(payload.key, annotation=annotation, overlay=png, worker=worker, note=note)


# ----------------------------------------------------------------------------------------------------------------
# Engines


class Engine(Protocol):
    """Computes ``ItemResult``s for payloads; knows nothing about files."""

    def start(self) -> Runtime:
        """Load the model(s); return what the outputs depend on (all workers must agree)."""
        ...

    def run(self, payloads: Iterable[Payload]) -> Iterator[ItemResult]:
        """Yield one result per payload, in any order."""
        ...

    def close(self) -> None: ...


class LocalEngine:
    """Runs the generator in this process, one image at a time."""

    def __init__(self, model: ModelSpec, generator_kwargs: Mapping[str, Any]) -> None:
        self.model_spec = model
        self.generator_kwargs = dict(generator_kwargs)
        self._generator: Any = None
        self._saved_threads: int | None = None

    def start(self) -> Runtime:
        import torch

        if self.model_spec.threads is not None:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.model_spec.threads)
        model = load_model(self.model_spec)
        self._generator = generator_class()(model, output_mode="coco_rle", **self.generator_kwargs)
        return model_runtime(model, self.model_spec)

    def run(self, payloads: Iterable[Payload]) -> Iterator[ItemResult]:
        worker = f"local:{os.getpid()}"
        for payload in payloads:
            yield process_payload(payload, self._generator, worker)

    def close(self) -> None:
        self._generator = None
        if self._saved_threads is not None:
            import torch

            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None


# ----------------------------------------------------------------------------------------------------------------
# Driver


@dataclass(frozen=True)
class Target:
    """An input with its identity and its output paths."""

    item: InputItem
    sha256: str
    digest: str  # sha256(job fingerprint, key, content sha256)
    json_path: Path
    overlay_path: Path

    @property
    def image_id(self) -> int:
        return int(self.digest[:12], 16)  # 48 bits: exact in JSON doubles


@dataclass
class BatchSummary:
    inputs: int = 0
    done: int = 0
    failed: int = 0
    missing: list[str] = field(default_factory=list)
    processed_this_run: int = 0
    skipped_done: int = 0
    out_dir: str = ""
    # images segmented in this run that yielded no mask, with the reason (`explain_empty`)
    no_masks: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.missing or self.inputs != self.done + self.failed:
            return EXIT_GAP
        return EXIT_FAILURES if self.failed else EXIT_OK


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _target_for(item: InputItem, content_sha: str, job_fp: str, out_dir: Path) -> Target:
    digest = hashlib.sha256(f"{job_fp}\0{item.key}\0{content_sha}".encode()).hexdigest()
    rel = PurePosixPath(item.key)
    inside = not rel.is_absolute() and ".." not in rel.parts
    folder = out_dir.joinpath(*rel.parent.parts) if inside else out_dir
    stem = f"{rel.name}.{digest[:12]}"
    return Target(item, content_sha, digest, folder / f"{stem}.json", folder / f"{stem}.overlay.png")


def is_done(target: Target, overlay: bool) -> bool:
    """``True`` if the target's published JSON validates (and its overlay exists when wanted)."""
    if _valid_annotation(target) is None:
        return False
    return not overlay or target.overlay_path.is_file()


class _Failures:
    """``failures.jsonl``: one record per failed input, sorted, rewritten atomically on every change."""

    def __init__(self, path: Path, keys: set[str]) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    rec = json.loads(line)
                    if rec["input"] in keys:
                        self.records[rec["input"]] = rec
        self._written = self._serialise() if path.is_file() else None

    def _serialise(self) -> bytes:
        return b"".join(canonical_json(self.records[k]) + b"\n" for k in sorted(self.records))

    def set(self, key: str, sha: str | None, error: str, message: str) -> None:
        self.records[key] = {"input": key, "sha256": sha, "error": error, "message": message}

    def clear(self, key: str) -> None:
        self.records.pop(key, None)

    def flush(self) -> None:
        data = self._serialise()
        if data != self._written:
            atomic_write(self.path, data)
            self._written = data


@dataclass
class BatchOptions:
    input: Path
    out_dir: Path
    model: ModelSpec
    generator_kwargs: dict[str, Any]
    overlay: bool = False


def run_job(
    options: BatchOptions,
    engine: Engine,
    progress: Callable[[int, int], Any] | None = None,
    on_result: Callable[[ItemResult], Any] | None = None,
) -> BatchSummary:
    """Run (or resume) a batch job; see the module docstring for the guarantees.

    Arguments:
        options: what to process and where.
        engine: computes the results (``LocalEngine`` or ``segany.batch_ray.RayEngine``); started and closed here.
        progress: optional ``factory(total, initial)`` returning an object with ``update(n)`` and ``close()``
            (e.g. ``tqdm``), for a progress bar.
        on_result: called after each result is published (tests use it to inject faults mid-run).
    """
    out_dir = Path(options.out_dir)
    ensure_dir(out_dir)
    with directory_lock(out_dir):
        remove_stale_temp_files(out_dir)
        items = discover_inputs(Path(options.input), exclude=out_dir)
        keys = {it.key for it in items}
        if len(keys) != len(items):
            raise BatchError("two inputs share a key")
        failures = _Failures(out_dir / FAILURES_NAME, keys)
        try:
            job = job_record(options.model, engine.start(), options.generator_kwargs)
            job_bytes = json.dumps(job, sort_keys=True, indent=2).encode() + b"\n"
            job_path = out_dir / JOB_NAME
            if job_path.is_file():
                if job_path.read_bytes() != job_bytes:
                    raise BatchError(_job_mismatch(job_path, job))
            else:
                atomic_write(job_path, job_bytes)
            job_fp = hashlib.sha256(job_bytes).hexdigest()

            summary = BatchSummary(inputs=len(items), out_dir=str(out_dir))
            targets: dict[str, Target] = {}
            pending: list[Target] = []
            for item in items:
                try:
                    sha = _sha256_file(item.path)
                except OSError as exc:
                    failures.set(item.key, None, type(exc).__name__, str(exc))
                    continue
                target = _target_for(item, sha, job_fp, out_dir)
                targets[item.key] = target
                if is_done(target, options.overlay):
                    failures.clear(item.key)
                    summary.skipped_done += 1
                else:
                    pending.append(target)
            failures.flush()

            bar = progress(len(items), len(items) - len(pending)) if progress else None
            results = engine.run(_payloads(pending, options.overlay, failures, bar))
            for result in results:
                _publish(targets[result.key], result, failures)
                summary.processed_this_run += 1
                if result.error is None and result.note:
                    summary.no_masks[result.key] = result.note
                if bar is not None:
                    bar.update(1)
                if on_result is not None:
                    on_result(result)
            if bar is not None:
                bar.close()
        finally:
            engine.close()

        for item in items:
            found = targets.get(item.key)
            if found is not None and is_done(found, options.overlay):
                summary.done += 1
            elif item.key in failures.records:
                summary.failed += 1
            else:
                summary.missing.append(item.key)
        summary_doc = {
            "inputs": summary.inputs,
            "done": summary.done,
            "failed": summary.failed,
            "missing": summary.missing,
            "job_sha256": job_fp,
        }
        atomic_write(
            out_dir / SUMMARY_NAME, json.dumps(summary_doc, sort_keys=True, indent=2).encode() + b"\n"
        )
        return summary


def _job_mismatch(job_path: Path, job: dict[str, Any]) -> str:
    try:
        old = json.loads(job_path.read_bytes())
    except ValueError:
        old = {}
    flat_old = {**old, **{f"generator.{k}": v for k, v in old.get("generator", {}).items()}}
    flat_new = {**job, **{f"generator.{k}": v for k, v in job["generator"].items()}}
    diffs = [
        f"{k}: {flat_old.get(k)!r} -> {flat_new.get(k)!r}"
        for k in sorted(set(flat_old) | set(flat_new))
        if k != "generator" and flat_old.get(k) != flat_new.get(k)
    ]
    return (
        f"{job_path.parent} holds outputs of another job ({'; '.join(diffs) or 'format differs'}); "
        "resume with the job's settings (e.g. --threads) or use a new output directory"
    )


def _payloads(pending: list[Target], overlay: bool, failures: _Failures, bar: Any) -> Iterator[Payload]:
    """Read each pending input just before it is dispatched; inputs that vanished or changed become failures."""
    for t in pending:
        try:
            data = t.item.path.read_bytes()
        except OSError as exc:
            failures.set(t.item.key, t.sha256, type(exc).__name__, str(exc))
            failures.flush()
            if bar is not None:
                bar.update(1)
            continue
        if hashlib.sha256(data).hexdigest() != t.sha256:
            failures.set(t.item.key, t.sha256, "InputChanged", "input changed while the job was running")
            failures.flush()
            if bar is not None:
                bar.update(1)
            continue
        yield Payload(t.item.key, t.image_id, data, annotation=_valid_annotation(t), overlay=overlay)


def _valid_annotation(target: Target) -> bytes | None:
    """The target's published JSON if it is valid (then only its overlay is missing), else ``None``."""
    try:
        data = target.json_path.read_bytes()
        if read_annotation(data).image.image_id != target.image_id:
            return None
    except Exception:  # missing or unreadable: recompute everything
        return None
    return data


def _publish(target: Target, result: ItemResult, failures: _Failures) -> None:
    """Write a result's files (overlay first: the JSON marks completion) or record its failure."""
    key = target.item.key
    if result.error is not None:
        failures.set(key, target.sha256, result.error, result.message or "")
    else:
        if result.overlay is not None:
            atomic_write(target.overlay_path, result.overlay)
        if result.annotation is not None:
            atomic_write(target.json_path, result.annotation)
        failures.clear(key)
    failures.flush()
