"""A trained separator on a 3-minute two-speaker conversation: stitched vs the model alone.

    python benchmarks/long_recording.py CKPT [CKPT ...] --speakers george lucas --seconds 180

Each checkpoint (``omniseq fit`` of a separation recipe) separates a conversation built
from shared FSDD speakers (``omniseq.data.conversation``: turns, pauses, overlapping turn
starts, interjections) through ``Separator.separate`` (4 s chunks, 2 s overlaps). On every
3.5 s window where both speakers talk, it prints the SI-SNRi of the stitched output and of
the model run on that window alone, the speaker-order swap rate (over all such windows and
over those the model alone separates by at least ``--good-db``), the output/input peak
ratio and the clipped samples: issue 16's long-recording criteria, with a trained model.
Pick the speakers so that the checkpoint's held-out speaker (its ``fold``) is one of them
to test an unseen voice.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from omniseq.api.separator import Separator
from omniseq.data.conversation import conversation, window_report
from omniseq.data.speech_mixing import UtteranceBank


def evaluate(ckpt: str, sources: np.ndarray, window: int, good_db: float) -> dict:
    separator = Separator.from_checkpoint(ckpt)
    start = time.process_time()
    stitched = separator.separate(sources.sum(0).astype(np.float32), plot=False)
    cpu_s = time.process_time() - start
    report = window_report(stitched, sources, separator._run_model, window)
    good = report.alone_si_snri >= good_db
    return {
        "checkpoint": ckpt, "windows": len(report.gaps), "cpu_s": round(cpu_s, 1),
        "stitched_si_snri": report.stitched_si_snri.mean(), "alone_si_snri": report.alone_si_snri.mean(),
        "worst_gap_db": report.gaps.min(), "mean_gap_db": report.gaps.mean(),
        "windows_gap<-0.5dB": int((report.gaps < -0.5).sum()),
        "swap_rate": report.swap_rate(), f"windows_alone>={good_db:g}dB": int(good.sum()),
        f"swap_rate_alone>={good_db:g}dB": report.swap_rate(good_db),
        "peak_ratio": report.peak_ratio, "clipped": report.clipped,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--speech", default="fsdd", help="a registered speech dataset or a folder of wavs")
    parser.add_argument("--speakers", nargs=2, default=["george", "lucas"])
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window-seconds", type=float, default=3.5)
    parser.add_argument("--good-db", type=float, default=5.0,
                        help="the swap rate is also given over windows the model alone separates this well")
    args = parser.parse_args()
    import omniseq.data.separation  # noqa: F401  (registers the "fsdd" dataset name)

    rate = 8000
    bank = UtteranceBank(args.speech, rate)
    sources = conversation(bank, tuple(args.speakers), args.seconds, args.seed)
    print(f"conversation: {args.speakers[0]} + {args.speakers[1]}, {args.seconds:g} s, seed {args.seed}", flush=True)
    rows = [evaluate(c, sources, int(args.window_seconds * rate), args.good_db) for c in args.checkpoints]
    print(pd.DataFrame(rows).to_string(index=False, float_format="%.2f"))


if __name__ == "__main__":
    main()
