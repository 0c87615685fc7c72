"""``Separator``: separate recordings of any length with a trained separator.

    sep = Separator.from_checkpoint("runs/separation/demo/checkpoints/best.ckpt")
    sources = sep.separate("meeting.wav", out_dir="out/")   # (S, T); writes wavs + PNG
    sep.separate_file("long.wav", "out/")                    # streamed, flat memory

Input policy (see ``omniseq.domains.audio.io``): other sample rates are
resampled to the model's, stereo is averaged to mono, integer arrays are
scaled to [-1, 1) (int16 by 1/32768), empty or undecodable files and
recordings shorter than the encoder kernel raise ``ValueError``. Any level
runs (each chunk is scaled to peak 1 for the model and back).

Output policy: the sources sum to the input recording (see
``omniseq.domains.audio.chunked``) and are written as 32-bit float wavs, which
hold samples beyond full scale exactly: nothing is clipped (a warning says
when a source peaks above 1). All wavs are written, or none.
"""

from __future__ import annotations

import warnings
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import nn

from omniseq._files import atomic_path
from omniseq.api._saved import load_module, load_payload, module_spec, save_payload
from omniseq.domains.audio.chunked import separate_chunked, separate_stream
from omniseq.domains.audio.io import check_complete, load_audio, resample, to_float, to_mono
from omniseq.recipes.checkpoints import read_checkpoint

__all__ = ["Separator"]


class Separator:
    """Chunked overlap-add separation around a separator ``(B, T) -> (B, S, T)``.

    Args:
        model: the separator module (e.g. ``MaskSeparator``); None builds a small
            untrained dual-path one (train it with ``fit``).
        sample_rate: the rate the model was trained at.
        chunk_seconds, overlap_seconds: chunking of long recordings.
    """

    def __init__(
        self, model: nn.Module | None = None, sample_rate: int = 8000,
        chunk_seconds: float = 4.0, overlap_seconds: float = 2.0,
    ) -> None:
        if model is None:
            from omniseq.backbones.separators import MaskSeparator

            model = MaskSeparator(channels=64, masker_options={"dim": 32, "chunk_size": 50})
        self.model = model.eval()
        self.sample_rate = sample_rate
        self.chunk = int(chunk_seconds * sample_rate)
        self.overlap = int(overlap_seconds * sample_rate)
        self.min_length = int(getattr(model, "kernel_size", 1))

    @classmethod
    def from_checkpoint(cls, path: str | Path, sample_rate: int | None = None, **options) -> Separator:
        """Load a ``SeparationTask`` checkpoint (the rate is read from its DataModule config when saved)."""
        from omniseq.recipes.separation import SeparationTask

        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint file")
        task = SeparationTask.load_from_checkpoint(str(path), map_location="cpu")
        if sample_rate is None:
            saved = read_checkpoint(path).get("datamodule_hyper_parameters", {})
            sample_rate = int(saved.get("sample_rate", 8000))
        return cls(task.backbone, sample_rate, **options)

    def fit(self, datamodule=None, max_time: str = "00:00:02:00", verbose: bool = True, **trainer_options) -> Separator:
        """Train the model with ``SeparationTask`` (default data: synthetic voices).
        ``verbose`` prints a progress line every 30 s and why training stopped."""
        import lightning as L

        from omniseq.data.separation import SeparationDataModule
        from omniseq.recipes.progress import fit_callbacks
        from omniseq.recipes.separation import SeparationTask

        datamodule = datamodule or SeparationDataModule(sample_rate=self.sample_rate, num_train=400, num_val=32, num_test=64)
        task = SeparationTask(self.model.train())
        options = {"max_time": max_time, "enable_checkpointing": False, "logger": False, **fit_callbacks(verbose, trainer_options)}
        options["callbacks"] += trainer_options.pop("callbacks", None) or []
        options.update(trainer_options)
        L.Trainer(**options).fit(task, datamodule=datamodule)
        self.model = task.backbone.eval()
        return self

    def save(self, path: str | Path) -> None:
        """One file of data: the model's registered name, settings and weights, and the chunking."""
        payload = {"model": module_spec(self.model, "Separator"), "sample_rate": self.sample_rate,
                   "chunk": self.chunk, "overlap": self.overlap}
        save_payload(payload, path, "Separator")

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> Separator:
        """Read a ``Separator.save`` file; ``model``: the module to load weights into, for a file
        converted from an earlier version that did not record the model's settings."""
        state = load_payload(path, "Separator", ("model", "sample_rate", "chunk", "overlap"), has_from_checkpoint=True)
        state["model"] = load_module(state["model"], path, "Separator", model)
        sep = cls(state["model"], state["sample_rate"])
        sep.chunk, sep.overlap = state["chunk"], state["overlap"]
        return sep

    def _run_model(self, wav: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(wav)

    def _check_length(self, length: int, source: str) -> None:
        if length < self.min_length:
            raise ValueError(
                f"{source}: {length} samples is shorter than the encoder kernel ({self.min_length} samples "
                f"at {self.sample_rate} Hz); nothing to separate"
            )

    def separate(
        self, audio: str | Path | np.ndarray | torch.Tensor, sample_rate: int | None = None,
        out_dir: str | Path | None = None, plot: bool = True,
    ) -> np.ndarray:
        """Sources ``(S, T)`` of a mono/stereo file or array (``(T,)`` or ``(T, C)``).

        ``sample_rate`` is the array's rate (default: the model's). With
        ``out_dir``, writes ``source_1.wav``... and ``spectrogram.png``.
        """
        if isinstance(audio, (str, Path)):
            wav, _ = load_audio(audio, self.sample_rate)
            source = str(audio)
        else:
            wav = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
            source = "array"
            if wav.ndim == 2 and wav.shape[0] < wav.shape[1] and wav.shape[0] <= 8:
                wav = wav.T  # (C, T) given: soundfile's layout is (T, C)
            wav = to_mono(to_float(wav, source), "mean", source)
            if sample_rate is not None and sample_rate != self.sample_rate:
                wav = resample(wav, sample_rate, self.sample_rate)
        if wav.size == 0:
            raise ValueError(f"{source}: the recording is empty")
        if not np.isfinite(wav).all():
            raise ValueError(f"{source}: contains NaN or infinite samples")
        self._check_length(wav.shape[0], source)
        sources = separate_chunked(self._run_model, wav, self.chunk, self.overlap)
        if out_dir is not None:
            self._write_all(Path(out_dir), sources, source)
            if plot:
                self.plot(wav, sources, Path(out_dir) / "spectrogram.png")
        return sources

    def _write_all(self, out: Path, sources: np.ndarray, source: str) -> None:
        """``source_<i>.wav`` as float wavs, all or none: each goes to a temporary file and
        only when every write succeeded are they renamed (a full disk leaves nothing)."""
        _warn_above_full_scale(float(np.abs(sources).max()), source, out)
        with ExitStack() as staged:
            temps = [staged.enter_context(atomic_path(out / f"source_{i + 1}.wav")) for i in range(len(sources))]
            for tmp, s in zip(temps, sources, strict=True):
                sf.write(str(tmp), np.asarray(s, dtype=np.float32), self.sample_rate, subtype="FLOAT")

    def separate_file(self, path: str | Path, out_dir: str | Path, plot_seconds: float = 30.0) -> list[Path]:
        """Stream a file through the model chunk by chunk, writing ``source_<i>.wav``.

        Memory is bounded by the chunk size. Files at another rate than the
        model's are first loaded whole and resampled (memory then grows with length).
        The wavs are written under temporary names and renamed at the end, so a
        failure part-way (a NaN sample, a read error) leaves no partial output.
        """
        path, out = Path(path), Path(out_dir)
        info = _probe(path)
        if info.samplerate != self.sample_rate:
            sources = self.separate(path, out_dir=out)
            return [out / f"source_{i + 1}.wav" for i in range(len(sources))]
        self._check_length(info.frames, str(path))
        preview: list[np.ndarray] = []
        limit = int(plot_seconds * self.sample_rate)
        with sf.SoundFile(str(path)) as reader, ExitStack() as staged:
            def read(start: int, stop: int) -> np.ndarray:
                reader.seek(start)
                block = to_mono(reader.read(stop - start, dtype="float32", always_2d=False), "mean", str(path))
                if not np.isfinite(block).all():
                    first = start + int(np.flatnonzero(~np.isfinite(block))[0])
                    raise ValueError(f"{path}: contains NaN or infinite samples (the first at sample {first})")
                return block

            writers: list[sf.SoundFile] = []
            peak = 0.0
            for block in separate_stream(self._run_model, read, info.frames, self.chunk, self.overlap):
                if not writers:
                    temps = [staged.enter_context(atomic_path(out / f"source_{i + 1}.wav")) for i in range(block.shape[0])]
                    writers = [staged.enter_context(sf.SoundFile(str(t), "w", self.sample_rate, 1, "FLOAT"))
                               for t in temps]
                for w, s in zip(writers, block, strict=True):
                    w.write(s.astype(np.float32))  # float: never clipped
                peak = max(peak, float(np.abs(block).max()))
                if sum(b.shape[1] for b in preview) < limit:
                    preview.append(block)
            _warn_above_full_scale(peak, str(path), out)
        if preview:
            head = np.concatenate(preview, axis=1)[:, :limit]
            mixture, _ = load_audio(path, self.sample_rate) if info.frames <= limit else (None, None)
            self.plot(mixture if mixture is not None else head.sum(0), head, out / "spectrogram.png")
        return [out / f"source_{i + 1}.wav" for i in range(len(writers))]

    def plot(self, mixture: np.ndarray, sources: np.ndarray, path: str | Path) -> Path:
        """Spectrograms of the mixture and each source, one row each, saved as PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = 1 + len(sources)
        fig, axes = plt.subplots(rows, 1, figsize=(10, 2.2 * rows), sharex=True, squeeze=False)
        for ax, signal, title in zip(axes[:, 0], [mixture, *sources], ["mixture"] + [f"source {i + 1}" for i in range(len(sources))], strict=True):
            ax.specgram(np.asarray(signal, dtype=np.float64) + 1e-9, NFFT=256, Fs=self.sample_rate, noverlap=192)
            ax.set_ylabel("Hz")
            ax.set_title(title, fontsize=9)
        axes[-1, 0].set_xlabel("seconds")
        fig.tight_layout()
        path = Path(path)
        try:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=80)
        finally:
            plt.close(fig)
        return path


def _warn_above_full_scale(peak: float, source: str, out: Path) -> None:
    if peak > 1.0:
        warnings.warn(
            f"{source}: separated sources peak at {peak:.3g}, above full scale; {out}/source_*.wav are "
            "32-bit float wavs that keep every sample, but a conversion to 16-bit PCM would clip them: "
            "scale them by 1/peak first", stacklevel=3,
        )


def _probe(path: Path) -> sf._SoundFileInfo:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such audio file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty (0 bytes)")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise ValueError(f"{path}: cannot be decoded as audio ({err}); is it a valid wav/flac/ogg file?") from err
    if info.frames == 0:
        raise ValueError(f"{path}: the file holds no samples (empty recording)")
    check_complete(info, str(path))
    return info
