"""`capatlas atlas`: the payload from tables (no browser), the command on a synthetic run, and the page in
headless Chromium (the demo's planted bins hot, a planted document listed on click).

The browser tests drive the system's Chromium through Playwright (`executable_path`; Playwright never
downloads a browser here) and are skipped, saying why, only where no Chromium executable can be found
(Debian: `apt-get install chromium`; CAPATLAS_CHROMIUM=PATH names another one).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from capatlas.analysis import atlas
from capatlas.analysis import influence as inf
from capatlas.command import run_stage
from capatlas.errors import CapatlasError
from capatlas.taxonomy import FORMAT_NAMES, N_BINS, N_FORMATS, TOPIC_NAMES
from helpers_analysis import make_scores, write_shards

HOSTILE = "</script><img src=x onerror=alert(1)> <!-- & \u2028 \"quoted\" 'single' <b>bold</b>"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


# --------------------------------------------------------------------------- pure core


def tiny_matrix() -> pd.DataFrame:
    """Two benchmarks; bins 5, 6, 7 and 40 filled, bin 8 empty (n_docs 0), the rest absent."""
    rows = []
    for name, sign in (("alpha", 1.0), ("beta", -1.0)):
        for bin_id, n, mean, z in ((5, 7, 0.002, 2.5), (6, 4, -0.001, -1.25), (7, 1, 0.0, 0.1), (40, 2, 0.0005, 0.5), (8, 0, np.nan, np.nan)):
            rows.append({
                "benchmark": name, "bin_id": bin_id, "topic": "t", "format": "f", "n_docs": n,
                "mean": sign * mean, "sd": 0.001, "sem": 0.0004, "zscore": sign * z,
                "ci_low": sign * mean - 0.001, "ci_high": sign * mean + 0.001,
                "z_ci_low": sign * z - 1, "z_ci_high": sign * z + 1, "small_bin": n < 3,
            })  # fmt: skip
    return pd.DataFrame(rows)


def tiny_scores() -> pd.DataFrame:
    """Bin 5: seven documents (one unscored, two tied); bin 6: four; bin 7: one."""
    docs = [
        ("d5a", 5, 0.9), ("d5b", 5, 0.5), ("d5c", 5, 0.5), ("d5d", 5, -0.2), ("d5e", 5, 0.1),
        ("d5f", 5, -0.7), ("d5g", 5, 0.3), ("d5x", 5, np.nan),
        ("d6a", 6, 0.2), ("d6b", 6, -0.4), ("d6c", 6, 0.0), ("d6d", 6, 0.6),
        ("d7a", 7, 0.05),
    ]  # fmt: skip
    frame = pd.DataFrame(docs, columns=["doc_id", "bin_id", "alpha"])
    frame["beta"] = -frame["alpha"]
    frame["bin_id"] = frame["bin_id"].astype(np.int32)
    return frame


def test_documents_are_ranked_most_then_least_influential_without_repeats():
    ranked = atlas.rank_documents(tiny_scores(), ["alpha", "beta"], k=3)
    alpha = ranked["alpha"]
    # Highest first; the tie at 0.5 goes by doc_id; the unscored document is left out.
    assert [d for d, _ in alpha[5]["top"]] == ["d5a", "d5b", "d5c"]
    assert [d for d, _ in alpha[5]["bottom"]] == ["d5f", "d5d", "d5e"]  # lowest first
    assert alpha[5]["top"][0][1] == pytest.approx(0.9)
    # Four documents, k = 3: the three best above, the one left below; never one twice.
    assert [d for d, _ in alpha[6]["top"]] == ["d6d", "d6a", "d6c"]
    assert [d for d, _ in alpha[6]["bottom"]] == ["d6b"]
    assert alpha[7] == {"top": [("d7a", pytest.approx(0.05))], "bottom": []}
    assert set(alpha) == {5, 6, 7}
    # The other benchmark ranks its own column: the order flips.
    assert [d for d, _ in ranked["beta"][5]["top"]] == ["d5f", "d5d", "d5e"]
    with pytest.raises(CapatlasError, match="--top-docs"):
        atlas.rank_documents(tiny_scores(), ["alpha"], k=0)


def test_streaming_candidates_rank_like_the_whole():
    rng = np.random.default_rng(3)
    n = 3000
    frame = pd.DataFrame({
        "doc_id": [f"doc-{i:05d}" for i in rng.permutation(n)],
        "bin_id": rng.integers(0, 40, n).astype(np.int32),
        "a": rng.normal(size=n).round(2),  # rounded: ties, broken by doc_id
        "b": rng.normal(size=n),
    })  # fmt: skip
    frame.loc[rng.choice(n, 30, replace=False), "a"] = np.nan
    for k in (1, 4):
        whole = atlas.rank_documents(frame, ["a", "b"], k)
        kept = None
        for rows in np.array_split(np.arange(n), 7):
            part = atlas.candidate_rows(frame.iloc[rows], ["a", "b"], k)
            kept = part if kept is None else atlas.candidate_rows(pd.concat([kept, part]), ["a", "b"], k)
        assert len(kept) < len(frame)
        assert atlas.rank_documents(kept, ["a", "b"], k) == whole


def test_payload_shape_bins_documents_and_contrast():
    matrix = tiny_matrix()
    ranked = atlas.rank_documents(tiny_scores(), ["alpha", "beta"], k=2)
    texts = {d: f"text of {d} " + "x" * 400 for d in tiny_scores()["doc_id"]}
    summary = {
        "input": {"ci_level": 0.9, "roles": {"alpha": {"domain": "social", "capability": "reasoning"}}},
        "topic_contrast": {
            "reasoning": {"games": {"value": 1.25, "ci_combined": [0.5, 2.0], "ci_bins": [0.9, 1.6]}},
            "knowledge": {"games": {"value": -0.5, "ci_combined": [-1.0, 0.1]}},
        },
        "pearson": {"matrix": {"alpha": {"alpha": 1.0, "beta": -0.3}, "beta": {"alpha": -0.3, "beta": 1.0}}},
        "verdict": [{"statement": "s", "statistic": "r", "estimate": 0.123456, "reading": "fragile"}],
    }
    payload = atlas.build_payload(matrix, ranked, texts, k=2, summary=summary, roles={"alpha": ["social", "reasoning"]})
    assert json.loads(json.dumps(payload, allow_nan=False)) == payload  # plain JSON, no NaN
    assert [b["name"] for b in payload["benchmarks"]] == ["alpha", "beta"]
    assert payload["benchmarks"][0]["domain"] == "social" and payload["benchmarks"][1]["domain"] is None
    assert [t[1] for t in payload["topics"]] == list(TOPIC_NAMES)
    assert [f[1] for f in payload["formats"]] == list(FORMAT_NAMES)
    bins = payload["bins"]["alpha"]
    for key in ("z", "mean", "sd", "n", "ci", "zci", "small"):
        assert len(bins[key]) == N_BINS, key
    assert bins["z"][5] == 2.5 and bins["z"][6] == -1.25 and bins["n"][5] == 7
    assert bins["z"][8] is None and bins["mean"][8] is None and bins["n"][8] == 0  # empty bin
    assert bins["z"][100] is None and bins["ci"][100] is None  # no row at all
    assert bins["ci"][5] == [pytest.approx(0.001), pytest.approx(0.003)]
    assert bins["zci"][6] == [-2.25, -0.25]
    assert bins["small"][7] and not bins["small"][5]
    # The colour scale: the 99th percentile of |z|, as `capatlas figures` clips it, and 2 at least.
    assert bins["limit"] == pytest.approx(np.quantile([2.5, 1.25, 0.1, 0.5], 0.99), rel=1e-3)
    assert atlas.colour_limit(np.array([0.5, -1.0, np.nan])) == 2.0
    assert payload["bins"]["beta"]["z"][5] == -2.5
    # Each listed document's text is embedded once, cut to the snippet length.
    docs = payload["docs"]
    assert len(docs["id"]) == len(set(docs["id"]))
    assert len(docs["id"]) == len(docs["text"]) == len(docs["bin"]) == len(docs["chars"])
    top5 = payload["lists"]["alpha"]["top"][5]
    assert [docs["id"][i] for i, _ in top5] == ["d5a", "d5b"]
    assert top5[0][1] == pytest.approx(0.9)
    assert [docs["id"][i] for i, _ in payload["lists"]["alpha"]["bottom"][5]] == ["d5f", "d5d"]
    assert payload["lists"]["alpha"]["top"][100] == []
    first = docs["id"].index("d5a")
    assert docs["text"][first].startswith("text of d5a") and len(docs["text"][first]) == atlas.SNIPPET_CHARS + 1
    assert docs["text"][first].endswith("\u2026") and docs["chars"][first] == len(texts["d5a"]) and docs["bin"][first] == 5
    # The contrast view: the 2 x 2 cells, each topic's values with the combined CI first.
    contrast = payload["contrast"]
    assert contrast["cells"]["social/reasoning"] == ["alpha"] and contrast["cells"]["stem/knowledge"] == []
    assert contrast["topic"]["ci_kind"] == "combined"
    games = next(r for r in contrast["topic"]["rows"] if r["slug"] == "games")
    assert games["name"] == "Games" and games["reasoning"] == 1.25 and games["reasoning_ci"] == [0.5, 2.0]
    assert games["knowledge"] == -0.5 and len(contrast["topic"]["rows"]) == len(TOPIC_NAMES)
    assert contrast["format"] is None
    assert contrast["correlations"]["pearson"] == [[1.0, -0.3], [-0.3, 1.0]]
    assert contrast["verdict"][0]["estimate"] == 0.123
    # A listed document without a text is an error that says what to check.
    with pytest.raises(CapatlasError, match="no text in the shards"):
        atlas.build_payload(matrix, ranked, {}, k=2)


def embedded_payload(page: str) -> tuple[str, dict]:
    blocks = re.findall(r'<script type="application/json" id="atlas-data">(.*?)</script>', page, flags=re.DOTALL)
    assert len(blocks) == 1
    return blocks[0], json.loads(blocks[0])


def test_hostile_text_stays_data_in_the_page():
    matrix = tiny_matrix()
    scores = tiny_scores()
    texts = {d: f"doc {d}" for d in scores["doc_id"]}
    texts["d5a"] = HOSTILE
    payload = atlas.build_payload(matrix, atlas.rank_documents(scores, ["alpha", "beta"], 3), texts, k=3)
    page = atlas.render_html(payload)
    block, parsed = embedded_payload(page)
    assert parsed == json.loads(json.dumps(payload))  # the data comes back whole
    assert HOSTILE in parsed["docs"]["text"]
    # Nothing in the JSON can end its block or open markup.
    for raw in ("<", ">", "&", "\u2028"):
        assert raw not in block, raw
    assert "\\u003c/script\\u003e\\u003cimg" in block
    assert "<img" not in page and "onerror=alert" not in page.replace(block, "")
    assert page.count("</script>") == 2  # the data block's and the page script's: no third one from a text
    # Nothing reaches the network: no URL to fetch, a policy that forbids it, the script allowed by its hash.
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src 'none'" in policy and re.search(r"script-src 'sha256-[A-Za-z0-9+/]+=*'", policy)
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page.replace(block, ""))
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page and "document.write" not in page


def test_embed_json_escapes_markup_characters():
    text = atlas.embed_json({"t": "</script><!--&\u2029"})
    assert not set("<>&\u2029") & set(text)
    assert json.loads(text) == {"t": "</script><!--&\u2029"}


# --------------------------------------------------------------------------- the command on a synthetic run


PLANTED = {"socialiqa": [160, 161], "arc_challenge": [300]}


def write_text_shards(data, root: Path, n_shards: int, hostile_doc: str) -> list[Path]:
    """shards/shard-*.parquet beside write_shards' score files: the same documents in the same shards."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n_shards):
        rows = np.arange(k, len(data.bins), n_shards)
        ids = [data.doc_ids[i] for i in rows]
        texts = [HOSTILE if d == hostile_doc else f"Document {d} of bin {int(b)}. " * 3 for d, b in zip(ids, data.bins[rows])]
        table = pa.table({
            "doc_id": pa.array(ids, pa.string()),
            "bin_id": pa.array(data.bins[rows].astype(np.int32), pa.int32()),
            "n_tokens": pa.array([len(t.split()) for t in texts], pa.int64()),
            "text": pa.array(texts, pa.string()),
        })  # fmt: skip
        path = root / f"shard-{k:05d}.parquet"
        pq.write_table(table, path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """A run's influence/, attribution/scores/ and shards/ from synthetic scores (no contrast)."""
    root = tmp_path_factory.mktemp("atlas-run")
    data = make_scores(7, docs_per_bin=3, planted=PLANTED, empty_bins=(11,))
    scores, binsums = write_shards(data, root / "attribution", 2, n_bootstrap=20, seed=5)
    result = inf.compute_influence(inf.pair_shards(scores, binsums), n_bootstrap=20, seed=5)
    inf.write_influence(result, root / "influence")
    # The hostile text goes to the best document of the first planted bin of socialiqa.
    in_bin = [i for i, b in enumerate(data.bins) if b == PLANTED["socialiqa"][0]]
    best = max(in_bin, key=lambda i: data.doc_means("socialiqa")[i])
    write_text_shards(data, root / "shards", 2, data.doc_ids[best])
    return root, data, data.doc_ids[best]


def atlas_argv(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--influence", str(root / "influence"), "--scores", str(root / "attribution" / "scores"),
            "--shards", str(root / "shards"), "--out", str(out), *extra]  # fmt: skip


def test_command_writes_one_page_with_top_documents_only(synthetic_run, tmp_path):
    root, data, hostile_doc = synthetic_run
    out = tmp_path / "atlas.html"
    run_stage(atlas, atlas_argv(root, out, "--top-docs", "1"))
    page = out.read_text(encoding="utf-8")
    _, payload = embedded_payload(page)
    assert payload["k"] == 1 and payload["contrast"] is None
    # One most and one least influential document per bin and benchmark (bins hold 3): 2 of 3 documents.
    lists = payload["lists"]["socialiqa"]
    assert all(len(lists["top"][b]) == 1 and len(lists["bottom"][b]) == 1 for b in range(N_BINS) if b != 11)
    assert lists["top"][11] == [] and payload["bins"]["socialiqa"]["z"][11] is None
    assert len(payload["docs"]["id"]) < len(data.doc_ids)
    top = payload["docs"]["id"][lists["top"][PLANTED["socialiqa"][0]][0][0]]
    assert top == hostile_doc
    # The planted bins are the hottest of their benchmarks.
    z = np.array([np.nan if v is None else v for v in payload["bins"]["socialiqa"]["z"]])
    assert set(np.argsort(-np.nan_to_num(z, nan=-np.inf))[:2]) == set(PLANTED["socialiqa"])
    # Scores as the score files hold them (float32), rounded for the page.
    frame = pd.concat([pd.read_parquet(p) for p in sorted((root / "attribution" / "scores").glob("*.parquet"))])
    expected = float(frame.set_index("doc_id").loc[hostile_doc, "socialiqa"])
    assert lists["top"][PLANTED["socialiqa"][0]][0][1] == pytest.approx(expected, rel=1e-3)


def test_bad_inputs_are_refused_naming_the_file(synthetic_run, tmp_path):
    root, _, hostile_doc = synthetic_run
    out = tmp_path / "atlas.html"
    with pytest.raises(CapatlasError, match=re.escape(str(tmp_path / "nowhere" / "summary.json"))):
        run_stage(atlas, atlas_argv(root, out, "--contrast", str(tmp_path / "nowhere")))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "summary.json").write_text("{not json")
    with pytest.raises(CapatlasError, match=r"bad/summary.json is not readable JSON"):
        run_stage(atlas, atlas_argv(root, out, "--contrast", str(tmp_path / "bad")))
    with pytest.raises(CapatlasError, match=r"bin matrix .*nowhere/bin_matrix.parquet does not exist"):
        run_stage(atlas, ["--influence", str(tmp_path / "nowhere"), *atlas_argv(root, out)[2:]])
    with pytest.raises(CapatlasError, match="--top-docs must be 1 or more"):
        run_stage(atlas, atlas_argv(root, out, "--top-docs", "0"))
    # A shard missing: the documents it holds have no text.
    one_shard = ["--shards", str(root / "shards" / "shard-00000.parquet")]
    argv = atlas_argv(root, out)
    with pytest.raises(CapatlasError, match="no text in the --shards files"):
        run_stage(atlas, argv[:4] + one_shard + argv[6:])
    # A score file without a benchmark's column names the file.
    broken = tmp_path / "scores"
    broken.mkdir()
    for path in sorted((root / "attribution" / "scores").glob("*.parquet")):
        table = pq.read_table(path)
        pq.write_table(table.drop(["mmlu_stem"]).replace_schema_metadata(table.schema.metadata), broken / path.name)
    with pytest.raises(CapatlasError, match=r"score file .*shard-00000.parquet lacks column\(s\) mmlu_stem"):
        run_stage(atlas, argv[:2] + ["--scores", str(broken)] + argv[4:])
    with pytest.raises(CapatlasError, match=r"--scores .*empty holds no shard-\*.parquet"):
        (tmp_path / "empty").mkdir()
        run_stage(atlas, argv[:2] + ["--scores", str(tmp_path / "empty")] + argv[4:])
    assert not out.exists()  # nothing half-written


# --------------------------------------------------------------------------- in the browser


def chromium_executable() -> str | None:
    named = os.environ.get("CAPATLAS_CHROMIUM")
    if named:
        return named if Path(named).is_file() else None
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


@pytest.fixture(scope="module")
def browser():
    executable = chromium_executable()
    if executable is None:
        pytest.skip(
            "no Chromium executable found (looked for " + ", ".join(CHROMIUM_NAMES) + " on PATH and CAPATLAS_CHROMIUM):"
            " install it (Debian: apt-get install chromium) to run the atlas browser tests"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (requirements-test.txt) is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        yield browser
        browser.close()


class OpenPage:
    """The page opened from disk, with every console error, page error, dialog and request it makes."""

    def __init__(self, browser, path: Path):
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.page = browser.new_page(viewport={"width": 1320, "height": 1000})
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_selector("body[data-ready=true]", timeout=20_000)

    def displayed_z(self) -> dict[int, float]:
        cells = self.page.eval_on_selector_all(
            "td.cell", "cells => cells.map(c => [+c.dataset.bin, c.dataset.z])"
        )
        return {b: float(z) for b, z in cells if z != ""}

    def click_bin(self, bin_id: int) -> list[dict]:
        self.page.click(f'td.cell[data-bin="{bin_id}"]')
        return self.page.eval_on_selector_all(
            "#top-docs li",
            "items => items.map(li => ({id: li.dataset.docId, text: li.querySelector('.doc-text').textContent}))",
        )

    def close(self):
        self.page.close()


def test_hostile_text_is_shown_as_text_in_the_browser(browser, synthetic_run, tmp_path):
    root, _, hostile_doc = synthetic_run
    out = tmp_path / "atlas.html"
    run_stage(atlas, atlas_argv(root, out, "--top-docs", "2"))
    view = OpenPage(browser, out)
    try:
        listed = view.click_bin(PLANTED["socialiqa"][0])
        assert listed[0] == {"id": hostile_doc, "text": HOSTILE}
        assert view.page.locator("#details img, #details b, #details script").count() == 0
        assert view.page.locator("img").count() == 0
        view.page.wait_for_timeout(200)
        assert view.dialogs == [] and view.errors == []
        assert all(url.startswith("file://") for url in view.requests), view.requests
    finally:
        view.close()


@pytest.mark.slow
def test_demo_atlas_shows_planted_bins_hot_and_their_documents(browser, demo_run, tmp_path):
    out = tmp_path / "atlas.html"
    argv = ["--config", str(demo_run / "config.yaml"), "--influence", str(demo_run / "influence"),
            "--contrast", str(demo_run / "contrast"), "--scores", str(demo_run / "attribution" / "scores"),
            "--shards", str(demo_run / "shards"), "--out", str(out)]  # fmt: skip
    run_stage(atlas, argv)
    size = out.stat().st_size
    assert size < 4 * 2**20, size  # top documents only: ~1.1 MB for the demo's 2,229 documents
    truth = json.loads((demo_run / "demo" / "world" / "ground_truth.json").read_text())["benchmarks"]
    texts = pd.concat([pd.read_parquet(p, columns=["doc_id", "text"]) for p in sorted((demo_run / "shards").glob("shard-*.parquet"))])
    texts = texts.set_index("doc_id")["text"]
    view = OpenPage(browser, out)
    try:
        names = view.page.eval_on_selector_all("#bench-switch button", "bs => bs.map(b => b.dataset.benchmark)")
        assert set(names) == set(truth)
        for name in names:
            view.page.click(f'#bench-switch button[data-benchmark="{name}"]')
            assert view.page.text_content("#map-title").startswith(name)
            z = view.displayed_z()
            assert len(z) >= N_BINS - 10
            planted = [b["bin_id"] for b in truth[name]["planted_bins"]]
            best = max(planted, key=lambda b: z[b])
            rank = 1 + sum(v > z[best] for v in z.values())
            assert rank <= math.ceil(0.05 * len(z)), (name, best, rank)  # the margin of test_e2e_analysis
            # Hovering shows the bin's labels and numbers.
            view.page.hover(f'td.cell[data-bin="{best}"]')
            tip = view.page.text_content("#tooltip")
            assert TOPIC_NAMES[best // N_FORMATS] in tip and FORMAT_NAMES[best % N_FORMATS] in tip
            assert "n_docs" in tip and "z CI" in tip and f"{z[best]:+.2f}" in tip
            # Clicking lists the bin's documents, most influential first: planted ones, their text shown.
            listed = view.click_bin(best)
            assert listed, name
            planted_docs = set(truth[name]["planted_doc_ids"])
            assert listed[0]["id"] in planted_docs, (name, best, listed[0]["id"])
            for doc in listed:
                assert doc["text"].rstrip("\u2026").rstrip() and texts[doc["id"]].startswith(doc["text"].rstrip("\u2026").rstrip())
        # The contrast view: the 2 x 2 design and a bar per topic.
        assert view.page.locator("table.design button.bench-link").count() == len(truth)
        assert view.page.locator("#contrast-bars .bar-row").count() == len(TOPIC_NAMES)
        view.page.click('.facet-switch button[data-facet="format"]')
        assert view.page.locator("#contrast-bars .bar-row").count() == len(FORMAT_NAMES)
        view.page.click('#bench-switch button[data-benchmark="arc_challenge"]')
        best = max((b["bin_id"] for b in truth["arc_challenge"]["planted_bins"]), key=lambda b: view.displayed_z()[b])
        view.click_bin(best)
        view.page.hover(f'td.cell[data-bin="{best + 1}"]')
        view.page.screenshot(path=str(tmp_path / "atlas.png"), full_page=True)
        assert (tmp_path / "atlas.png").stat().st_size > 50_000
        assert view.errors == [], view.errors
        assert all(url.startswith("file://") for url in view.requests), view.requests
    finally:
        view.close()
