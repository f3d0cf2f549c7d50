"""`vlm recommend`, `vlm caption`, `vlm answer` and `vlm explain`: the applications of an index or a
trained run, one command each."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlm_jax.cli.common import inference_setup, non_negative_int, positive_int, report_skipped
from vlm_jax.errors import UserError


def register(commands: argparse._SubParsersAction) -> None:
    """Add `vlm recommend`, `vlm caption`, `vlm answer` and `vlm explain`."""
    recommend = commands.add_parser("recommend", help="videos like the ones in a viewing history")
    recommend.add_argument("--index", required=True)
    recommend.add_argument("--history", required=True, help="comma-separated ids of watched videos")
    recommend.add_argument("-k", type=positive_int, default=10)
    recommend.add_argument("--mode", default="mean", help="mean, max or mean+max similarity to the history")
    recommend.add_argument("--mmr", type=float, help="Maximal Marginal Relevance lambda (1: no diversity)")
    recommend.set_defaults(func=_recommend)

    caption = commands.add_parser("caption", help="caption videos with a trained run")
    caption.add_argument("--workdir", required=True)
    caption.add_argument("videos", nargs="+", help="video files or folders, or SPLIT:POSITION (test:0)")
    caption.add_argument("--step", type=non_negative_int)
    caption.set_defaults(func=_caption)

    answer = commands.add_parser("answer", help="answer a question about videos with a trained run")
    answer.add_argument("--workdir", required=True)
    answer.add_argument("videos", nargs="+", help="video files or folders, or SPLIT:POSITION (test:0)")
    answer.add_argument("question")
    answer.add_argument("--top", type=positive_int, default=3, help="answers shown per video")
    answer.add_argument("--step", type=non_negative_int)
    answer.set_defaults(func=_answer)

    explain = commands.add_parser("explain", help="heatmaps of where in a video a text looked")
    explain.add_argument("--workdir", required=True)
    explain.add_argument("video", help="a video file, or SPLIT:POSITION of the run's data set (test:0)")
    explain.add_argument("text", help="a caption, or a question for a QA run")
    explain.add_argument("--method", default="auto", choices=("auto", "attention", "gradient"),
                         help="cross-attention weights (fusion models) or gradient x input (any model); "
                              "auto: attention where the fusion has it")
    explain.add_argument("--out", help="where the GIF and PNG go (default WORKDIR/explain)")
    explain.add_argument("--step", type=non_negative_int)
    explain.set_defaults(func=_explain)


def _recommend(args) -> None:
    from vlm_jax.apps import recommend
    from vlm_jax.apps.index import Index
    index = Index.open(args.index)
    history = [item.strip() for item in args.history.split(",") if item.strip()]
    if not history:
        raise UserError("--history names no items")
    picks = recommend.recommend([index.position(item) for item in history], index.embeddings, args.k,
                                mode=args.mode, mmr_lambda=args.mmr)
    for rank, (position, score) in enumerate(picks, 1):
        captions = index.metadata(position).get("captions") or [""]
        print(f"{rank:>3}  {score:6.3f}  {index.ids[position]}  {captions[0]}")


def _caption(args) -> None:
    inference_setup()
    from vlm_jax.apps import predictor
    model = predictor.Predictor.load(args.workdir, args.step)
    source = predictor.referenced_clips(model.run, args.videos)
    for clip, caption in model.captions(source.clips):
        print(f"{clip.id}: {caption}")
    report_skipped(source)


def _answer(args) -> None:
    inference_setup()
    from vlm_jax.apps import predictor
    predictor.check_question(args.question)  # before the model loads
    model = predictor.Predictor.load(args.workdir, args.step)
    source = predictor.referenced_clips(model.run, args.videos)
    for clip, answers in model.answers(source.clips, args.question, top=args.top):
        print(f"{clip.id}: " + ", ".join(f"{answer} ({p:.2f})" for answer, p in answers))
    report_skipped(source)


def _explain(args) -> None:
    inference_setup()
    from vlm_jax.apps import explain, predictor
    if not args.text.strip():
        raise UserError("the text to explain is empty")
    model = predictor.Predictor.load(args.workdir, args.step)
    source = predictor.referenced_clips(model.run, [args.video])
    out = Path(args.out) if args.out else Path(args.workdir) / "explain"
    for clip in source.clips:
        explanation, paths = explain.explain_to_files(model, clip, args.text, args.method, out)
        importance = list(explanation.frame_importance)
        peak = importance.index(max(importance))
        print(f"{clip.id}: {explanation.method}, score {explanation.score:.3f}; frame {peak} matters most "
              f"({100 * importance[peak]:.0f}% of the heatmap)")
        print("  tokens: " + " ".join(f"{token}({score:+.2f})" for token, score in
                                      zip(explanation.tokens, explanation.token_scores)))
        print("  wrote " + ", ".join(str(p) for p in paths.values()))
    report_skipped(source)
