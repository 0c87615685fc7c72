"""The separation protocols: full overlap (min/max), unseen-speaker folds, held-out noise,
mixture lists keyed to their data, a test folder apart, and the overlap measure."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from omniseq.data.separation import SeparationDataModule, overlap_ratio
from omniseq.data.speech_mixing import build_mixture
from tests.conftest import shared_dataset

RATE = 8000


def _dm(tmp_path, **options) -> SeparationDataModule:
    defaults = dict(num_train=16, num_val=6, num_test=12, batch_size=4, list_dir=str(tmp_path / "lists"))
    dm = SeparationDataModule(**{**defaults, **options})
    dm.setup()
    return dm


def _speakers(dm, spec) -> list[str]:
    by_key = {u.key: u.speaker for u in dm.bank.utterances}
    return [by_key[k] for k in spec["keys"]]


def test_overlap_ratio_known_answers():
    a, b = np.zeros((2, 100)), np.zeros((2, 100))
    a[0, 10:50], a[1, 30:90] = 1, 1  # spans 40 and 60 share 20: 20 / 40
    assert overlap_ratio(a) == pytest.approx(0.5)
    b[0, 0:20], b[1, 50:70] = 1, 1  # turns that never meet
    assert overlap_ratio(b) == 0.0
    b[1, 5:15] = 1  # the second now speaks inside the first's span too
    assert overlap_ratio(b) == pytest.approx(15 / 20)


@pytest.mark.parametrize("mode", ["min", "max"])
def test_min_and_max_modes_overlap_fully(tmp_path, mode):
    dm = _dm(tmp_path, overlap=mode)
    assert dm.overlap_stats("test") == {"mixtures": 12, "mean": 1.0, "none": 0.0, "full": 1.0}
    for i, spec in enumerate(dm.datasets["test"].specs):
        lengths = [len(dm.bank.load(k)) for k in spec["keys"]]
        item = dm.datasets["test"][i]
        expected = min(lengths) if mode == "min" else max(lengths)
        assert item["mixture"].shape[-1] == min(expected, dm.eval_segment)
        torch.testing.assert_close(item["mixture"], item["sources"].sum(0), rtol=1e-5, atol=1e-6)
        if mode == "min":  # both speakers active from the first sample to the last
            assert (item["sources"][:, :50].abs().amax(-1) > 0).all() and (item["sources"][:, -50:].abs().amax(-1) > 0).all()
    assert dm.eval_batch_size == 1  # each mixture at its own length
    batch = next(iter(dm.train_dataloader()))  # padded to the longest in the batch
    assert batch["mixture"].shape[-1] <= dm.segment and batch["sources"].shape[:2] == (4, 2)
    torch.testing.assert_close(batch["mixture"], batch["sources"].sum(1), rtol=1e-5, atol=1e-6)


def test_partial_protocol_keeps_its_mixtures_and_varies_overlap(tmp_path):
    dm = _dm(tmp_path, num_test=40)
    stats = dm.overlap_stats("test")
    assert 0 < stats["mean"] < 1 and stats["none"] + stats["full"] < 1
    spec = dm.datasets["test"].specs[0]
    assert "overlap" not in spec and spec["length"] == dm.eval_segment


def test_leave_one_speaker_out_fold(tmp_path):
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    rng = np.random.default_rng(0)
    for name in ("hum.wav", "hiss.wav"):
        sf.write(noise_dir / name, (0.1 * rng.standard_normal(RATE * 2)).astype(np.float32), RATE, subtype="FLOAT")
    dm = _dm(tmp_path, overlap="min", fold=2, noise=str(noise_dir), unseen_noise=["hiss.wav"], noise_prob=1.0)
    unseen = dm.bank.speakers[2]
    assert dm.test_sets == ["seen", "unseen", "unseen_noise"] and unseen not in dm.seen_speakers
    train = [dm.datasets["train"].sampler(epoch, i) for epoch in range(3) for i in range(16)]
    assert all(unseen not in _speakers(dm, s) for s in train)
    assert all(s["noise"] == "hum.wav" for s in train)  # held-out noise never trains
    assert all(unseen not in _speakers(dm, s) for s in dm.datasets["seen"].specs)
    for name in ("val", "unseen"):
        assert all(_speakers(dm, s)[0] == unseen and len(set(_speakers(dm, s))) == 2 for s in dm.datasets[name].specs)
    index = {u.key: u.index for u in dm.bank.utterances}
    assert {index[k] for s in dm.datasets["val"].specs for k in s["keys"]} <= set(range(5, 8))
    assert {index[k] for s in dm.datasets["unseen"].specs for k in s["keys"]} <= set(range(0, 5))
    # the noisy list is the unseen list plus held-out noise at 5-15 dB
    for clean, noisy in zip(dm.datasets["unseen"].specs, dm.datasets["unseen_noise"].specs, strict=True):
        assert noisy["keys"] == clean["keys"] and noisy["noise"] == "hiss.wav" and 5 <= noisy["snr_db"] <= 15
    item = dm.datasets["unseen_noise"][0]
    speech = item["sources"].double().sum(0)
    snr = 10 * torch.log10(speech.square().sum() / (item["mixture"].double() - speech).square().sum())
    assert snr.item() == pytest.approx(dm.datasets["unseen_noise"].specs[0]["snr_db"], abs=0.05)
    assert dm.test_split == "unseen" and len(dm.test_dataloader()) == 3


def test_bad_folds_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"fold must be in \[0, 8\)"):
        _dm(tmp_path, fold=8)
    with pytest.raises(ValueError, match=r"unseen_speakers \['bob'\] are not speakers"):
        _dm(tmp_path, unseen_speakers=["bob"])
    with pytest.raises(ValueError, match="unseen_noise .* not among the noise files"):
        _dm(tmp_path, unseen_noise=["rain.wav"])


def _speech_folder(root, speakers, lengths=(2000, 2600, 3100)):
    root.mkdir(parents=True, exist_ok=True)
    t = np.arange(max(lengths)) / RATE
    for k, speaker in enumerate(speakers):
        for index in range(10):
            wav = 0.3 * np.sin(2 * np.pi * (150 + 40 * k + 7 * index) * t[: lengths[index % len(lengths)]])
            sf.write(root / f"{index % 10}_{speaker}_{index}.wav", wav.astype(np.float32), RATE, subtype="PCM_16")
    return root


def test_lists_are_keyed_to_their_data(tmp_path):
    """Pointing speech at another folder with the same list_dir draws new lists (the old ones
    named files of the old speakers)."""
    first = _speech_folder((tmp_path / "a").resolve(), ["ann", "bob", "cat"])
    second = _speech_folder((tmp_path / "b").resolve(), ["dan", "eve", "fay"])
    a = _dm(tmp_path, speech=str(first))
    b = _dm(tmp_path, speech=str(second))
    assert {k.split("_")[1] for s in b.datasets["test"].specs for k in s["keys"]} <= {"dan", "eve", "fay"}
    assert len(list((tmp_path / "lists").glob("test-*.csv"))) == 2
    b.datasets["test"][0]  # builds: no file of the old speakers is looked up
    # an option that shapes the lists changes the key too; a training-only one does not
    c = _dm(tmp_path, speech=str(first), level_range_db=(0.0, 0.0), speed_range=(0.9, 1.1))
    assert c.datasets["test"].specs != a.datasets["test"].specs
    d = _dm(tmp_path, speech=str(first), speed_range=(0.9, 1.1))
    assert d.datasets["test"].specs == a.datasets["test"].specs
    assert len(list((tmp_path / "lists").glob("test-*.csv"))) == 3


def test_test_speech_folder_apart(tmp_path):
    train = _speech_folder((tmp_path / "train").resolve(), ["ann", "bob", "cat"])
    test = _speech_folder((tmp_path / "test").resolve(), ["dan", "eve"])
    dm = _dm(tmp_path, speech=str(train), test_speech=str(test))
    keys = {k for s in dm.datasets["test"].specs for k in s["keys"]}
    assert {k.split("_")[1] for k in keys} == {"dan", "eve"}
    assert {int(k.split("_")[2].split(".")[0]) for k in keys} - set(range(5))  # every index of the test folder
    item = dm.datasets["test"][0]
    torch.testing.assert_close(item["mixture"], item["sources"].sum(0), rtol=1e-5, atol=1e-6)
    assert {k.split("_")[1] for s in dm.datasets["val"].specs for k in s["keys"]} <= {"ann", "bob", "cat"}
    with pytest.raises(ValueError, match="test_speech .* cannot be combined"):
        SeparationDataModule(speech=str(train), test_speech=str(test), fold=0)


def test_fsdd_unseen_fold_overlap_is_full(tmp_path):
    archive = shared_dataset("fsdd/fsdd_recordings_george_jackson_lucas_nicolas.tar.gz")
    dm = _dm(tmp_path, speech=str(archive), overlap="min", fold=0, num_val=4, num_test=20)
    assert dm.bank.speakers == ["george", "jackson", "lucas", "nicolas"]
    assert dm.overlap_stats("unseen")["full"] == 1.0
    assert all("george" in s["keys"][0] for s in dm.datasets["unseen"].specs)
    spec = dm.datasets["unseen"].specs[0]
    assert build_mixture(spec, dm.bank, {})["mixture"].shape[-1] == min(len(dm.bank.load(k)) for k in spec["keys"])
