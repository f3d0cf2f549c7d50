"""The applications end to end on a micro model trained for retrieval: `vlm eval` for every task, search
(index, append, query, bad queries, contact sheet), recommend, caption and answer on data-set clips and
on a real video file. Commands run as a user runs them; the search quality check runs in-process."""

import json

import numpy as np
import pytest

from conftest import run_vlm, train_args

STEPS = 120  # enough for the micro model's own-caption rank to be well above chance (measured mean rank 4.7 of 16)
INDEXED = 16


@pytest.fixture(scope="module")
def run_dir(tiny_dataset, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("retrieval")
    run_vlm(*train_args(tiny_dataset, workdir, f"train.num_steps={STEPS}", "optim.learning_rate=2e-3",
                        "train.log_every=20", config="configs/finetune_retrieval.py:tiny"))
    return workdir


@pytest.fixture(scope="module")
def video_file(tiny_dataset, tmp_path_factory):
    """The first test clip written as an mp4 with its sound, as a user's own file."""
    from vlm_jax.data import builders, video_io
    source = builders.open_dataset(tiny_dataset).as_data_source(split="test")
    example = source[0]
    path = tmp_path_factory.mktemp("videos") / "my_clip.mp4"
    video_io.write_video(path, example["video"], fps=8.0, audio=example["audio"].astype(np.float32) / 32768.0)
    return path


@pytest.fixture(scope="module")
def index(run_dir, video_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("index") / "idx"
    first = json.loads(run_vlm("search", "index", "--workdir", str(run_dir), "--source", "test", "--limit",
                               str(INDEXED), "--out", str(out)).stdout)
    assert first["added"] == INDEXED and first["total"] == INDEXED and first["skipped"] == 0
    broken = video_file.parent / "broken.mp4"
    broken.write_bytes(b"not a video")
    second = json.loads(run_vlm("search", "index", "--workdir", str(run_dir), "--source", str(video_file.parent),
                                "--out", str(out)).stdout)
    assert second["added"] == 1 and second["total"] == INDEXED + 1 and second["skipped"] == 1
    assert "broken.mp4" in second["skipped_files"][0]
    return out


def test_eval_writes_every_task_into_results(run_dir):
    result = run_vlm("eval", "--workdir", str(run_dir), "--split", "test", "--tasks", "retrieval,recommend,qa,caption",
                     "--config.eval.max_batches=0", "--config.eval.rerank_k=3", "--config.eval.caption.max_len=8",
                     "--config.eval.caption.beam_size=2")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["eval/step"] == STEPS and "train/clips_per_s" in results  # merged, not replaced
    for key in ("retrieval/t2v_R@1", "retrieval/v2t_MdR", "retrieval/t2v_rerank_R@5", "recommend/hit_rate@10",
                "recommend/nDCG@10", "recommend/random_hit_rate@10", "qa/acc", "qa/acc_direction",
                "qa/f1_macro", "qa/f1_macro_sound", "qa/precision_macro_order", "qa/choice_acc", "qa/f1_red",
                "caption/BLEU-4", "caption/CIDEr", "caption/ROUGE-L", "caption/distinct"):
        assert 0 <= results[f"test/{key}"] <= 100, key
    assert results["test/retrieval/t2v_MdR"] < 36  # trained: chance is 48.5 of 96 clips (measured 23)
    assert "test/retrieval/t2v_R@1" in result.stdout and "test/qa/f1_red" not in result.stdout  # per-answer hidden


def test_search_finds_clips_by_their_captions(index):
    from vlm_jax.apps import index as index_lib
    from vlm_jax.apps import search
    searcher = search.Searcher(index)
    ranks = []
    for position in range(INDEXED):
        caption = searcher.index.metadata(position)["captions"][0]
        hits = searcher.query(caption, k=INDEXED + 1)
        assert [h.rank for h in hits] == list(range(1, INDEXED + 2))
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
        ranks.append(next(h.rank for h in hits if h.id == searcher.index.ids[position]))
    assert np.mean(ranks) < 6.5, ranks  # chance is 9 of 17
    # the ranking is the exact one: brute force over the stored embeddings
    query = searcher.embedder.embed_texts([caption])
    expected = np.argsort(-(np.asarray(searcher.index.embeddings) @ query[0]), kind="stable")
    assert [searcher.index.position(h.id) for h in hits] == list(expected)
    assert isinstance(searcher.index, index_lib.Index) and len(searcher.index) == INDEXED + 1
    for odd in ("a " * 3000 + "red circle", "un cercle rouge qui bouge à gauche 🚀 ñ 赤い円"):  # truncated / UNK
        assert len(searcher.query(odd, k=2)) == 2


def test_query_prints_hits_json_and_a_contact_sheet(index, tmp_path):
    sheet = tmp_path / "hits.png"
    result = run_vlm("search", "query", "--index", str(index), "a red circle moves left", "-k", "3", "--json",
                     "--sheet", str(sheet))
    hits = json.loads(result.stdout[:result.stdout.rindex("]") + 1])
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["score"] >= hits[2]["score"]
    from PIL import Image
    assert Image.open(sheet).size[1] > 3 * 32


@pytest.mark.parametrize("args, message", [
    (["search", "query", "--index", "INDEX", "   "], "the query is empty"),
    (["search", "query", "--index", "/nonexistent", "red"], "/nonexistent"),
    (["search", "query", "--index", "INDEX", "red", "--nprobe", "4"], "--nprobe needs --approximate"),
    (["recommend", "--index", "INDEX", "--history", "no_such_id"], "no item 'no_such_id'"),
    (["recommend", "--index", "INDEX", "--history", " , "], "--history names no items"),
    (["caption", "--workdir", "RUN", "test:100000"], "past the end of the test split"),
    (["answer", "--workdir", "RUN", "test:0", ""], "the question is empty"),
])
def test_bad_input_is_one_line_exit_2(index, run_dir, args, message):
    args = [str(index) if a == "INDEX" else str(run_dir) if a == "RUN" else a for a in args]
    result = run_vlm(*args, check=False)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_recommend_excludes_the_history(index):
    from vlm_jax.apps.index import Index
    ids = Index.open(index).ids
    history = ids[:3]
    lines = run_vlm("recommend", "--index", str(index), "--history", ",".join(history), "-k", "5",
                    "--mmr", "0.7").stdout.strip().splitlines()
    picked = [line.split()[2] for line in lines]
    assert len(picked) == 5 == len(set(picked)) and not set(picked) & set(history)


def test_caption_and_answer_on_dataset_clips_and_a_file(run_dir, video_file):
    captions = run_vlm("caption", "--workdir", str(run_dir), "test:0", str(video_file)).stdout.strip().splitlines()
    assert len(captions) == 2 and captions[1].startswith("my_clip: ")
    answers = run_vlm("answer", "--workdir", str(run_dir), "test:0", str(video_file), "what colour is it?",
                      "--top", "2").stdout.strip().splitlines()
    assert len(answers) == 2 and answers[1].startswith("my_clip: ") and answers[1].count("(") == 2
