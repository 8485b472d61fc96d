"""Audio in blocks: resampled to 24 kHz as a one-shot resample and the analytic signal would be,
re-cut into exact frames, written whole or not at all."""

import numpy as np
import pytest
import soundfile as sf
import soxr

from inplace_ttt.speech.audio import READ_BLOCK, audio_info, fixed_blocks, read_resampled, wav_writer


def test_a_file_read_in_blocks_and_resampled_is_the_signal_at_24_khz(tmp_path):
    rate, seconds = 22050, 7.3  # several read blocks
    t = np.arange(round(rate * seconds)) / rate
    left, right = 0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 1000 * t)
    sf.write(str(tmp_path / "a.wav"), np.stack([left, right], 1), rate, subtype="FLOAT")
    info = audio_info(tmp_path / "a.wav")
    assert (info.channels, info.sample_rate, info.samples) == (2, rate, len(t)) and len(t) > 2 * READ_BLOCK
    blocks = list(read_resampled(info, 24000, [1]))
    out = np.concatenate(blocks, axis=1)[0]
    whole = soxr.resample(right.astype(np.float32), rate, 24000)  # the whole file at once
    assert len(blocks) > 2 and out.shape == whole.shape and np.array_equal(out, whole)
    t24 = np.arange(len(out)) / 24000
    inner = slice(2400, -2400)  # away from the edges, where the filter sees the file's ends
    assert len(out) == round(len(t) * 24000 / rate)
    assert np.abs(out[inner] - 0.3 * np.sin(2 * np.pi * 1000 * t24[inner])).max() < 1e-3


def test_blocks_are_recut_into_exact_frames_with_the_last_zero_padded():
    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal((2, n)).astype(np.float32) for n in (700, 3000, 1, 1919, 4000)]
    frames = list(fixed_blocks(blocks, 1920))
    total = sum(b.shape[1] for b in blocks)
    assert [valid for _, valid in frames] == [1920] * (total // 1920) + [total % 1920]
    joined = np.concatenate([f for f, _ in frames], axis=1)
    assert np.array_equal(joined[:, :total], np.concatenate(blocks, axis=1)) and not joined[:, total:].any()


def test_a_writer_that_fails_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        with wav_writer(tmp_path / "out.wav", 24000) as write:
            write(np.zeros(1920, dtype=np.float32))
            raise RuntimeError("model failed mid-file")
    assert list(tmp_path.iterdir()) == []
    with wav_writer(tmp_path / "out.wav", 24000) as write:
        write(np.full(1000, 0.25, dtype=np.float32))
    x, rate = sf.read(str(tmp_path / "out.wav"), dtype="float32")
    assert rate == 24000 and np.array_equal(x, np.full(1000, 0.25, dtype=np.float32))


def test_unreadable_and_missing_audio_is_refused_naming_the_file(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF not really a wave file")
    with pytest.raises(ValueError, match="bad.wav: unreadable audio"):
        audio_info(tmp_path / "bad.wav")
    with pytest.raises(ValueError, match="gone.wav: no such audio file"):
        audio_info(tmp_path / "gone.wav")
