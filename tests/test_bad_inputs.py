"""Bad-input catalogue: every way users commonly get their input wrong, across the four
domains and the CLI/checkpoints, through the entry points they call.

Each case asserts the exception type and a message that names the problem and the
expected form; cases that write outputs also assert no partial file is left behind.
The README's "Troubleshooting" table lists the same errors.
"""

from __future__ import annotations

import gzip
import io
import re
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from lightning.pytorch.callbacks import LambdaCallback
from PIL import Image

from omniseq.api import DNAEncoder, Forecaster, Segmenter, Separator
from omniseq.backbones.blocks import Block
from omniseq.backbones.dna import DNAModel
from omniseq.backbones.itransformer import ITransformer
from omniseq.backbones.separators import MaskSeparator
from omniseq.data.forecasting import ForecastingDataModule
from omniseq.data.genomics import GenomePretrainDataModule, SequenceClassificationDataModule
from omniseq.data.gridded import GriddedDataModule
from omniseq.data.segmentation import SegmentationDataModule
from omniseq.data.separation import SeparationDataModule
from omniseq.domains.audio.io import load_audio
from omniseq.domains.genomics import NucleotideTokenizer
from omniseq.domains.vision import SegmentationNet
from omniseq.recipes.checkpoints import CheckpointMismatchError
from omniseq.recipes.cli import main
from omniseq.recipes.forecasting import ForecastingTask
from omniseq.recipes.segmentation import OverlayWriter, SegmentationTask

RATE = 8000
QUIET = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu"}


def files_in(folder: Path) -> list[str]:
    """Every file under ``folder`` (none when it does not exist): partial outputs would show here."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def raw_file(tmp: Path, name: str, data: bytes) -> Path:
    (tmp / name).write_bytes(data)
    return tmp / name


def empty_dir(tmp: Path, name: str) -> str:
    (tmp / name).mkdir()
    return str(tmp / name)


# -- time series ---------------------------------------------------------------------------


def series(n: int = 200) -> pd.DataFrame:
    return pd.DataFrame({"date": pd.date_range("2020-01-01", periods=n, freq="h"),
                         "a": np.linspace(0.0, 1.0, n), "OT": np.sin(np.arange(n) / 5.0)})


def csv_file(tmp: Path, frame: pd.DataFrame, name: str = "series.csv") -> str:
    frame.to_csv(tmp / name, index=False)
    return str(tmp / name)


def netcdf_file(tmp: Path, truncate: bool = False) -> str:
    import xarray as xr

    frame = series()
    dataset = xr.Dataset({"t2m": ("time", frame["OT"].to_numpy())}, coords={"time": frame["date"].to_numpy()})
    dataset.to_netcdf(tmp / "full.nc")
    if truncate:
        (tmp / "cut.nc").write_bytes((tmp / "full.nc").read_bytes()[:300])
        return str(tmp / "cut.nc")
    return str(tmp / "full.nc")


def gridded_file(tmp: Path) -> str:
    import xarray as xr

    times = pd.date_range("2020-01-01", periods=24 * 12, freq="h")
    grid = xr.Dataset({"t2m": (("time", "lat", "lon"), np.random.default_rng(0).random((len(times), 3, 4)))},
                      coords={"time": times, "lat": [50.0, 51.0, 52.0], "lon": [0.0, 1.0, 2.0, 3.0]})
    grid.to_netcdf(tmp / "grid.nc")
    return str(tmp / "grid.nc")


def with_cell(value: float) -> pd.DataFrame:
    frame = series()
    frame.loc[50, "a"] = value
    return frame


def forecasting(path=None, **options):
    return lambda: ForecastingDataModule(path, seq_len=16, pred_len=8, **options).setup()


SERIES_CASES = [
    pytest.param(lambda t: forecasting(csv_file(t, with_cell(np.nan))), ValueError,
                 r"series\.csv: column 'a' has a missing or non-finite value at data row 50.*fill='interpolate'",
                 id="series-nan"),
    pytest.param(lambda t: forecasting(data=with_cell(np.inf)), ValueError,
                 r"column 'a' has a missing or non-finite value at data row 50", id="series-inf"),
    pytest.param(lambda t: forecasting(csv_file(t, with_cell(-9999.0)), missing_values=[-9999]), ValueError,
                 r"missing or non-finite value or a sentinel in \[-9999\] at data row 50", id="series-sentinel"),
    pytest.param(lambda t: forecasting(csv_file(t, series().drop(columns="date"))), ValueError,
                 r"date column 'date' not found; available columns: \['a', 'OT'\] \(pass date_column=None",
                 id="csv-without-date-column"),
    pytest.param(lambda t: forecasting(str(t / "missing.csv")), FileNotFoundError,
                 r"missing\.csv' is neither an existing file nor a registered dataset", id="series-missing-file"),
    pytest.param(lambda t: forecasting(csv_file(t, pd.DataFrame(), "empty.csv")), ValueError,
                 r"empty\.csv: the file is empty; expected a CSV table with a header row", id="csv-empty-file"),
    pytest.param(lambda t: forecasting(csv_file(t, series().iloc[:0], "header.csv")), ValueError,
                 r"header\.csv: the table has no data rows \(columns: \['date', 'a', 'OT'\]\)", id="csv-header-only"),
    pytest.param(lambda t: forecasting(str(raw_file(t, "bad.parquet", b"PAR1 not parquet"))), ValueError, r"bad\.parquet: cannot be read as Parquet .*really Parquet\?", id="parquet-corrupt"),
    pytest.param(lambda t: forecasting(netcdf_file(t, truncate=True)), ValueError,
                 r"cut\.nc: cannot be read as NetCDF .*complete \(not truncated\)", id="netcdf-truncated"),
    pytest.param(lambda t: forecasting(netcdf_file(t), features="S", target="tp"), ValueError,
                 r"full\.nc: target column 'tp' not found; available columns: \['date', 't2m'\]",
                 id="netcdf-target-variable-missing"),
    pytest.param(lambda t: lambda: GriddedDataModule(gridded_file(t), variables=["tp"], seq_len=4, pred_len=4),
                 ValueError, r"variable\(s\) \['tp'\] not found; gridded \(time, lat, lon\) variables: \['t2m'\]",
                 id="netcdf-grid-variable-missing"),
    pytest.param(lambda t: lambda: ITransformer(16, 8, num_channels=3, d_model=16, d_ff=16, depth=1)(
                 torch.randn(2, 16, 5)), ValueError, r"ITransformer: x must have shape \(B, 16, 3\), got \(2, 16, 5\)",
                 id="series-wrong-channel-count-to-backbone"),
    pytest.param(lambda t: lambda: Block(32, mixer="gla")(torch.randn(2, 10, 16)), ValueError,
                 r"Block expects tokens of shape \(B, L, 32\), got \(2, 10, 16\)", id="block-wrong-width"),
]


@pytest.mark.parametrize(("make", "error", "match"), SERIES_CASES)
def test_series_inputs(tmp_path, make, error, match):
    call = make(tmp_path)
    with pytest.raises(error, match=match):
        call()


@pytest.fixture(scope="module")
def fitted_forecaster(tmp_path_factory) -> tuple[Forecaster, Path]:
    forecaster = Forecaster(seq_len=16, pred_len=8, max_epochs=1, model_options={"d_model": 8, "d_ff": 8, "depth": 1},
                            trainer_options={"limit_train_batches": 1, "limit_val_batches": 1, **QUIET})
    forecaster.fit(series())
    path = forecaster.save(tmp_path_factory.mktemp("forecaster") / "forecaster.pt")
    return forecaster, path


def test_series_wrong_columns_for_a_fitted_model(fitted_forecaster):
    forecaster, _ = fitted_forecaster
    with pytest.raises(ValueError, match=r"fitted on 2 input column\(s\) \['a', 'OT'\], but the data has 3"):
        forecaster.set_data(series().assign(b=1.0))


def test_forecaster_save_of_unpicklable_settings_leaves_no_file(tmp_path):
    callback = LambdaCallback(on_train_start=lambda trainer, module: None)
    forecaster = Forecaster(seq_len=16, pred_len=8, max_epochs=1, model_options={"d_model": 8, "d_ff": 8, "depth": 1},
                            trainer_options={"limit_train_batches": 1, "limit_val_batches": 1, "callbacks": [callback],
                                             **QUIET}).fit(series())
    target = tmp_path / "out" / "model.pt"
    with pytest.raises(ValueError, match=r"Forecaster\.save: .*model\.pt was not written: the settings hold an object"):
        forecaster.save(target)
    assert files_in(tmp_path / "out") == []


# -- vision ----------------------------------------------------------------------------------


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


RNG = np.random.default_rng(0)
GRAY = (RNG.random((32, 32)) * 255).astype(np.uint8)
MASK = (RNG.random((32, 32)) > 0.5).astype(np.uint8)
RGB = (RNG.random((32, 32, 3)) * 255).astype(np.uint8)


def with_pixel(value: float) -> np.ndarray:
    image = RNG.random((32, 32)).astype(np.float32)
    image[3, 4] = value
    return image


def image_folder(tmp: Path, images: list, masks: list, suffix: str = ".png") -> str:
    """``image/`` and ``label/`` folders; items are arrays (written as ``suffix``) or raw bytes."""
    for sub, items in (("image", images), ("label", masks)):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
        for i, item in enumerate(items):
            target = tmp / sub / f"{i}{suffix}"
            if isinstance(item, bytes):
                target.write_bytes(item)
            elif suffix == ".npy":
                np.save(target, item)
            else:
                Image.fromarray(item).save(target)
    return str(tmp)


def segmentation(root: str, **options):
    return lambda: SegmentationDataModule(root, crop_size=(16, 16), **options).setup()


PNG, TIFF = encoded(GRAY, "PNG"), encoded(GRAY, "TIFF")
TINY_VIG = {"depth": 2, "img_size": 32, "embed_dim": 32, "num_heads": 2}
VISION_CASES = [
    pytest.param(lambda t: segmentation(image_folder(t, [], [])), FileNotFoundError,
                 r"image has no images \(\.png, \.tif", id="image-folder-empty"),
    pytest.param(lambda t: segmentation(image_folder(t, [PNG[: len(PNG) // 2]] * 3, [MASK] * 3)), ValueError,
                 r"0\.png: the image file is truncated or corrupt .*re-export it", id="png-truncated"),
    pytest.param(lambda t: segmentation(image_folder(t, [TIFF[: len(TIFF) // 2]] * 3, [MASK] * 3, ".tif")), ValueError,
                 r"0\.tif: the image file is truncated or corrupt", id="tiff-truncated"),
    pytest.param(lambda t: segmentation(image_folder(t, [b"not an image"] * 3, [MASK] * 3)), ValueError,
                 r"0\.png: not a recognised image file; expected one of \.png, \.tif", id="image-not-an-image"),
    pytest.param(lambda t: segmentation(image_folder(t, [with_pixel(np.nan)] * 3, [MASK.astype(np.int64)] * 3, ".npy")),
                 ValueError, r"0\.npy: 1 NaN or infinite pixel value\(s\), the first at index \(3, 4\)", id="image-nan"),
    pytest.param(lambda t: segmentation(image_folder(t, [with_pixel(np.inf)] * 3, [MASK.astype(np.int64)] * 3, ".npy")),
                 ValueError, r"NaN or infinite pixel value\(s\), the first at index \(3, 4\); images must hold finite",
                 id="image-inf"),
    pytest.param(lambda t: segmentation(image_folder(t, [GRAY] * 3, [MASK[:16]] * 3)), ValueError,
                 r"image 0\.png has size \(32, 32\) but mask 0\.png has \(16, 32\)", id="mask-size-mismatch"),
    pytest.param(lambda t: segmentation(image_folder(t, [GRAY] * 3, [MASK * 7] * 3)), ValueError,
                 r"mask values \[7\] are outside classes 0\.\.1 \(ignore_index=255\); pass value_map",
                 id="mask-values-outside-classes"),
    pytest.param(lambda t: segmentation(image_folder(t, [GRAY] * 3, [MASK] * 2)), ValueError,
                 r"3 images but 2 masks", id="image-mask-count-mismatch"),
    pytest.param(lambda t: segmentation(image_folder(t, [GRAY, RGB, GRAY], [MASK] * 3), train_indices="0-1"),
                 ValueError, r"training images have different channel counts \[1, 3\]", id="image-channels-differ"),
    pytest.param(lambda t: segmentation(image_folder(t, [GRAY, GRAY, RGB], [MASK] * 3)), ValueError,
                 r"test image\(s\) \['2'\] have another channel count than the training images \(1\)",
                 id="image-channels-differ-from-training"),
    pytest.param(lambda t: segmentation(str(t / "absent")), FileNotFoundError,
                 r"segmentation root .*absent is not a folder", id="image-root-missing"),
    pytest.param(lambda t: lambda: SegmentationNet("vig_tiny_patch16_224", 2, 1, backbone_options=TINY_VIG)(
                 torch.randn(1, 3, 32, 32)), ValueError, r"SegmentationNet expects input \(B, C, H, W\) with C = 1, "
                 r"got \(1, 3, 32, 32\)", id="image-wrong-channels-to-backbone"),
]


@pytest.mark.parametrize(("make", "error", "match"), VISION_CASES)
def test_vision_inputs(tmp_path, make, error, match):
    call = make(tmp_path)
    with pytest.raises(error, match=match):
        call()


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter("vig_tiny_patch16_224", num_classes=2, in_chans=1, window=(32, 32), backbone_options=TINY_VIG)


@pytest.mark.parametrize(("image", "error", "match"), [
    pytest.param(RGB, ValueError, r"expected an image with 1 channel\(s\) and 2 spatial dims, got shape \(32, 32, 3\)",
                 id="rgb-into-gray-model"),
    pytest.param(with_pixel(np.inf), ValueError, r"Segmenter\.predict: the image: 1 NaN or infinite pixel",
                 id="inf-pixel"),
    pytest.param("missing.png", FileNotFoundError, r"missing\.png: no such image file", id="missing-path"),
])
def test_segmenter_predict_inputs(segmenter, image, error, match):
    with pytest.raises(error, match=match):
        segmenter.predict(image)


def test_overlays_of_a_nan_image_are_not_written(tmp_path, segmenter):
    out = tmp_path / "overlays"
    task = SegmentationTask(segmenter.task.backbone)
    good, bad = torch.zeros(1, 32, 32), torch.zeros(1, 32, 32)
    bad[0, 5, 6] = float("nan")
    loader = torch.utils.data.DataLoader([{"image": good, "index": 0}, {"image": bad, "index": 1}], batch_size=2)
    with pytest.raises(ValueError, match=r"batch 0 has NaN or infinite pixel values \(first at .* \(1, 0, 5, 6\)\)"):
        L.Trainer(**QUIET, callbacks=[OverlayWriter(str(out))]).predict(task, dataloaders=loader)
    assert files_in(out) == []


# -- audio -----------------------------------------------------------------------------------


TONE = (0.3 * np.sin(np.arange(RATE) / 5.0)).astype(np.float32)


def wav_file(tmp: Path, name: str, samples: np.ndarray = TONE, rate: int = RATE, subtype: str = "PCM_16") -> Path:
    sf.write(tmp / name, samples, rate, subtype=subtype)
    return tmp / name


def cut_wav(tmp: Path) -> Path:
    whole = wav_file(tmp, "whole.wav").read_bytes()
    (tmp / "cut.wav").write_bytes(whole[: len(whole) // 2])
    return tmp / "cut.wav"


def nan_at(index: int, length: int = RATE) -> np.ndarray:
    samples = (0.1 * np.random.default_rng(1).standard_normal(length)).astype(np.float32)
    samples[index] = np.nan
    return samples


AUDIO_CASES = [
    pytest.param(lambda t: load_audio(raw_file(t, "bad.wav", b"RIFF\0\0\0\0WAVEjunk")), ValueError, r"bad\.wav: cannot be decoded as audio .*is it a valid wav/flac/ogg file\?", id="wav-corrupt"),
    pytest.param(lambda t: load_audio(cut_wav(t)), ValueError,
                 r"cut\.wav: truncated wav: the header declares 16000 bytes of samples but the file holds \d+",
                 id="wav-truncated"),
    pytest.param(lambda t: load_audio(wav_file(t, "zero.wav", np.zeros(0, np.float32))), ValueError,
                 r"zero\.wav: the file holds no samples \(empty recording\)", id="wav-zero-length"),
    pytest.param(lambda t: load_audio(raw_file(t, "empty.wav", b"")), ValueError,
                 r"empty\.wav: the file is empty \(0 bytes\)", id="wav-zero-bytes"),
    pytest.param(lambda t: load_audio(wav_file(t, "fast.wav", rate=16000), RATE, resample=False), ValueError,
                 r"sample rate is 16000 Hz but 8000 Hz is required; resample it \(resample=True\)", id="wav-other-rate"),
    pytest.param(lambda t: load_audio(wav_file(t, "stereo.wav", np.stack([TONE, TONE], 1)), channels="refuse"),
                 ValueError, r"has 2 channels but mono was required; mix it down \(channels='mean'\)",
                 id="wav-stereo-refused"),
    pytest.param(lambda t: load_audio(t / "missing.wav"), FileNotFoundError, r"missing\.wav: no such audio file",
                 id="wav-missing"),
    pytest.param(lambda t: load_audio(wav_file(t, "nan.wav", nan_at(100), subtype="FLOAT")), ValueError,
                 r"nan\.wav: contains NaN or infinite samples", id="wav-nan"),
    pytest.param(lambda t: SeparationDataModule(empty_dir(t, "speech")).setup(), ValueError,
                 r"speech: no \.wav files found", id="wav-folder-empty"),
    pytest.param(lambda t: MaskSeparator(channels=16, masker_options={"dim": 16, "chunk_size": 20, "depth": 1})(
                 torch.randn(1, 2, 800)), ValueError, r"mixture must have shape \(B, T\) \(mono; mix stereo down first\)",
                 id="separator-stereo-tensor"),
]


@pytest.mark.parametrize(("make", "error", "match"), AUDIO_CASES)
def test_audio_inputs(tmp_path, make, error, match):
    with pytest.raises(error, match=match):
        make(tmp_path)


@pytest.fixture(scope="module")
def separator() -> Separator:
    model = MaskSeparator(channels=16, masker_options={"dim": 16, "chunk_size": 20, "depth": 1})
    return Separator(model, sample_rate=RATE, chunk_seconds=1.0, overlap_seconds=0.25)


@pytest.mark.parametrize(("run", "match"), [
    pytest.param(lambda sep, t, out: sep.separate(nan_at(10), out_dir=out),
                 r"array: contains NaN or infinite samples", id="separate-nan-array"),
    pytest.param(lambda sep, t, out: sep.separate_file(wav_file(t, "late.wav", nan_at(20000, 3 * RATE), subtype="FLOAT"), out),
                 r"late\.wav: contains NaN or infinite samples \(the first at sample 20000\)", id="stream-nan-mid-file"),
    pytest.param(lambda sep, t, out: sep.separate_file(cut_wav(t), out),
                 r"cut\.wav: truncated wav", id="stream-truncated"),
    pytest.param(lambda sep, t, out: sep.separate(np.zeros(4, np.float32), out_dir=out),
                 r"4 samples is shorter than the encoder kernel \(16 samples at 8000 Hz\)", id="separate-too-short"),
])
def test_separation_failures_write_nothing(tmp_path, separator, run, match):
    out = tmp_path / "separated"
    with pytest.raises(ValueError, match=match):
        run(separator, tmp_path, out)
    assert files_in(out) == []


def test_mixture_lists_are_not_written_when_a_wav_is_corrupt(tmp_path):
    for speaker in ("ann", "bob", "cat"):
        (tmp_path / "speech" / speaker).mkdir(parents=True)
        for index in range(10):
            wav_file(tmp_path / "speech" / speaker, f"0_{speaker}_{index}.wav", TONE[: 2000 + 100 * index])
    for index in range(5):  # the test split (indices 0-4) of every speaker
        (tmp_path / "speech" / "bob" / f"0_bob_{index}.wav").write_bytes(b"RIFF garbage")
        (tmp_path / "speech" / "cat" / f"0_cat_{index}.wav").write_bytes(b"RIFF garbage")
    lists = tmp_path / "lists"
    datamodule = SeparationDataModule(str(tmp_path / "speech"), num_train=4, num_val=4, num_test=4,
                                      list_dir=str(lists))
    with pytest.raises(ValueError, match=r"0_(bob|cat)_\d\.wav: cannot be decoded as audio"):
        datamodule.setup()
    assert files_in(lists) == []  # not even val.csv, which was drawn without error


# -- genomics --------------------------------------------------------------------------------


def text_file(tmp: Path, name: str, text: str) -> str:
    (tmp / name).write_text(text)
    return str(tmp / name)


def cut_gzip(tmp: Path) -> str:
    data = gzip.compress((">chr1\n" + "ACGT" * 5000 + "\n").encode())
    (tmp / "genome.fa.gz").write_bytes(data[: len(data) // 2])
    return str(tmp / "genome.fa.gz")


def split_dir(tmp: Path, train: str, dev: str, test: str, suffix: str = ".csv") -> str:
    for split, text in (("train", train), ("dev", dev), ("test", test)):
        (tmp / f"{split}{suffix}").write_text(text)
    return str(tmp)


def fasta_with_labels(tmp: Path) -> str:
    for split in ("train", "dev", "test"):
        (tmp / f"{split}.fa").write_text(">a\nACGTAC\n>b\nTTTTGG\n>c\nGGGCCC\n")
        (tmp / f"{split}.labels.csv").write_text("id,label\na,0\nb,1\nz,1\n")
    return str(tmp)


def pretrain(path: str):
    return lambda: GenomePretrainDataModule(path, seq_len=4).setup()


def classify(data_dir: str):
    return lambda: SequenceClassificationDataModule(data_dir=data_dir).setup()


LABELLED = "sequence,label\nACGT,0\nACGA,1\n"
GENOMICS_CASES = [
    pytest.param(lambda t: pretrain(text_file(t, "x.fa", ">chr1\nACGTACGT\nACGXACGT\n")), ValueError,
                 r"x\.fa record 'chr1': invalid character 'X' at position 11 \(0-based\); expected A C G T N",
                 id="fasta-invalid-character"),
    pytest.param(lambda t: pretrain(text_file(t, "x.fa", ">r1\nACGT\n>r2\n>r3\nACGT\n")), ValueError,
                 r"x\.fa: record 'r2' has an empty sequence", id="fasta-empty-record"),
    pytest.param(lambda t: pretrain(text_file(t, "x.fa", "")), ValueError,
                 r"x\.fa: no FASTA records \(empty file or not FASTA: records start with '>'\)", id="fasta-empty-file"),
    pytest.param(lambda t: pretrain(text_file(t, "x.fa", "ACGT\nACGT\n")), ValueError,
                 r"x\.fa: not valid FASTA: each record starts with a '>id' line", id="fasta-no-header"),
    pytest.param(lambda t: pretrain(cut_gzip(t)), ValueError,
                 r"genome\.fa\.gz: truncated or corrupt gzip data .*re-download", id="fasta-gzip-truncated"),
    pytest.param(lambda t: pretrain(str(t / "absent.fa")), FileNotFoundError,
                 r"absent\.fa' is neither an existing file nor a registered dataset", id="fasta-missing"),
    pytest.param(lambda t: classify(fasta_with_labels(t)), ValueError,
                 r"do not match .*train\.fa: 1 record\(s\) without a label \['c'\], 1 label\(s\) without a record \['z'\]",
                 id="labels-do-not-match-sequences"),
    pytest.param(lambda t: classify(split_dir(t, LABELLED, "sequence,label\nACGTACGTACGT,0\n", LABELLED)), ValueError,
                 r"dev\.csv row 0: 12 tokens exceed the model's max_length=4; use overflow='truncate'",
                 id="sequence-longer-than-maximum"),
    pytest.param(lambda t: classify(split_dir(t, "seq,y\nACGT,0\n", LABELLED, LABELLED)), ValueError,
                 r"train\.csv: missing column\(s\) \['label', 'sequence'\]; expected 'sequence,label'",
                 id="labels-csv-wrong-columns"),
    pytest.param(lambda t: classify(split_dir(t, "sequence,label\nACGT,0\nACGA,x\n", LABELLED, LABELLED)), ValueError,
                 r"label 'x' at row 1 is not an integer class", id="labels-not-integers"),
    pytest.param(lambda t: classify(str(t)), FileNotFoundError,
                 r"no train\.csv\[\.gz\] or train\.fa\[sta\]\[\.gz\] found", id="fasta-dir-empty"),
    pytest.param(lambda t: lambda: DNAEncoder(tiny_dna(), NucleotideTokenizer(max_length=8)).embed(["ACGT" * 4]),
                 ValueError, r"sequence 0: 16 tokens exceed the model's max_length=8", id="encoder-sequence-too-long"),
    pytest.param(lambda t: lambda: DNAEncoder(tiny_dna()).embed(str(t / "reads.fa")), FileNotFoundError,
                 r"reads\.fa: no such FASTA file \(a string with '/' or '\.' is read as a path", id="encoder-missing-fasta"),
    pytest.param(lambda t: lambda: tiny_dna()(torch.randn(2, 8)), ValueError,
                 r"DNAModel expects token ids of shape \(B, L\) and dtype long, got \(2, 8\) torch\.float32",
                 id="dna-backbone-float-input"),
]


def tiny_dna() -> DNAModel:
    return DNAModel(dim=16, depth=1, mixer="attention")


@pytest.mark.parametrize(("make", "error", "match"), GENOMICS_CASES)
def test_genomics_inputs(tmp_path, make, error, match):
    call = make(tmp_path)
    with pytest.raises(error, match=match):
        call()


# -- CLI and checkpoints ---------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "match"), [
    pytest.param(["--model.init_args.bogus_key", "3"], r"Option 'bogus_key' is not accepted", id="unknown-model-key"),
    pytest.param(["--model.backbone.init_args.d_modle", "3"], r"ITransformer'[\s\S]*Option 'd_modle' is not accepted",
                 id="unknown-backbone-key"),
    pytest.param(["--modle.lr", "3"], r"unrecognized arguments: --modle\.lr 3", id="unknown-section"),
])
def test_cli_unknown_config_key_names_it(capsys, extra, match):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "forecasting/demo_itransformer", *extra])
    assert exit_info.value.code == 2
    assert re.search(match, capsys.readouterr().err)


def test_cli_unknown_key_in_a_yaml_file(tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("model:\n  class_path: omniseq.recipes.forecasting.ForecastingTask\n  init_args:\n    lrr: 0.1\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config)])
    assert "Option 'lrr' is not accepted" in capsys.readouterr().err


def test_cli_unknown_recipe_name():
    with pytest.raises(SystemExit, match=r"--config 'forecasting/nope' is neither a file nor a recipe name\. Recipes:"):
        main(["fit", "--config", "forecasting/nope"])


@pytest.fixture(scope="module")
def forecasting_checkpoint(tmp_path_factory) -> Path:
    """A real ForecastingTask checkpoint, as the trainer writes it."""
    backbone = ITransformer(16, 8, num_channels=2, d_model=16, d_ff=16, depth=1)
    datamodule = ForecastingDataModule(data=series(), seq_len=16, pred_len=8, batch_size=8)
    folder = tmp_path_factory.mktemp("checkpoints")
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, enable_checkpointing=False, default_root_dir=folder, **QUIET)
    trainer.fit(ForecastingTask(backbone), datamodule=datamodule)
    path = folder / "forecasting.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_cli_checkpoint_of_another_recipe(forecasting_checkpoint):
    with pytest.raises(CheckpointMismatchError, match=r"is a checkpoint of ForecastingTask \(backbone ITransformer\), "
                       r"but the config builds SegmentationTask; pass the recipe the checkpoint was trained with"):
        main(["test", "--config", "segmentation/demo_synthetic_vig", "--ckpt_path", str(forecasting_checkpoint)])


def test_task_load_from_checkpoint_of_another_task(forecasting_checkpoint):
    with pytest.raises(CheckpointMismatchError, match=r"is a checkpoint of ForecastingTask \(backbone ITransformer\); "
                       r"SegmentationTask\.load_from_checkpoint cannot load it\. Use ForecastingTask"):
        SegmentationTask.load_from_checkpoint(forecasting_checkpoint)


def test_wrong_architecture_state_dict_is_summarised(forecasting_checkpoint):
    wider = ITransformer(16, 8, num_channels=2, d_model=32, d_ff=32, depth=2)
    with pytest.raises(CheckpointMismatchError, match=r"do not fit ForecastingTask \(backbone ITransformer\): "
                       r"12 missing keys \(e\.g\. backbone\.blocks\.1\..*shape mismatches \(e\.g\. backbone\.embedding"
                       r"\.weight \(16, 16\) in the checkpoint vs \(32, 16\) in the model") as info:
        ForecastingTask.load_from_checkpoint(forecasting_checkpoint, backbone=wider)
    assert len(str(info.value)) < 1000  # a summary, not torch's listing of every key


@pytest.mark.parametrize(("load", "error", "match"), [
    pytest.param(lambda ckpt, saved, t: Segmenter.load(ckpt), ValueError,
                 r"forecasting\.ckpt is a Lightning training checkpoint of ForecastingTask \(backbone ITransformer\), "
                 r"not a file written by Segmenter\.save", id="segmenter-from-forecasting-checkpoint"),
    pytest.param(lambda ckpt, saved, t: Forecaster.load(segmenter_file(t)), ValueError,
                 r"segmenter\.pt was written by Segmenter\.save, not Forecaster\.save; read it with Segmenter\.load",
                 id="forecaster-from-segmenter-file"),
    # A Forecaster file is plain tensors and strings (it loads weights-only), so its tag names the loader.
    pytest.param(lambda ckpt, saved, t: Segmenter.load(saved), ValueError,
                 r"forecaster\.pt was written by Forecaster\.save, not Segmenter\.save; read it with Forecaster\.load",
                 id="segmenter-from-forecaster-file"),
    pytest.param(lambda ckpt, saved, t: Separator.from_checkpoint(ckpt), CheckpointMismatchError,
                 r"checkpoint of ForecastingTask .*SeparationTask\.load_from_checkpoint cannot load it",
                 id="separator-from-forecasting-checkpoint"),
    pytest.param(lambda ckpt, saved, t: DNAEncoder.load(text_file(t, "x.fa", ">r\nACGT\n")), ValueError,
                 r"DNAEncoder file \S*x\.fa is not a model file: it starts with b'>r\\nA'", id="encoder-from-fasta"),
    pytest.param(lambda ckpt, saved, t: Forecaster.load(t / "absent.pt"), FileNotFoundError,
                 r"absent\.pt: no such file \(expected one written by Forecaster\.save\)", id="forecaster-missing-file"),
])
def test_loading_the_wrong_file(tmp_path, forecasting_checkpoint, fitted_forecaster, load, error, match):
    with pytest.raises(error, match=match):
        load(forecasting_checkpoint, fitted_forecaster[1], tmp_path)


def segmenter_file(tmp: Path) -> Path:
    Segmenter("vig_tiny_patch16_224", in_chans=1, window=(32, 32), backbone_options=TINY_VIG).save(tmp / "segmenter.pt")
    return tmp / "segmenter.pt"
