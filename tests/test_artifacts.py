"""The inter-stage file formats of capatlas/artifacts: round trips, integrity checks, and no torch in the light wings."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from capatlas.artifacts.bin_matrix import (
    BOOTSTRAP_FILE,
    MATRIX_FILE,
    check_scored_by_the_same_run,
    read_bin_matrix,
    read_bootstrap,
    read_influence_provenance,
    write_influence_files,
)
from capatlas.artifacts.binsums import ARRAYS, BenchmarkSums, BinSums, read_bin_sums, write_bin_sums
from capatlas.artifacts.scores import run_signature
from capatlas.artifacts.provenance import PROVENANCE_KEY, canonical_json, identity_differences, parquet_provenance
from capatlas.errors import CapatlasError
from capatlas.taxonomy import N_BINS


def _bin_sums(seed: int = 0) -> BinSums:
    rng = np.random.default_rng(seed)
    out = BinSums(provenance={"stage": "score-shard", "shard": {"path": "s.parquet"}})
    for name, q in (("a", 3), ("b", 5)):
        out.benchmarks[name] = BenchmarkSums(
            item_ids=[f"{name}{i}" for i in range(q)],
            sum=rng.normal(size=(N_BINS, q)),
            sumsq=rng.normal(size=(N_BINS, q)) ** 2,
            count=rng.integers(0, 9, size=N_BINS),
            boot_sum=rng.normal(size=(4, N_BINS)),
            # Fortran order in memory: the writer must store the logical layout.
            boot_weight=np.asfortranarray(rng.integers(0, 9, size=(4, N_BINS)).astype(np.uint32)),
            joint_sum=rng.normal(size=(4, N_BINS)),
        )
    return out


def test_bin_sums_round_trip_and_lean_reads(tmp_path):
    written = _bin_sums()
    path = tmp_path / "shard-00000.safetensors"
    write_bin_sums(path, written)
    full = read_bin_sums(path)
    assert full.provenance == written.provenance and list(full.benchmarks) == ["a", "b"]
    for name, sums in written.benchmarks.items():
        assert full[name].item_ids == sums.item_ids
        for key in ARRAYS:
            np.testing.assert_array_equal(getattr(full[name], key), getattr(sums, key))
    lean = read_bin_sums(path, arrays=("sum", "count"))
    assert lean["a"].sumsq is None and lean["a"].boot_sum is None
    np.testing.assert_array_equal(lean["b"].count, written["b"].count)


def test_bin_sums_are_written_byte_for_byte_the_same(tmp_path):
    write_bin_sums(tmp_path / "one.safetensors", _bin_sums())
    write_bin_sums(tmp_path / "two.safetensors", _bin_sums())
    assert (tmp_path / "one.safetensors").read_bytes() == (tmp_path / "two.safetensors").read_bytes()


def test_a_flipped_bit_in_bin_sums_is_refused_naming_file_and_tensor(tmp_path):
    path = tmp_path / "shard-00003.safetensors"
    write_bin_sums(path, _bin_sums())
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10  # inside the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(CapatlasError, match=r"shard-00003\.safetensors: tensor \S+ does not match its recorded sha256"):
        read_bin_sums(path)


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_unreadable_bin_sums_name_the_file(tmp_path, damage):
    path = tmp_path / "shard-00001.safetensors"
    write_bin_sums(path, _bin_sums())
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    else:
        np.savez(path.with_suffix(".npz"), x=np.zeros(3))
        path.write_bytes(path.with_suffix(".npz").read_bytes())
    with pytest.raises(CapatlasError, match=r"shard-00001\.safetensors is not a readable bin-sums file"):
        read_bin_sums(path)


def _influence_files(out, provenance=None):
    rng = np.random.default_rng(1)
    matrix = pd.DataFrame(
        {"benchmark": ["a"] * N_BINS, "bin_id": np.arange(N_BINS), "n_docs": rng.integers(1, 9, N_BINS),
         "mean": rng.normal(size=N_BINS), "zscore": rng.normal(size=N_BINS), "label": ["x" * 40] * N_BINS}
    )  # fmt: skip
    marginals = pd.DataFrame({"benchmark": ["a"], "topic": ["t"], "z": [0.5]})
    provenance = provenance or {"stage": "influence", "attribution_run": {"identity": {"model": "m"}}}
    write_influence_files(
        out, matrix=matrix, topic_marginals=marginals, format_marginals=marginals, benchmarks=["a"],
        document_replicates=[rng.normal(size=(3, N_BINS))], query_replicates=[rng.normal(size=(3, N_BINS))],
        combined_replicates=[rng.normal(size=(3, N_BINS))],
        provenance=provenance,
    )  # fmt: skip
    return matrix


def test_bin_matrix_round_trip_and_its_bootstrap_belongs_to_it(tmp_path):
    matrix = _influence_files(tmp_path / "one")
    pd.testing.assert_frame_equal(read_bin_matrix(tmp_path / "one" / MATRIX_FILE), matrix)
    provenance = read_influence_provenance(tmp_path / "one" / MATRIX_FILE)
    assert read_bootstrap(tmp_path / "one" / BOOTSTRAP_FILE, provenance)["a"]["documents"].shape == (3, N_BINS)
    # Another job's replicates beside this matrix are refused, naming the file.
    _influence_files(tmp_path / "two", {"stage": "influence", "attribution_run": {"identity": {"model": "other"}}})
    with pytest.raises(CapatlasError, match=r"two/bin_bootstrap\.npz was written by another influence job"):
        read_bootstrap(tmp_path / "two" / BOOTSTRAP_FILE, provenance)


def test_a_damaged_or_foreign_bin_matrix_is_refused_naming_it(tmp_path):
    _influence_files(tmp_path)
    path = tmp_path / MATRIX_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x40  # inside a data page
    path.write_bytes(bytes(data))
    with pytest.raises(CapatlasError, match=r"bin_matrix\.parquet is corrupted or unreadable"):
        read_bin_matrix(path)
    # A parquet file with the columns but without an influence job's provenance.
    pd.DataFrame({c: [0] for c in ("benchmark", "bin_id", "n_docs", "mean", "zscore")}).to_parquet(path)
    with pytest.raises(CapatlasError, match=r"bin_matrix\.parquet carries no provenance"):
        read_bin_matrix(path)


def test_forget_sets_refuse_a_bin_matrix_of_another_attribution_run(tmp_path):
    score_provenance = {"stage": "score-shard", "identity": {"model": "m"}, "benchmarks": [{"name": "a", "n_queries": 3}]}
    signature = run_signature(score_provenance)
    _influence_files(tmp_path / "same", {"stage": "influence", "attribution_run": signature})
    check_scored_by_the_same_run(tmp_path / "same" / MATRIX_FILE, "scores/shard-00000.parquet", score_provenance)
    other = {**signature, "identity": {"model": "another"}}
    _influence_files(tmp_path / "other", {"stage": "influence", "attribution_run": other})
    with pytest.raises(CapatlasError, match=r"other/bin_matrix\.parquet was built from another attribution run than scores/shard-00000"):
        check_scored_by_the_same_run(tmp_path / "other" / MATRIX_FILE, "scores/shard-00000.parquet", score_provenance)


def test_provenance_checks_name_every_differing_key(tmp_path):
    expected = {"model": {"sha256": "a"}, "attribution": {"projection_dim": 16}}
    found = {"model": {"sha256": "b"}, "attribution": {"projection_dim": 16}}
    assert identity_differences(expected, found) == ["model.sha256 is 'b' there but 'a' in this job"]
    provenance = {"stage": "score-shard", "x": [1, 2]}
    metadata = {PROVENANCE_KEY: canonical_json(provenance).encode()}
    assert parquet_provenance(metadata, tmp_path / "s.parquet", produced_by="score-shard") == provenance
    with pytest.raises(CapatlasError, match=r"s\.parquet carries no provenance"):
        parquet_provenance({}, tmp_path / "s.parquet", produced_by="score-shard")
    assert json.loads(canonical_json({"b": 1, "a": 2})) == {"a": 2, "b": 1}


def test_analysis_and_artifacts_import_without_torch():
    # The analysis env has no torch: nothing these wings import at import time may pull it in.
    code = (
        "import sys, importlib, pkgutil\n"
        "import capatlas.analysis, capatlas.artifacts\n"
        "for pkg in (capatlas.analysis, capatlas.artifacts):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "heavy = sorted(n for n in ('torch', 'transformers', 'bergson') if n in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported at import time: {out.stdout.strip()}"


def test_a_killed_jobs_scratch_is_cleared_when_the_output_is_written_again(tmp_path):
    from capatlas.attribution.context import bergson_workdir

    output = tmp_path / "scores" / "shard-00003.parquet"
    output.parent.mkdir()
    stale = output.parent / ".shard-00003.parquet.bergson-999-deadbeef"
    (stale / "run").mkdir(parents=True)
    other = output.parent / ".shard-00004.parquet.bergson-999-deadbeef"
    other.mkdir()
    with bergson_workdir(output) as work:
        assert work.is_dir() and not stale.exists()
    assert not work.exists() and other.is_dir()  # another shard's scratch is that job's business


def test_a_models_identity_ignores_the_demo_training_summary(tmp_path, monkeypatch):
    # train_summary.json records wall-clock timings: counted, every run of the same model had another identity.
    from capatlas.attribution import context
    from capatlas.attribution.context import model_info

    monkeypatch.setattr(context, "_model_max_length", lambda directory, revision: 64)  # no tokenizer needed here

    (tmp_path / "config.json").write_text('{"max_position_embeddings": 64}')
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "train_summary.json").write_text('{"seconds": {"train": 1.0}}')
    first = model_info(tmp_path).sha256
    (tmp_path / "train_summary.json").write_text('{"seconds": {"train": 2.0}}')
    assert model_info(tmp_path).sha256 == first
    (tmp_path / "model.safetensors").write_bytes(b"weights, retrained")
    assert model_info(tmp_path).sha256 != first


def test_one_shard_reader_checks_what_its_readers_rely_on(tmp_path):
    """artifacts.shards.read_shard serves the preconditioner, score jobs, forget sets and atlas."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from capatlas.artifacts.shards import read_shard
    from capatlas.errors import CapatlasError

    good = tmp_path / "shard-00000.parquet"
    pq.write_table(pa.table({"doc_id": ["a", "b", "c"], "bin_id": pa.array([1, 575, 2], pa.int32()),
                             "n_tokens": [3, 4, 5], "text": ["x", "y", "z"]}), good)  # fmt: skip
    assert read_shard(good).column_names == ["doc_id", "bin_id", "text"]
    assert read_shard(good, doc_ids={"c", "a", "elsewhere"}).column("doc_id").to_pylist() == ["a", "c"]
    assert read_shard(good, ["doc_id"], doc_ids=[]).num_rows == 0
    cases = {
        "missing.parquet": (None, "does not exist: run `capatlas shard` first"),
        "notparquet.parquet": (b"not a parquet file", "is not a readable parquet file"),
        "nocolumn.parquet": (pa.table({"doc_id": ["a"], "text": ["x"]}), r"lacks column\(s\) bin_id"),
        "null.parquet": (pa.table({"doc_id": ["a"], "bin_id": pa.array([None], pa.int32()), "text": ["x"]}),
                         "missing values in column 'bin_id'"),
        "badbin.parquet": (pa.table({"doc_id": ["a", "q"], "bin_id": pa.array([0, 576], pa.int32()), "text": ["x", "y"]}),
                           r"document 'q' has bin_id 576, outside 0..575"),
    }  # fmt: skip
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            pq.write_table(content, path)
        with pytest.raises(CapatlasError, match=message):
            read_shard(path)
