"""The labels stage with a tiny, randomly initialised 24-class classifier (no downloads)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers_corpus import build_classifier, make_config, make_records, write_config, write_records

from capatlas import cli
from capatlas.corpus.readers import LabelResolver, file_key, iter_records
from capatlas.errors import CapatlasError
from capatlas.corpus.labels import classifier_input, classify_texts, label_file, load_classifier
from capatlas.taxonomy import TOPIC


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return build_classifier(tmp_path_factory.mktemp("format_classifier"))


def classifier_config(tokenizer, model, paths, facets=("format",), **extra):
    labels = {
        "topic": {"source": "field", "field": "metadata.weborganizer.topic"},
        "format": {"source": "field", "field": "metadata.weborganizer.format"},
    }
    for facet in facets:
        labels[facet] = {"source": "classifier", "model": str(model)}
    return make_config(
        tokenizer,
        paths,
        corpus={
            "paths": paths,
            "labels": labels,
            "classifier": {"batch_size": 4, "max_length": 32, "device": "auto", "input_template": "{url}\n\n{text}"},
        },
        **extra,
    )


def test_classify_texts_is_batch_independent(classifier_dir):
    model, tokenizer = load_classifier(str(classifier_dir), trust_remote_code=False, device="cpu")
    texts = [r["text"] for r in make_records(30, seed=1)]
    ids_a, probs_a = classify_texts(model, tokenizer, texts, batch_size=3, max_length=32)
    ids_b, probs_b = classify_texts(model, tokenizer, texts, batch_size=64, max_length=32)
    assert ids_a.shape == (30,) and probs_a.dtype == np.float32
    assert ((ids_a >= 0) & (ids_a < 24)).all()
    assert ((probs_a >= 1 / 24 - 1e-6) & (probs_a <= 1)).all()
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_allclose(probs_a, probs_b, atol=1e-5)
    assert len(set(ids_a.tolist())) > 1
    empty_ids, empty_probs = classify_texts(model, tokenizer, [], batch_size=3, max_length=32)
    assert len(empty_ids) == 0 and len(empty_probs) == 0


def test_wrong_label_count_names_the_model_dir(tmp_path):
    bad = build_classifier(tmp_path / "bad", num_labels=5)
    with pytest.raises(CapatlasError, match="has 5 labels") as info:
        load_classifier(str(bad), trust_remote_code=False)
    assert str(bad) in str(info.value)
    with pytest.raises(CapatlasError, match="does not exist"):
        load_classifier(str(tmp_path / "nowhere"))


def test_input_template_fills_url_and_text():
    from capatlas.corpus.readers import CorpusRecord

    rec = CorpusRecord("f", 0, 1, "d", "body {x}", {"metadata": {"url": "http://u"}})
    assert classifier_input("{url}\n\n{text}", rec) == "http://u\n\nbody {x}"
    assert classifier_input("{text}", CorpusRecord("f", 0, 1, "d", "t", {})) == "t"


def test_labels_cli_end_to_end_and_path_plus_classifier(tmp_path, classifier_dir, capsys):
    # Topic from the Dolma 3 directory, format from the classifier.
    corpus = write_records(tmp_path / "data" / "common_crawl-religion-0016" / "part.jsonl.zst", make_records(11))
    labels_out = tmp_path / "labels" / f"{file_key(corpus)}.parquet"
    config = classifier_config(classifier_dir, classifier_dir, [str(corpus)])
    config["corpus"]["labels"]["topic"] = {"source": "path", "field": "", "sidecar": "", "model": ""}
    config_path = write_config(tmp_path / "config.yaml", config)
    code = cli.main(["labels", "--config", str(config_path), "--file", str(corpus), "--out", str(labels_out)])
    assert code == 0, capsys.readouterr().err
    table = pq.read_table(labels_out)
    assert table.column_names == ["row", "doc_id", "format_id", "format_prob"]
    assert table.column("row").to_pylist() == list(range(11))
    assert table.column("doc_id").to_pylist() == [f"doc-{i:05d}" for i in range(11)]

    # The same ids as classifying the rendered inputs directly.
    model, tokenizer = load_classifier(str(classifier_dir), trust_remote_code=False)
    texts = [classifier_input("{url}\n\n{text}", rec) for rec in iter_records(corpus)]
    ids, _ = classify_texts(model, tokenizer, texts, batch_size=4, max_length=32)
    assert table.column("format_id").to_pylist() == ids.tolist()

    resolver = LabelResolver.from_config(config, labels_dir=tmp_path / "labels")
    labels = resolver.for_file(corpus)
    got = [labels(rec) for rec in iter_records(corpus)]
    labels.finish(11)
    religion = TOPIC.resolve("religion")
    assert got == [(religion, int(f)) for f in ids]
    assert not [p for p in labels_out.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_labels_for_both_facets(tmp_path, classifier_dir):
    corpus = write_records(tmp_path / "c.parquet", make_records(5))
    config = classifier_config(classifier_dir, classifier_dir, [str(corpus)], facets=("topic", "format"))
    out = tmp_path / "l.parquet"
    assert label_file(config, str(corpus), out) == 5
    table = pq.read_table(out)
    assert table.column_names == ["row", "doc_id", "topic_id", "topic_prob", "format_id", "format_prob"]
    resolver = LabelResolver.from_config(config, labels_files={str(corpus): str(out)})
    labels = resolver.for_file(corpus)
    got = [labels(rec) for rec in iter_records(corpus)]
    assert got == list(zip(table.column("topic_id").to_pylist(), table.column("format_id").to_pylist()))


def test_labels_errors_leave_no_output(tmp_path, classifier_dir, capsys):
    corpus = write_records(tmp_path / "c.jsonl", make_records(3))
    with open(corpus, "a") as handle:
        handle.write("{not json\n")
    config = classifier_config(classifier_dir, classifier_dir, [str(corpus)])
    config_path = write_config(tmp_path / "config.yaml", config)
    out = tmp_path / "labels" / "x.parquet"
    code = cli.main(["labels", "--config", str(config_path), "--file", str(corpus), "--out", str(out)])
    assert code == 2
    assert f"file {corpus}, line 4: malformed JSON" in capsys.readouterr().err
    assert not out.exists()
    assert not (out.parent.exists() and list(out.parent.iterdir()))
    no_classifier = make_config(classifier_dir, [str(corpus)])
    with pytest.raises(CapatlasError, match="nothing to label"):
        label_file(no_classifier, str(corpus), out)


def test_adding_a_corpus_file_rescans_only_its_group(tmp_path, classifier_dir, repo_root, venv_bin):
    """Scan groups end where a file name hashes to 0: a new file reruns its own group's (GPU) scan, not every group."""
    import subprocess

    from capatlas.corpus.readers import scan_groups

    files = [
        write_records(tmp_path / "data" / f"common_crawl-religion-{k:04d}" / "part.jsonl.zst", make_records(3))
        for k in range(10)
    ]
    added = write_records(tmp_path / "data" / "common_crawl-religion-0004" / "more.jsonl.zst", make_records(3))
    config = classifier_config(classifier_dir, classifier_dir, [str(f) for f in files])
    config["corpus"]["labels"]["topic"] = {"source": "path", "field": "", "sidecar": "", "model": ""}
    config["manifest"] = {"files_per_scan": 3, "docs_per_bin": 1, "min_tokens": 1}
    config["run"] = "scan_only"
    config.pop("benchmarks", None)  # a corpus-only run

    def snakemake(paths, *extra):
        config["corpus"]["paths"] = [str(f) for f in paths]
        path = write_config(tmp_path / "config.yaml", config)
        return subprocess.run(
            [str(venv_bin / "snakemake"), "--snakefile", str(repo_root / "Snakefile"), "--directory", str(tmp_path),
             "--configfile", str(path), "--cores", "2", *extra, "results/scan_only/manifest/manifest.parquet"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    first = snakemake(files)
    assert first.returncode == 0, first.stderr[-3000:]
    before = scan_groups([str(f) for f in files], 3)
    after = scan_groups([str(f) for f in [*files, added]], 3)
    changed = {g for g in after if after[g] != before.get(g)}
    assert 1 <= len(changed) <= 2 < len(after), (before, after)
    planned = snakemake([*files, added], "-n")
    assert planned.returncode == 0, planned.stderr[-3000:]
    output = planned.stdout + planned.stderr
    assert output.count("rule manifest_scan:") == len(changed), output[-3000:]
    assert all(g in output for g in changed)


def test_classifier_precision_follows_the_device(classifier_dir):
    """`auto`: bf16 on a GPU, fp32 on a CPU; an explicit precision is used as given."""
    import torch

    from capatlas.corpus.labels import classifier_dtype

    assert classifier_dtype("auto", "cpu") == torch.float32
    assert classifier_dtype("auto", "cuda:1") == torch.bfloat16
    model, tokenizer = load_classifier(str(classifier_dir), trust_remote_code=False, precision="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    texts = [f"record {i} about rivers and courts" for i in range(6)]
    ids, probs = classify_texts(model, tokenizer, texts, batch_size=4, max_length=32)
    assert ids.shape == (6,) and probs.dtype == np.float32 and ((probs > 0) & (probs <= 1)).all()
