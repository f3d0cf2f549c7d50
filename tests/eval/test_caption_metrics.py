"""Caption metrics: hand-computed cases, parity with pycocoevalcap 1.2's scorers, pinned values."""

import contextlib
import io
import math
import random

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from vlm_jax.eval import caption_metrics as cm

# pycocoevalcap on this example (its captions as tokenized below) gave these, in its units
PINNED_REFERENCES = {
    "v1": ["A man is playing a guitar.", "A man plays the guitar on stage", "someone is playing music"],
    "v2": ["a woman is cooking in a kitchen", "A lady cooks food.", "a woman is making a meal"],
    "v3": ["a dog runs in the park", "A dog is running on grass!"],
}
PINNED_CANDIDATES = {"v1": "A man is playing guitar.", "v2": "a woman is cooking food", "v3": "A cat sits on a mat."}
PINNED_BLEU = [0.7499999999531252, 0.5883484053735375, 0.5173403877253829, 0.44597989102819585]
PINNED_CIDER = 2.0617004603831144
PINNED_ROUGE = 0.6249921133124692


def coco_scores(candidates, references):
    """pycocoevalcap's BLEU-1..4, CIDEr and ROUGE-L on space-separated tokens."""
    res = {k: [v] for k, v in candidates.items()}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its counts
        bleu, _ = Bleu(4).compute_score(references, res)
    cider, _ = Cider().compute_score(references, res)
    rouge, _ = Rouge().compute_score(references, res)
    return [*bleu, float(cider), float(rouge)]


def our_scores(candidates, references):
    return [*cm.bleu(candidates, references).values(), cm.cider_d(candidates, references),
            cm.rouge_l(candidates, references)]


def test_tokenize_matches_ptb_tokenizer_output():
    # expected: stanford-corenlp-3.4.1's PTBTokenizer -preserveLines -lowerCase (shipped with pycocoevalcap),
    # less coco-caption's punctuation list
    cases = {
        "A man's dog, running (fast)! He didn't wear a t-shirt; 3.5 \"km\" 50% -- ok... e.g. U.S. o'clock [x]":
            "a man 's dog running -lrb- fast -rrb- he did n't wear a t-shirt 3.5 km 50 % ok e.g. u.s. o'clock "
            "-lsb- x -rsb-",
        "a woman can't sing {loudly} & the kids won't stop 'dancing' ... $5 #1 a/b it's they're I'm we've":
            "a woman ca n't sing -lcb- loudly -rcb- & the kids wo n't stop dancing $ 5 # 1 a/b it 's they 're i 'm "
            "we 've",
        "someone's cooking--fast; a man-made lake : yes! well-known cats' toys don't":
            "someone 's cooking fast a man-made lake yes well-known cats toys do n't",
        "kids play football;a dog barks!!! what?! it is 10:30 and 1,000 people left":
            "kids play football a dog barks !!! what ?! it is 10:30 and 1,000 people left",
    }
    for text, expected in cases.items():
        tokens = cm.tokenize(text)
        assert tokens == expected.split()
        assert cm.tokenize(" ".join(tokens)) == tokens  # pre-tokenized captions pass through unchanged


def test_identical_captions_score_full_marks():
    refs = {"v1": ["a man is playing a guitar"], "v2": ["a woman is cooking in a kitchen"]}
    out = cm.caption_metrics({k: v[0] for k, v in refs.items()}, refs)
    assert out["BLEU-4"] == pytest.approx(100.0, rel=1e-9)  # the smoothing constants shave off ~1e-10
    assert out["ROUGE-L"] == 100.0
    # equal tf-idf vectors: cosine 1 for each n and no length penalty -> 10 per video, x100
    assert out["CIDEr"] == pytest.approx(1000.0)


def test_captions_sharing_no_words_score_zero():
    refs = {"v1": ["a man is playing a guitar"], "v2": ["a woman is cooking in a kitchen"]}
    out = cm.caption_metrics({"v1": "dogs bark loudly", "v2": "cats sleep"}, refs)
    assert out["CIDEr"] == 0.0 and out["ROUGE-L"] == 0.0
    assert all(out[f"BLEU-{n}"] == pytest.approx(0.0, abs=1e-9) for n in range(1, 5))


def test_bleu_clips_counts_and_applies_the_brevity_penalty():
    # Papineni's example: "the" occurs at most twice in a reference, so 2 of the 4 unigrams count: p1 = 2/4.
    # The closest reference length to 4 is 6, so BP = exp(1 - 6/4), BLEU-1 = 0.5 * exp(-0.5) = 0.3033.
    refs = {"v": ["the cat is on the mat", "there is a cat on the mat"]}
    assert cm.bleu({"v": "the the the the"}, refs)["BLEU-1"] == pytest.approx(0.5 * math.exp(-0.5))
    # "the cat sat": every n-gram matches, but BP = exp(1 - 6/3) for BLEU-1 and BLEU-2 alike
    out = cm.bleu({"v": "The cat sat."}, {"v": ["the cat sat on the mat"]})
    assert out["BLEU-1"] == pytest.approx(math.exp(-1)) and out["BLEU-2"] == pytest.approx(math.exp(-1))


def test_rouge_l_by_hand():
    # LCS("a man is singing a song", "a man sings a song") = "a man a song": P = 4/6, R = 4/5
    p, r, beta2 = 4 / 6, 4 / 5, 1.2 ** 2
    score = cm.rouge_l({"v": "a man is singing a song"}, {"v": ["a man sings a song", "music"]})
    assert score == pytest.approx((1 + beta2) * p * r / (r + beta2 * p))


def test_cider_of_a_single_video_is_zero():
    # every n-gram's idf is log(1) - log(1): CIDEr needs a corpus
    assert cm.cider_d({"v": "a man sings"}, {"v": ["a man sings"]}) == 0.0


def test_pinned_values():
    tokenized_refs = {k: [" ".join(cm.tokenize(r)) for r in refs] for k, refs in PINNED_REFERENCES.items()}
    tokenized_cands = {k: " ".join(cm.tokenize(c)) for k, c in PINNED_CANDIDATES.items()}
    assert coco_scores(tokenized_cands, tokenized_refs) == pytest.approx([*PINNED_BLEU, PINNED_CIDER, PINNED_ROUGE],
                                                                         rel=1e-12)
    out = cm.caption_metrics(PINNED_CANDIDATES, PINNED_REFERENCES)
    # BLEU-1 by hand: 5 + 5 + 2 ("a" clipped to 1, "on") of 16 unigrams match; closest reference lengths
    # 6, 4 (a tie with 6 goes to the shorter) and 6 sum to 16, so no brevity penalty
    assert out["BLEU-1"] == pytest.approx(75.0)
    expected = {**{f"BLEU-{n + 1}": b for n, b in enumerate(PINNED_BLEU)}, "CIDEr": PINNED_CIDER,
                "ROUGE-L": PINNED_ROUGE}
    assert out == pytest.approx({k: 100.0 * v for k, v in expected.items()}, rel=1e-9)


def parity_corpus():
    """20 videos with 1 to 5 references from a small vocabulary, so that n-grams overlap, plus edge cases."""
    rng = random.Random(0)
    vocab = "a man woman is are playing guitar singing song on the stage dog runs in park cat sits mat".split()
    candidates, references = {}, {}
    for i in range(20):
        base = [rng.choice(vocab) for _ in range(rng.randint(3, 10))]
        references[i] = [" ".join(w if rng.random() < 0.7 else rng.choice(vocab) for w in base)
                         for _ in range(rng.randint(1, 5))]
        candidates[i] = " ".join(w if rng.random() < 0.6 else rng.choice(vocab)
                                 for w in base[:rng.randint(1, len(base) + 2)])
    candidates[3] = ""  # an empty caption
    candidates[4] = references[4][0]  # a caption equal to a reference
    candidates[5] = "zebra"  # no word in common
    references[6] = ["a man is playing", "a man is playing a guitar on stage", "a man is playing"]  # a repeat
    candidates[6] = "a man is playing a song"  # 6 words: as close to the 4-word references as to the 8-word one
    return candidates, references


def test_parity_with_pycocoevalcap():
    candidates, references = parity_corpus()
    ours = our_scores(candidates, references)
    assert ours == pytest.approx(coco_scores(candidates, references), rel=1e-9, abs=1e-12)
    assert 0 < ours[3] < ours[0] and ours[4] > 0  # a mix of matching and not: no score is trivially 0 or 1
    out = cm.caption_metrics(candidates, references)
    assert list(out) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr", "ROUGE-L"]
    assert list(out.values()) == pytest.approx([100 * s for s in ours])


def test_distinct_counts_captions_that_differ_after_tokenisation():
    candidates = {"v1": "a red square", "v2": "A red square.", "v3": "a blue circle", "v4": "two shapes"}
    assert cm.distinct(candidates) == 75.0
    assert cm.distinct({k: "a a a a" for k in candidates}) == 25.0
    with pytest.raises(ValueError, match="no captions"):
        cm.distinct({})


def test_empty_candidates_do_not_crash():
    refs = {"v1": ["a man sings"], "v2": ["a dog runs"]}
    for candidates in ({"v1": "", "v2": "a dog runs"}, {"v1": "...", "v2": ""}):
        out = cm.caption_metrics(candidates, refs)
        assert all(math.isfinite(v) and v >= 0 for v in out.values())


def test_invalid_inputs():
    refs = {"v1": ["a man sings"], "v2": ["a dog runs"]}
    with pytest.raises(ValueError, match="different keys"):
        cm.caption_metrics({"v1": "a man"}, refs)
    with pytest.raises(ValueError, match="v2"):
        cm.bleu({"v1": "a man", "v2": "a dog"}, {"v1": ["a man"], "v2": []})
    with pytest.raises(ValueError, match="v2"):  # a bare string is not a list of references
        cm.rouge_l({"v1": "a man", "v2": "a dog"}, {"v1": ["a man"], "v2": "a dog"})
    with pytest.raises(ValueError, match="no captions"):
        cm.cider_d({}, {})
