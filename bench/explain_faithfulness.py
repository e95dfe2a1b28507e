"""Are --explain's figures faithful? Generated calls whose label needs a text cue in one known
segment and a voice cue in another (label = 2·text cue + voice cue: A–D); the other segments are
noise. A fused model is trained on them; then, over the test calls it gets right:

* top segment: how often the segment with the largest |contribution| is one of the two cue
  segments (chance: 2 / segments);
* modality split: how often the text-cue segment's |text_contribution| exceeds its
  |audio_contribution|, and the voice-cue segment's the reverse;
* deletion curve: the predicted class's probability as segments are removed one by one in the
  explanation's order (largest contribution first) vs in random orders; the ratio of the areas
  under the two curves (below 1: the explanation finds what the model uses first).

    python bench/explain_faithfulness.py [--calls 400] [--epochs 25] [--seed 0]

Results: docs/explain.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from synthetic import SyntheticCall, write_synthetic_store  # noqa: E402

from train.checkpoint import load_run  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.data import segments_batch  # noqa: E402
from train.explain import ExplainOptions  # noqa: E402
from train.loop import fit  # noqa: E402
from train.predictions import score_cache_calls  # noqa: E402

MATTERS = 0.1  # a cue segment the model relies on moves p by at least this when left out
CUES: dict[int, tuple[int, int]] = {}  # call -> (text-cue segment, voice-cue segment)


def cue_call(rng, index: int, n: int, shape) -> SyntheticCall:
    a = rng.standard_normal((n, shape.audio_frames, shape.audio_dim))
    t = rng.standard_normal((n, shape.text_tokens, shape.text_dim))
    text_seg, voice_seg = rng.choice(n, 2, replace=False)
    word, voice = int(rng.integers(2)), int(rng.integers(2))
    t[text_seg, :, :4] += 2.5 * (2 * word - 1)
    a[voice_seg, :, :4] += 2.5 * (2 * voice - 1)
    CUES[index] = (int(text_seg), int(voice_seg))
    return SyntheticCall(
        label="ABCD"[2 * word + voice],
        audio=a,
        audio_len=np.full(n, shape.audio_frames),
        text=t,
        text_len=np.full(n, shape.text_tokens),
    )


def _curve(model, feats, cls: int, order, width: int) -> float:
    """Mean p(cls) with the first k segments of ``order`` removed, k = 0 … n − 1."""
    ps = []
    for k in range(len(order)):
        keep = sorted(order[k:])
        b = segments_batch([[feats[i] for i in keep]], model, width, torch.device("cpu"))
        with torch.no_grad():
            out = model(b.audio, b.audio_len, b.text, b.text_len, b.seg_counts)["5"]
        ps.append(float(torch.softmax(out.float(), -1)[0, cls]))
    return float(np.mean(ps))


def deletion_areas(model, store, data, scored, rng, randoms: int = 5) -> tuple[float, float]:
    """Mean area under p(predicted class) as segments are removed: explanation's order, random."""
    ah, th = store.group["audio/hidden"], store.group["text/hidden"]
    a_len, t_len = store.lengths("audio"), store.lengths("text")
    ours, theirs = [], []
    for c, e in scored.explanations:
        mine = [it for it in e.items if it.task == "5"]
        cls = "ABCDE".index(mine[0].label)
        feats = [
            SimpleNamespace(audio=ah[r, : a_len[r]], text=th[r, : t_len[r]]) for r in data.rows[c]
        ]
        by = [it.segment for it in sorted(mine, key=lambda it: -it.contribution)]
        ours.append(_curve(model, feats, cls, by, th.shape[1]))
        randomly = [rng.permutation(len(feats)) for _ in range(randoms)]
        theirs.append(np.mean([_curve(model, feats, cls, o, th.shape[1]) for o in randomly]))
    return float(np.mean(ours)), float(np.mean(theirs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-v", action="store_true", help="print each call's figures")
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        store = write_synthetic_store(
            Path(tmp) / "cues.zarr", calls=args.calls, segments_per_call=(3, 6), audio_frames=16,
            audio_dim=16, text_tokens=8, text_dim=16, seed=args.seed, fill=cue_call,
        )  # fmt: skip
        m = fit(
            TrainConfig(
                cache=str(store.path), out=f"{tmp}/run", d_model=32, heads=4, ffn=64,
                gru_hidden=16, head_hidden=32, cross_layers=1, bottleneck_layers=1,
                epochs=args.epochs, patience=args.epochs, lr=2e-3, device="cpu", plots=False,
                progress=False, seed=args.seed,
            )
        )  # fmt: skip
        cs = score_cache_calls(m["run_dir"], str(store.path), "test", explain=ExplainOptions(0))
        model, _ = load_run(m["run_dir"])
        data = cs.data
        right, top_hit, chance = 0, 0, []
        split = {"text": [], "voice": []}
        kept = []
        for c, e in cs.scored.explanations:
            mine = [it for it in e.items if it.task == "5"]
            index = int(data.calls[c].removeprefix("call"))
            if mine[0].label != data.base_labels[c]:
                continue
            right += 1
            kept.append((c, e))
            text_seg, voice_seg = CUES[index]
            top = max(mine, key=lambda it: abs(it.contribution)).segment
            top_hit += top in (text_seg, voice_seg)
            chance.append(2 / len(mine))
            t, v = mine[text_seg], mine[voice_seg]
            # (right?, does the segment move p by at least MATTERS?)
            split["text"].append(
                (
                    abs(t.text_contribution) > abs(t.audio_contribution),
                    abs(t.contribution) >= MATTERS,
                )
            )
            split["voice"].append(
                (
                    abs(v.audio_contribution) > abs(v.text_contribution),
                    abs(v.contribution) >= MATTERS,
                )
            )
            if "-v" in sys.argv:
                print(
                    data.base_labels[c],
                    text_seg,
                    voice_seg,
                    [
                        (
                            round(it.contribution, 3),
                            round(it.audio_contribution, 3),
                            round(it.text_contribution, 3),
                        )
                        for it in mine
                    ],
                )
        cs.scored.explanations = kept
        ours, rand = deletion_areas(model, store, data, cs.scored, np.random.default_rng(args.seed))
    n = len(cs.scored.calls)
    print(f"test calls {n}, predicted right {right} ({100 * right / n:.0f} %)")
    print(
        f"top segment is a cue segment: {100 * top_hit / right:.0f} % "
        f"(chance {100 * np.mean(chance):.0f} %)"
    )
    for cue, hits in split.items():
        used = [ok for ok, matters in hits if matters]
        print(
            f"modality split right on the {cue}-cue segment ({'text' if cue == 'text' else 'audio'} "
            f"contribution the larger): {100 * np.mean(used):.0f} % of the {len(used)} that move p "
            f"by ≥ {MATTERS}, {100 * np.mean([ok for ok, _ in hits]):.0f} % of all {len(hits)}"
        )
    print(
        f"deletion area, explanation's order / random order: {ours:.3f} / {rand:.3f} = "
        f"{ours / rand:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
