"""MS-COCO caption metrics (BLEU-1..4, CIDEr-D, ROUGE-L) in pure Python, equal to pycocoevalcap 1.2's.

pycocoevalcap needs Java for its tokenizer and is only a test dependency; these re-implement its scorers
so that captioning results are comparable with papers. `bleu`, `cider_d` and `rouge_l` return pycocoevalcap's own
units (BLEU and ROUGE-L in 0-1, CIDEr in 0-10), so they can be checked against it directly.
`caption_metrics` multiplies all three by 100, as papers report them (MSR-VTT CIDEr "49.9" is 0.499 here).

Every scorer tokenizes its inputs with `tokenize` first, which leaves already tokenized text unchanged.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Hashable, Mapping, Sequence

Captions = Mapping[Hashable, str]
References = Mapping[Hashable, Sequence[str]]

_MAX_N = 4
_CIDER_SIGMA = 6.0
_ROUGE_BETA = 1.2
_CLITIC = r"(?:s|re|ve|ll|d|m)(?![^\W_])"  # after an apostrophe
_TOKEN = re.compile(rf"""
      -[lr][rcs]b-                # a bracket as PTB writes it, lowercased
    | (?:[^\W\d_]\.){{2,}}        # an abbreviation: e.g. u.s.
    | [^\W_]+(?=n't) | n't        # do n't
    | '{_CLITIC}                  # man 's, they 're
    | [^\W_]+(?:[-./][^\W_]+|(?<=\d)[,:]\d+|'(?!{_CLITIC})[^\W_]+)*  # t-shirt 3.5 a/b 1,000 o'clock
    | [!?]{{2,}}                  # !!! and ?!, which coco-caption keeps
    | \S                          # any other character
    """, re.VERBOSE)
# coco-caption drops the PTB tokens '' ' `` ` . ? ! , : - -- ... ; which PTB makes from these characters
# (quotes become `` or '', "--" and "..." are runs of them). It means to drop -LRB- -RRB- -LCB- -RCB- too,
# but PTB's -lowerCase writes them -lrb- etc., so they stay, as here.
_DROPPED = frozenset("'`\".?!,:-;")
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-", "]": "-rsb-"}


def tokenize(text: str) -> list[str]:
    """Lowercased PTB tokens less coco-caption's punctuation, as its PTBTokenizer (Java) makes them.

    A regex approximation: PTB's other rules (e.g. "cannot" -> "can not", "gonna" -> "gon na", "mr." kept
    whole) are not reproduced. It leaves its own output unchanged, so pre-tokenized captions can be passed too.
    """
    tokens = (_BRACKETS.get(t, t) for t in _TOKEN.findall(text.lower()))
    return [t for t in tokens if t not in _DROPPED]


def _prepare(candidates: Captions, references: References) -> tuple[list[list[str]], list[list[list[str]]]]:
    """Tokenized candidates and references in one key order, after checking that they pair up."""
    if candidates.keys() != references.keys():
        no_candidate = [k for k in references if k not in candidates]
        no_reference = [k for k in candidates if k not in references]
        raise ValueError(f"candidates and references have different keys: {len(no_candidate)} without a "
                         f"candidate (e.g. {no_candidate[:3]}), {len(no_reference)} without references "
                         f"(e.g. {no_reference[:3]})")
    if not candidates:
        raise ValueError("no captions to score")
    for key, refs in references.items():
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{key!r}] must be a non-empty list of captions, got {refs!r}")
    keys = list(candidates)
    return ([tokenize(candidates[k]) for k in keys],
            [[tokenize(r) for r in references[k]] for k in keys])


def _ngram_counts(tokens: list[str]) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for n in range(1, _MAX_N + 1) for i in range(len(tokens) - n + 1))


def _bleu(cands: list[list[str]], refs: list[list[list[str]]]) -> dict[str, float]:
    # pycocoevalcap's smoothing: keeps 0/0 finite and a zero match count at (almost) 0
    tiny, small = 1e-15, 1e-9
    guess, correct = [0] * _MAX_N, [0] * _MAX_N
    cand_len = ref_len = 0
    for cand, cand_refs in zip(cands, refs):
        max_ref_counts: Counter = Counter()
        for ref in cand_refs:
            max_ref_counts |= _ngram_counts(ref)
        for ngram, count in _ngram_counts(cand).items():
            correct[len(ngram) - 1] += min(count, max_ref_counts[ngram])
        for n in range(_MAX_N):
            guess[n] += max(0, len(cand) - n)
        cand_len += len(cand)
        # the closest reference length, the shorter one on a tie
        ref_len += min((abs(len(r) - len(cand)), len(r)) for r in cand_refs)[1]
    scores, product = [], 1.0
    for n in range(_MAX_N):
        product *= (correct[n] + tiny) / (guess[n] + small)
        scores.append(product ** (1.0 / (n + 1)))
    ratio = (cand_len + tiny) / (ref_len + small)  # brevity penalty over the whole corpus
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return {f"BLEU-{n + 1}": s for n, s in enumerate(scores)}


def _cider_d(cands: list[list[str]], refs: list[list[list[str]]]) -> float:
    ref_counts = [[_ngram_counts(r) for r in cand_refs] for cand_refs in refs]
    # document frequency: in how many videos' references each n-gram occurs
    doc_freq = Counter(ngram for counts in ref_counts for ngram in set().union(*counts))
    log_docs = math.log(len(refs))

    def tfidf(counts: Counter) -> tuple[list[dict], list[float]]:
        vec: list[dict] = [{} for _ in range(_MAX_N)]
        for ngram, tf in counts.items():
            vec[len(ngram) - 1][ngram] = tf * (log_docs - math.log(max(1.0, doc_freq[ngram])))
        return vec, [math.sqrt(sum(w * w for w in v.values())) for v in vec]

    scores = []
    for cand, cand_refs, counts in zip(cands, refs, ref_counts):
        cand_vec, cand_norm = tfidf(_ngram_counts(cand))
        total = 0.0
        for ref, ref_count in zip(cand_refs, counts):
            ref_vec, ref_norm = tfidf(ref_count)
            # pycocoevalcap's lengths count bigrams (len - 1): the same difference unless a caption is
            # empty, and an empty caption scores 0 either way
            penalty = math.exp(-((len(cand) - len(ref)) ** 2) / (2 * _CIDER_SIGMA ** 2))
            for n in range(_MAX_N):
                # the candidate's weights clipped by the reference's (the "-D")
                ref_w = ref_vec[n]
                dot = sum(min(w, ref_w.get(g, 0.0)) * ref_w.get(g, 0.0) for g, w in cand_vec[n].items())
                if cand_norm[n] and ref_norm[n]:
                    dot /= cand_norm[n] * ref_norm[n]
                total += dot * penalty
        scores.append(10.0 * total / _MAX_N / len(cand_refs))
    return sum(scores) / len(scores)


def _lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _rouge_l(cands: list[list[str]], refs: list[list[list[str]]]) -> float:
    scores = []
    for cand, cand_refs in zip(cands, refs):
        lcs = [_lcs_length(cand, r) for r in cand_refs]
        # best precision and best recall, possibly from different references
        precision = max(lcs) / len(cand) if cand else 0.0
        recall = max(n / len(r) if r else 0.0 for n, r in zip(lcs, cand_refs))
        beta2 = _ROUGE_BETA ** 2
        scores.append((1 + beta2) * precision * recall / (recall + beta2 * precision)
                      if precision and recall else 0.0)
    return sum(scores) / len(scores)


def bleu(candidates: Captions, references: References) -> dict[str, float]:
    """Corpus BLEU-1..4 (0-1) as pycocoevalcap's `Bleu(4)`: n-gram counts clipped by each n-gram's most
    frequent reference, the closest reference length, one brevity penalty for the corpus."""
    return _bleu(*_prepare(candidates, references))


def cider_d(candidates: Captions, references: References) -> float:
    """CIDEr-D (0-10) as pycocoevalcap's `Cider`: tf-idf cosine of 1- to 4-grams with idf from the
    references of these videos, clipped candidate weights and a gaussian length penalty (sigma 6).

    The idf needs a corpus: with a single video every weight, so the score, is 0.
    """
    return _cider_d(*_prepare(candidates, references))


def rouge_l(candidates: Captions, references: References) -> float:
    """ROUGE-L (0-1) as pycocoevalcap's `Rouge`: LCS F-measure (beta 1.2) of the best precision and the
    best recall over the references, averaged over videos.

    An empty candidate scores 0; pycocoevalcap splits "" into one empty token and so scores 1 when a
    reference is empty too.
    """
    return _rouge_l(*_prepare(candidates, references))


def distinct(candidates: Captions) -> float:
    """The share of distinct captions among the candidates (x100): a decoder that says the same thing
    for every video scores 100 / len(candidates), however well that one caption matches."""
    if not candidates:
        raise ValueError("no captions to score")
    return 100.0 * len({tuple(tokenize(c)) for c in candidates.values()}) / len(candidates)


def caption_metrics(candidates: Captions, references: References) -> dict[str, float]:
    """BLEU-1..4, CIDEr (CIDEr-D) and ROUGE-L, all x100 as papers report them.

    candidates: {video key: generated caption}; references: {video key: [ground-truth captions]}.
    """
    cands, refs = _prepare(candidates, references)
    out = {k: 100.0 * v for k, v in _bleu(cands, refs).items()}
    out["CIDEr"] = 100.0 * _cider_d(cands, refs)
    out["ROUGE-L"] = 100.0 * _rouge_l(cands, refs)
    return out
