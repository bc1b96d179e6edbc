"""Config loading: both shipped configs validate, defaults fill, errors name keys."""

from __future__ import annotations

import re

import pytest
import yaml

from capatlas.config import _resolve, load_config, load_schema, validate_config
from capatlas.errors import CapatlasError


def schema_key_paths() -> list[str]:
    schema = load_schema()
    paths: list[str] = []

    def walk(node: dict, prefix: str) -> None:
        node = _resolve(node, schema)
        for key, sub in node.get("properties", {}).items():
            path = f"{prefix}.{key}" if prefix else key
            resolved = _resolve(sub, schema)
            if "properties" in resolved:
                # A section is documented through its keys.
                walk(resolved, path)
                continue
            paths.append(path)
            items = resolved.get("items")
            if resolved.get("type") == "array" and isinstance(items, dict):
                if "properties" in _resolve(items, schema):
                    walk(items, f"{path}[]")

    walk(schema, "")
    return paths


@pytest.mark.parametrize("name", ["config.yaml", "olmo3-7b.yaml"])
def test_shipped_configs_validate(repo_root, name):
    config = load_config(repo_root / "config" / name)
    assert config["seed"] == 42
    assert len(config["benchmarks"]) == 4
    cells = {(b["domain"], b["capability"]) for b in config["benchmarks"]}
    assert cells == {("social", "reasoning"), ("social", "knowledge"), ("stem", "reasoning"), ("stem", "knowledge")}


def test_paper_config_matches_the_study(repo_root):
    config = load_config(repo_root / "config" / "olmo3-7b.yaml")
    assert config["manifest"]["docs_per_bin"] == 10000
    assert config["manifest"]["min_tokens"] == 512
    assert config["models"]["document"]["path"].endswith("Olmo-3-1025-7B")
    assert config["models"]["query"]["path"].endswith("Olmo-3-7B-Instruct")
    assert config["resources"]["gpu"]["gpu"] == 1
    assert config["corpus"]["labels"]["topic"]["source"] == "path"


LABELS = {"labels": {"topic": {"field": "metadata.topic"}, "format": {"field": "metadata.format"}}}


def test_defaults_are_filled_recursively():
    config = validate_config({"demo": {"enabled": True}, "corpus": LABELS, "resources": {"gpu": {"threads": 3}}})
    assert config["manifest"]["docs_per_bin"] == 10000
    assert config["demo"]["model"]["hidden_size"] == 64
    assert config["corpus"]["labels"]["topic"]["source"] == "field"
    # A partial override of a resource family keeps that family's own defaults.
    assert config["resources"]["gpu"] == {"threads": 3, "mem_mb": 64000, "runtime": 240, "gpu": 1}


def test_benchmark_defaults_fill_inside_list_items():
    config = validate_config(
        {
            "demo": {"enabled": True},
            "corpus": LABELS,
            "benchmarks": [
                {"name": "arc", "domain": "stem", "capability": "reasoning", "loader": "arc", "source": "/x"}
            ],
        }
    )
    assert config["benchmarks"][0]["prompt_format"] == "olmes_rc"
    assert config["benchmarks"][0]["split"] == "test"


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"manifest": {"docs_per_bn": 5}}, "unknown config key 'manifest.docs_per_bn' (did you mean 'docs_per_bin'?)"),
        ({"sed": 1}, "unknown config key 'sed' (did you mean 'seed'?)"),
        ({"seed": "forty-two"}, "config key 'seed': 'forty-two' is not of type 'integer'"),
        ({"shards": {"count": 0}}, "config key 'shards.count'"),
        ({"manifest": {"allocation": "random"}}, "config key 'manifest.allocation'"),
        (
            {"benchmarks": [{"name": "x", "domain": "maths", "capability": "reasoning", "loader": "arc", "source": "s"}]},
            "config key 'benchmarks.0.domain'",
        ),
        ({"corpus": {"labels": {"topic": {"source": "field"}}}}, "corpus.labels.topic.field"),
        ({"corpus": {"labels": {"format": {"source": "path"}}}}, "carry only the topic"),
    ],
)
def test_bad_config_names_the_key(raw, message):
    raw = {"demo": {"enabled": True}, **raw}
    raw.setdefault("corpus", {}).setdefault("labels", {})
    for facet in ("topic", "format"):
        raw["corpus"]["labels"].setdefault(facet, {"source": "field", "field": f"metadata.{facet}"})
    with pytest.raises(CapatlasError) as info:
        validate_config(raw)
    assert message in str(info.value)


def test_real_corpus_needs_paths_and_model():
    with pytest.raises(CapatlasError, match="corpus.paths"):
        validate_config({"corpus": {"labels": {"topic": {"field": "t"}, "format": {"field": "f"}}}})
    with pytest.raises(CapatlasError, match="models.document.path"):
        validate_config(
            {"corpus": {"paths": ["x/*.jsonl"], "labels": {"topic": {"field": "t"}, "format": {"field": "f"}}}}
        )


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(CapatlasError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(CapatlasError, match=re.escape(str(bad))):
        load_config(bad)


def test_every_config_key_is_documented(repo_root):
    readme = (repo_root / "config" / "README.md").read_text()
    documented = set(re.findall(r"`([a-z_\[\]]+(?:\.[a-z_<>\[\]]+)*)`", readme))
    missing = []
    for path in schema_key_paths():
        facet_generic = re.sub(r"^corpus\.labels\.(topic|format)\.", "corpus.labels.<facet>.", path)
        if path not in documented and facet_generic not in documented:
            missing.append(path)
    assert missing == [], f"config keys missing from config/README.md: {missing}"


def test_check_config_cli_prints_defaults(repo_root, tmp_path, capsys):
    from capatlas.cli import main

    assert main(["check-config", "--config", str(repo_root / "config" / "config.yaml")]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["demo"]["enabled"] is True
    bad = tmp_path / "typo.yaml"
    bad.write_text("manifets: {}\n")
    assert main(["check-config", "--config", str(bad)]) == 2
    assert "unknown config key 'manifets'" in capsys.readouterr().err


def test_an_empty_benchmark_list_is_refused_where_a_user_wrote_it(repo_root, tmp_path, capsys):
    """Written by a user, `benchmarks: []` is a mistake; in a corpus-only run's resolved config it is the default."""
    from capatlas.cli import main

    config = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    config["benchmarks"] = []
    path = tmp_path / "empty.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["check-config", "--config", str(path)]) == 2
    assert "config key 'benchmarks' is an empty list" in capsys.readouterr().err
    del config["benchmarks"]
    resolved = validate_config(config)
    assert resolved["benchmarks"] == [] and validate_config(resolved) == resolved


def test_typed_sections_are_the_schemas():
    # capatlas.settings is generated from the schema; a schema edit without regenerating fails here.
    from capatlas import settings_schema

    assert settings_schema.OUT.read_text() == settings_schema.generate(), (
        "workflow/capatlas/settings.py is stale: run `python -m capatlas.settings_schema`"
    )


@pytest.mark.parametrize("name", ["config.yaml", "olmo3-7b.yaml"])
def test_typed_sections_read_the_shipped_configs(repo_root, name):
    from capatlas.settings import Settings

    config = load_config(repo_root / "config" / name)
    typed = Settings.of(config)
    # Every default the schema fills is the typed field's own default: one place for both.
    assert typed == Settings.of({k: v for k, v in config.items() if k in yaml.safe_load((repo_root / "config" / name).read_text())})
    assert typed.attribution.projection_dim == config["attribution"]["projection_dim"]
    assert [b.name for b in typed.benchmarks] == [b["name"] for b in config["benchmarks"]]
    assert typed.unlearning.forget.seeds == config["unlearning"]["forget"]["seeds"]


def test_typed_sections_fill_defaults_and_name_bad_keys():
    from capatlas.settings import Attribution, Benchmark, Unlearning

    assert Attribution.of({}).max_batch_size == _resolve(load_schema()["properties"]["attribution"], load_schema())[
        "properties"
    ]["max_batch_size"]["default"]
    entry = Benchmark.of({"name": "arc", "domain": "stem", "capability": "reasoning", "loader": "arc", "source": "s"})
    assert (entry.split, entry.prompt_format, entry.subject_header, entry.fewshot) == ("test", "olmes_rc", True, 0)
    assert Unlearning.of({"forget": {"n_docs": 3}}).forget.conditions == ["influence", "random"]
    with pytest.raises(CapatlasError, match=r"Unlearning\.forget: unknown key\(s\) 'n_doc'"):
        Unlearning.of({"forget": {"n_doc": 3}})
    with pytest.raises(CapatlasError, match=r"Benchmark: .*missing .*'source'"):
        Benchmark.of({"name": "arc", "domain": "stem", "capability": "reasoning", "loader": "arc"})


def test_a_guard_without_guard_items_is_refused_at_planning(repo_root):
    from capatlas.config import load_config

    paper = repo_root / "config" / "olmo3-7b.yaml"
    site = {"corpus": {"paths": ["x"]}, "models": {"document": {"path": "m"}}}
    assert load_config(paper, overrides=site)["item_roles"]["guard"] == 0.1
    with pytest.raises(CapatlasError, match=r"'unlearning.stop.guard_benchmark' is set but 'item_roles.guard' is 0"):
        load_config(paper, overrides={**site, "item_roles": {"guard": 0.0}})
    with pytest.raises(CapatlasError, match=r"'item_roles.queries' \(0.7\) \+ 'item_roles.guard' \(0.3\) leave no evaluation"):
        load_config(paper, overrides={**site, "item_roles": {"queries": 0.7, "guard": 0.3}})
    # The study's design needs no held-out guard items.
    assert load_config(paper, overrides={**site, "item_roles": {"design": "overlapping", "guard": 0.0}})


def test_snakemake_config_strings_are_read_as_the_schema_types():
    """`snakemake --config export='{enabled: true}'` hands nested values over as strings (YAML BaseLoader)."""
    from snakemake.cli import parse_config

    given = parse_config(["export={enabled: true, adapters_max_mb: 12}", "shards={count: 3}"])
    assert given["export"] == {"enabled": "true", "adapters_max_mb": "12"}
    config = validate_config({**given, "demo": {"enabled": True}, "corpus": LABELS}, as_written=True)
    assert config["export"]["enabled"] is True and config["export"]["adapters_max_mb"] == 12
    assert config["shards"]["count"] == 3
    with pytest.raises(CapatlasError, match="export.enabled"):
        validate_config({"export": {"enabled": "yes please"}, "demo": {"enabled": True}, "corpus": LABELS}, as_written=True)
