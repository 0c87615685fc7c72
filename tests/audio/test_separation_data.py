"""SeparationDataModule: disjoint splits, fixed CSV lists, levels, noise SNR, real FSDD."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from omniseq.data.separation import SeparationDataModule, build_mixture
from tests.conftest import shared_dataset


def _dm(tmp_path, **options) -> SeparationDataModule:
    defaults = dict(num_train=16, num_val=6, num_test=8, batch_size=4, list_dir=str(tmp_path / "lists"))
    dm = SeparationDataModule(**{**defaults, **options})
    dm.setup()
    return dm


def _indices(dm, specs):
    keys = {u.key: u for u in dm.bank.utterances}
    return {keys[k].index for s in specs for k in s["keys"]}


def test_batches_splits_and_levels(tmp_path):
    dm = _dm(tmp_path)
    batch = next(iter(dm.train_dataloader()))
    assert batch["mixture"].shape == (4, 8000) and batch["sources"].shape == (4, 2, 8000)
    torch.testing.assert_close(batch["mixture"], batch["sources"].sum(1), rtol=1e-5, atol=1e-6)
    train_specs = [dm.datasets["train"].sampler(epoch, i) for epoch in range(3) for i in range(16)]
    assert _indices(dm, train_specs).isdisjoint(set(range(0, 8)))
    assert _indices(dm, dm.datasets["test"].specs) <= set(range(0, 5))
    assert _indices(dm, dm.datasets["val"].specs) <= set(range(5, 8))
    for spec in dm.datasets["test"].specs:
        speakers = {k.split("/")[1] for k in spec["keys"]}
        assert len(speakers) == 2 and -5 <= spec["gains_db"][1] <= 5
        item = build_mixture(spec, dm.bank, {})
        power = item["sources"].double().square().mean(-1)
        # both utterances were normalised to unit power before the gain; padding dilutes power equally only
        # when both fit whole, so compare the energies per non-zero sample
        active = (item["sources"] != 0).double().sum(-1)
        ratio_db = 10 * torch.log10((power[1] / active[1]) / (power[0] / active[0]))
        assert ratio_db.item() == pytest.approx(spec["gains_db"][1], abs=0.5)


def test_fixed_lists_are_written_and_reread(tmp_path):
    first = _dm(tmp_path)
    assert len(list((tmp_path / "lists").glob("test-*.csv"))) == 1 and len(list((tmp_path / "lists").glob("val-*.csv"))) == 1
    again = _dm(tmp_path)
    assert again.datasets["test"].specs == first.datasets["test"].specs
    a, b = first.datasets["test"][3], again.datasets["test"][3]
    assert torch.equal(a["mixture"], b["mixture"])
    # training mixtures are a function of (seed, epoch, index) only, and fresh every epoch
    assert torch.equal(first.datasets["train"][(2, 5)]["sources"], again.datasets["train"][(2, 5)]["sources"])
    assert not torch.equal(first.datasets["train"][(2, 5)]["sources"], first.datasets["train"][(3, 5)]["sources"])
    loader = first.train_dataloader()
    epoch0 = next(iter(loader))["mixture"]
    loader.sampler.set_epoch(1)
    assert not torch.equal(next(iter(loader))["mixture"], epoch0)
    loader.sampler.set_epoch(0)
    assert torch.equal(next(iter(loader))["mixture"], epoch0)
    other = _dm(tmp_path / "other", seed=1)
    assert other.datasets["test"].specs != first.datasets["test"].specs


def test_three_speakers_and_noise_at_snr(tmp_path):
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    rng = np.random.default_rng(0)
    sf.write(noise_dir / "hum.wav", (0.1 * rng.standard_normal(16000 * 3)).astype(np.float32), 16000, subtype="FLOAT")
    dm = _dm(tmp_path, num_speakers=3, noise=str(noise_dir), snr_range_db=(5.0, 5.0))
    assert len(dm.datasets["train"].noises["hum.wav"]) == int(0.8 * 24000)  # resampled to 8 kHz, 80% trains
    item = dm.datasets["test"][0]
    assert item["sources"].shape[0] == 3
    speech = item["sources"].double().sum(0)
    noise = item["mixture"].double() - speech
    snr = 10 * torch.log10(speech.square().sum() / noise.square().sum())
    assert snr.item() == pytest.approx(5.0, abs=0.05)


def test_bad_options(tmp_path):
    with pytest.raises(ValueError, match="num_speakers must be 2 or 3"):
        SeparationDataModule(num_speakers=4)
    with pytest.raises(ValueError, match="fewer than num_speakers"):
        _dm(tmp_path, test_indices=(0, 50), val_indices=(50, 50))
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .wav files"):
        _dm(tmp_path, speech=str(empty))


def test_folder_of_speaker_subfolders(tmp_path):
    for speaker in ("ann", "bob"):
        (tmp_path / "speech" / speaker).mkdir(parents=True)
        for i in range(4):
            sf.write(tmp_path / "speech" / speaker / f"utt{i}.wav", np.random.default_rng(i).standard_normal(3000).astype(np.float32) * 0.1, 8000)
    dm = _dm(tmp_path, speech=str(tmp_path / "speech"), test_indices=(0, 1), val_indices=(1, 2))
    assert {u.speaker for u in dm.bank.utterances} == {"ann", "bob"}
    assert _indices(dm, dm.datasets["test"].specs) == {0}


@pytest.mark.slow
def test_real_fsdd_archive_with_noise(tmp_path):
    shared_dataset("fsdd/fsdd_recordings_george_jackson_lucas_nicolas.tar.gz")
    shared_dataset("speech_commands_background_noise/white_noise.wav")
    dm = _dm(tmp_path, speech="fsdd", noise="speech_commands_background_noise")
    assert len(dm.bank.utterances) == 2000
    assert {u.speaker for u in dm.bank.utterances} == {"george", "jackson", "lucas", "nicolas"}
    test_keys = {k for s in dm.datasets["test"].specs for k in s["keys"]}
    assert all(int(k.rsplit("_", 1)[1].split(".")[0]) < 5 for k in test_keys)
    batch = next(iter(dm.test_dataloader()))
    assert batch["mixture"].shape == (4, 12000) and torch.isfinite(batch["mixture"]).all()
    assert set(dm.datasets["test"].noises) == {"doing_the_dishes.wav", "exercise_bike.wav", "pink_noise.wav", "white_noise.wav"}
