"""Pure array functions: waveform -> framing and STFT -> the kind's stage -> scaling.

No I/O, no logging, no click. As in ``librosa.stft``, the windowed frames and
their FFT are float64, rounded to complex64; everything after that (magnitude,
filterbank, scaling) is float32. A float32 FFT would be ~2x faster but its
rounding noise (~1e-7 of a frame's peak) swamps the quiet bins, so their dB /
log values would miss the parity contract (1e-3 dB) by up to tens of dB.
A feature kind's own stage (`melcli.kinds`, e.g. mel's filterbank) runs on
each block of magnitude frames (``params.block_stage``). The window is built
once per parameter set and cached.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from melcli import dsp
from melcli.errors import DecodeError
from melcli.params import FeatureParams, parse_window

#: Frames are processed in blocks of about this many samples: the windowed
#: float64 frames of a block (1 MB) stay in a core's L2 cache through the FFT,
#: and a long file's frames never exist whole. Measured on a 30 s file at
#: n_fft 2048: 13.5 ms in blocks of 2^17 samples, 22.6 ms in blocks of 2^21.
BLOCK_SAMPLES = 1 << 17
#: A streamed signal's frames are computed in runs of about this many samples
#: (`compute_stream`), as a long file's parts are (pipeline.PART_SAMPLES).
RUN_SAMPLES = 1 << 20
#: Largest sample magnitude accepted: float audio is nominally within [-1, 1];
#: far beyond this the power spectrum overflows float32.
MAX_SAMPLE = 1e6


@functools.lru_cache(maxsize=32)
def fft_window(window: str, win_length: int, n_fft: int) -> np.ndarray:
    """The periodic analysis window, zero-padded on both sides to ``n_fft``.

    Parameters
    ----------
    window : str
        Canonical window string (``FeatureParams.window``).
    win_length : int > 0
        Length of the window itself.
    n_fft : int >= win_length
        Length after centred zero-padding (as ``librosa.util.pad_center``).

    Returns
    -------
    np.ndarray, shape (n_fft,), float64, read-only
    """
    name, param = parse_window(window)
    win = dsp.periodic_window(name, win_length, param)
    out = np.zeros(n_fft, dtype=np.float64)
    left = (n_fft - win_length) // 2
    out[left : left + win_length] = win
    out.flags.writeable = False
    return out


def _magnitude(spec: np.ndarray, power: float) -> np.ndarray:
    if power == 2.0:
        return np.square(spec.real) + np.square(spec.imag)
    mag = np.abs(spec)
    return mag if power == 1.0 else mag**power


def pad_center(
    y: np.ndarray,
    params: FeatureParams,
    left: int,
    right: int,
    *,
    start: int = 0,
    n_samples: int | None = None,
) -> np.ndarray:
    """Pad ``y`` (channels, n) by ``left`` / ``right`` samples with ``params.pad_mode``.

    ``y`` is ``signal[:, start:start + y.shape[-1]]`` of a signal of ``n_samples``
    samples (default: ``y`` is the whole signal); the right padding needs both to
    reproduce librosa's (see `_librosa_tail`).
    """
    if not (left or right):
        return y
    n = start + y.shape[-1] if n_samples is None else n_samples
    tail = _librosa_tail(params, n) if right else None
    if tail is None and params.pad_mode == "constant":  # np.pad's own work costs more here
        out = np.zeros((y.shape[0], left + y.shape[-1] + right), dtype=y.dtype)
        out[:, left : left + y.shape[-1]] = y
        return out
    if tail is None:
        return np.pad(y, [(0, 0), (left, right)], mode=params.pad_mode)  # type: ignore[call-overload]
    # librosa pads only the tail y[s:] (fewer than n_fft // 2 + 1 samples here), so
    # numpy reflects that short piece repeatedly instead of the whole signal once.
    piece = np.pad(y[:, tail - start :], [(0, 0), (0, params.n_fft // 2)], mode="reflect")
    head = np.pad(y, [(0, 0), (left, 0)], mode="reflect") if left else y
    return np.concatenate([head, piece[:, n - tail : n - tail + right]], axis=-1)


def _librosa_tail(params: FeatureParams, n: int) -> int | None:
    """Where librosa.stft's separately padded tail starts, if that changes the numbers.

    librosa (0.10+) pads the head and the tail of a centred signal separately; the
    tail ``y[s:]`` starts at the first frame that needs right padding. With
    ``pad_mode="reflect"`` and a tail shorter than ``n_fft // 2 + 1`` samples (hop
    longer than about half the window) numpy reflects it more than once, which is
    not the whole signal's reflection. None when the ordinary padding is the same.
    """
    half = params.n_fft // 2
    if params.pad_mode != "reflect" or not params.center:
        return None
    hop = params.hop_length
    start_k = -(-half // hop)
    tail_k = (n + half - params.n_fft) // hop + 1
    s = tail_k * hop - half
    if tail_k <= start_k or not 0 < n - s < half + 1:
        return None
    return s


def entry_seed(key: str) -> int:
    """The seed of an entry's random steps (fbank's ``--dither``), from its key: every
    rerun, part of a long file and backend draws the same numbers for the same entry."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def spectrogram(y: np.ndarray, sr: int, params: FeatureParams, *, seed: int = 0) -> np.ndarray:
    """The kind's features before scaling: STFT magnitudes (or complex STFT), mel bands, ...

    Parameters
    ----------
    y : np.ndarray, shape (channels, n_samples), float32
        The waveform; finite values.
    sr : int
        Its sample rate (the kind's stage may depend on it: mel's filterbank).
    params : FeatureParams
    seed : int
        The entry's seed (`entry_seed`) for a kind's random step (fbank's dither).

    Returns
    -------
    np.ndarray, shape (channels, n_bins, n_frames)
        float32 (complex64 with ``params.stores_complex``), before scaling.
    """
    return spectrogram_many([y], sr, params, [seed])[0]


def frames_spectrogram(
    x: np.ndarray, sr: int, params: FeatureParams, n_frames: int, *, first: int = 0, seed: int = 0
) -> np.ndarray:
    """The first ``n_frames`` frames of an already padded signal (no centring here).

    Frame t covers ``x[:, t * hop : t * hop + n_fft]``; it is the entry's frame
    ``first + t`` (a kind's per-frame step may depend on it, with ``seed``).

    Returns
    -------
    np.ndarray, shape (channels, n_bins, n_frames)
    """
    out = _empty_spectrogram(x.shape[0], params, n_frames)
    _transform([(out, x, first, seed)], sr, params)
    return out


def spectrogram_many(
    ys: list[np.ndarray], sr: int, params: FeatureParams, seeds: list[int]
) -> list[np.ndarray]:
    """`spectrogram` of each of several signals at one rate, bit for bit.

    The frames of short signals are windowed and transformed together, in
    blocks of about `BLOCK_SAMPLES` as one long signal's are: a one-second clip
    has fewer frames than a block, and one FFT call (and one of each step)
    per clip cost more than its arithmetic. Each FFT row, magnitude and
    rounding is computed alone, and the kind's block stage sees exactly the
    frames it would see for that signal alone, so nothing changes in the values.

    Parameters
    ----------
    ys : list of np.ndarray, shape (channels, n_samples), float32
        Finite values (as `spectrogram`'s).
    sr : int
    params : FeatureParams
    seeds : list of int
        Each signal's seed (`entry_seed`).

    Returns
    -------
    list of np.ndarray, shape (channels, n_bins, n_frames)
    """
    jobs = []
    for y, seed in zip(ys, seeds, strict=True):
        y = np.asarray(y, dtype=np.float32)
        n_frames = params.n_frames(y.shape[-1])
        x = pad_span(y, params, *params.frame_bounds(0, n_frames), y.shape[-1])
        jobs.append((_empty_spectrogram(x.shape[0], params, n_frames), x, 0, seed))
    _transform(jobs, sr, params)
    return [job[0] for job in jobs]


def _empty_spectrogram(channels: int, params: FeatureParams, n_frames: int) -> np.ndarray:
    dtype = np.complex64 if params.stores_complex else np.float32
    return np.empty((channels, params.stage_bins, n_frames), dtype=dtype)


def _frames(x: np.ndarray, n_fft: int, hop: int, n: int) -> np.ndarray:
    """Frames ``x[t * hop : t * hop + n_fft]`` for t < n, as a read-only view of 1-D ``x``
    (``sliding_window_view(x, n_fft)[::hop][:n]``, at a fifth of its cost)."""
    if n and (n - 1) * hop + n_fft > x.shape[0]:
        raise ValueError(f"{n} frames of {n_fft} every {hop} need more than {x.shape[0]} samples")
    step = x.strides[0]
    return np.lib.stride_tricks.as_strided(
        x, shape=(n, n_fft), strides=(hop * step, step), writeable=False
    )


def _transform(
    jobs: list[tuple[np.ndarray, np.ndarray, int, int]], sr: int, params: FeatureParams
) -> None:
    """Fill each job's ``out`` (channels, bins, frames) from its padded signal ``x``.

    ``jobs``: (out, x, first frame, seed). The frames of a channel are cut into
    pieces of at most ``block`` frames (a long signal's blocks); consecutive
    pieces, of any channel or job, share one float64 buffer, one FFT and one
    magnitude call while they fit in ``block`` frames. Each piece then goes
    through the kind's stage alone: its values do not depend on its neighbours.
    """
    n_fft, hop = params.n_fft, params.hop_length
    win = fft_window(params.window, params.win_length, n_fft)
    stage = params.block_stage(sr)  # the kind's own (mel: the filterbank)
    stores_complex = params.stores_complex
    block = max(1, BLOCK_SAMPLES // n_fft)
    buf = np.empty((min(block, sum(job[0].shape[-1] for job in jobs)), n_fft), np.float64)
    group: list[tuple[np.ndarray, int, int, int, int, Any]] = []  # out, c, a, b, row, extra
    rows = 0

    def flush() -> None:
        # float64 frames and FFT, rounded to complex64, as librosa.stft does:
        # a float32 FFT would lose the quiet bins (their dB) to rounding noise.
        spec = np.fft.rfft(buf[:rows], axis=-1).astype(np.complex64)
        mag = None if stores_complex else _magnitude(spec, params.power)
        for out, c, a, b, row, extra in group:
            if mag is None:
                out[c, :, a:b] = spec[row : row + b - a].T
                continue
            piece = mag[row : row + b - a]
            if stage is not None:
                piece = stage(piece)  # (frames, n_bins)
            if extra is not None:
                out[c, : extra.shape[1], a:b] = extra.T
                out[c, extra.shape[1] :, a:b] = piece.T
                continue
            out[c, :, a:b] = piece.T
        group.clear()

    for out, x, first, seed in jobs:
        prepare = params.frame_stage(seed)  # the kind's own work on each frame, if any
        n_frames = out.shape[-1]
        for c in range(x.shape[0]):
            frames = _frames(x[c], n_fft, hop, n_frames)
            for a in range(0, n_frames, block):
                b = min(a + block, n_frames)
                if rows + b - a > buf.shape[0]:
                    flush()
                    rows = 0
                extra = None
                if prepare is None:
                    np.multiply(frames[a:b], win, out=buf[rows : rows + b - a])
                else:
                    windowed = prepare(frames[a:b], first + a, c)
                    if isinstance(windowed, tuple):  # and values of its own per frame
                        windowed, extra = windowed
                    buf[rows : rows + b - a] = windowed
                group.append((out, c, a, b, rows, extra))
                rows += b - a
    if group:
        flush()


def segment_bounds(params: FeatureParams, frame_start: int, frame_stop: int) -> tuple[int, int]:
    """Sample range [a, b) of the unpadded signal that frames [start, stop) need.

    ``a`` may be negative and ``b`` may pass the end: those samples come from
    the centre padding (see `compute_segment`).
    """
    return params.frame_bounds(frame_start, frame_stop)


def pad_span(
    piece: np.ndarray, params: FeatureParams, a: int, b: int, n_samples: int | None
) -> np.ndarray:
    """The samples [a, b) of a signal for framing, from ``piece`` =
    ``signal[:, max(a, 0):min(b, n)]``; outside the signal they come from the
    padding (``--pad-mode``, or the kind's own: `FeatureParams.pad_span`).

    ``n_samples`` None: the signal goes on past ``b`` (a stream), no end padding.
    """
    own = params.pad_span(piece, a, b, n_samples)
    if own is not None:
        return own
    if n_samples is None:
        return pad_center(piece, params, max(0, -a), 0)
    return pad_center(
        piece, params, max(0, -a), max(0, b - n_samples), start=max(a, 0), n_samples=n_samples
    )


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def filterbank_stage(basis: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A `FeatureParams.block_stage` that projects magnitude frames (frames, bins) on a
    filterbank ``basis`` (rows, bins): ``mag @ basis.T``, on one BLAS thread."""
    basis_t = basis.T

    def project(mag: np.ndarray) -> np.ndarray:
        with one_blas_thread():
            return mag @ basis_t

    return project


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread inside the block, as it was after it.

    The float32 sums of the mel projection depend on BLAS's thread count, so
    features computed through the library equal the command line's whatever the
    caller's setting; in melcli's workers (`melcli.pipeline.worker_init`) it is
    already one and this costs one check.
    """
    ctl = _blas_controller()
    if all(lib.num_threads == 1 for lib in ctl.select(user_api="blas").lib_controllers):
        yield
        return
    with ctl.limit(limits=1, user_api="blas"):
        yield


def single_threaded_blas() -> None:
    """Make BLAS single-threaded in this process (and leave it so).

    melcli's parallelism is across files; BLAS threads inside would oversubscribe
    the cores, and float32 sums (the mel projection) depend on the BLAS thread
    count, so one thread everywhere keeps output identical whatever ``-j`` is.
    Called once per worker process by `melcli.pipeline.worker_init`, never by the
    compute functions (a library caller keeps its own BLAS settings).
    """
    _blas_controller().limit(limits=1, user_api="blas")


def scale(spec: np.ndarray, params: FeatureParams) -> np.ndarray:
    """Apply ``params.scale`` to non-negative magnitudes of a whole entry.

    ``db``: ``librosa.power_to_db`` (power 2) or ``librosa.amplitude_to_db``
    (power 1) with ref=1.0, amin=params.amin and top_db=params.top_db, i.e.
    ``(20 / power) * log10(max(amin, S))``, then clipped at ``max - top_db``.
    ``log``: ``ln(max(S, amin))``. ``whisper``: ``log10(max(S, amin))`` clipped
    at ``max - top_db``, then ``(x + 4) / 4`` (whisper.log_mel_spectrogram).
    ``linear``: unchanged.
    """
    return finish_scale(scale_values(spec, params), params)


def finish_scale(values: np.ndarray, params: FeatureParams) -> np.ndarray:
    """The whole-entry part of `scale`, after `scale_values`: the ``top_db`` clip
    (and Whisper's ``(x + 4) / 4`` after it)."""
    out = clip_top_db(values, params)
    if params.scale == "whisper":
        out = (out + np.float32(4.0)) / np.float32(4.0)
    return out


def scale_values(spec: np.ndarray, params: FeatureParams) -> np.ndarray:
    """`scale` without the ``top_db`` clip: value by value, so any slice can be done alone."""
    if params.scale == "linear" or params.stores_complex:
        return spec
    floored = np.maximum(spec, np.float32(params.amin))
    if params.scale == "log":
        return np.log(floored)
    if params.scale == "whisper":
        return np.log10(floored)
    return np.float32(params.db_multiplier) * np.log10(floored)


def clip_top_db(db: np.ndarray, params: FeatureParams) -> np.ndarray:
    """Clip dB values at ``max - params.top_db`` (in place when ``db`` is writable float32)."""
    if (
        params.scale not in ("db", "whisper")
        or params.stores_complex
        or params.top_db is None
        or not db.size
    ):
        return db
    return np.maximum(db, db.max() - np.float32(params.top_db), out=db)


def compute(y: np.ndarray, sr: int, params: FeatureParams, *, seed: int = 0) -> np.ndarray:
    """Features of one waveform, as stored: scaled and cast to ``params.out_dtype``.

    Parameters
    ----------
    y : np.ndarray, shape (channels, n_samples), float32
    sr : int
    params : FeatureParams
    seed : int
        The entry's seed (`entry_seed` of its key) for fbank's ``dither``.

    Returns
    -------
    np.ndarray
        Shape (n_bins, n_frames) when ``params.mono``, else
        (channels, n_bins, n_frames).

    Raises
    ------
    DecodeError
        Non-finite samples, too few samples, a filterbank that does not fit the
        rate, or values that overflow float16.
    """
    spec = spectrogram(prepared(y, sr, params), sr, params, seed=seed)
    return finish(spec, params, y.shape[-1])


def prepared(y: np.ndarray, sr: int, params: FeatureParams) -> np.ndarray:
    """The checks of `compute` on a whole signal, and the signal its `spectrogram` takes
    (``--tail zeros`` adds ``n_fft`` zeros: every frame that touches the signal).

    Raises
    ------
    DecodeError
        As `compute`.
    """
    params.check_file(sr, y.shape[-1])
    check_samples(y)
    if params.tail == "zeros":
        y = np.pad(y, [(0, 0), (0, params.n_fft)])
    return y


def finish(spec: np.ndarray, params: FeatureParams, n_samples: int) -> np.ndarray:
    """The end of `compute`: the `spectrogram` of a whole signal of ``n_samples``
    samples (before `prepared`) scaled, cut to its frames, through the kind's entry
    stage, normalised and cast.

    Raises
    ------
    DecodeError
        Values that overflow float16.
    """
    return _finish(spec, params, params.n_frames(n_samples))


def compute_segment(
    segment: np.ndarray,
    sr: int,
    params: FeatureParams,
    *,
    n_samples: int,
    frame_start: int,
    frame_stop: int,
    seed: int = 0,
) -> np.ndarray:
    """Frames [frame_start, frame_stop) of a long signal, from a slice of it.

    Gives the same values as ``compute(y)[..., frame_start:frame_stop]`` while
    only ``y[max(a, 0):min(b, n)]`` is in memory (``a, b = segment_bounds(...)``):
    the centre padding at either end of the signal is rebuilt from the slice,
    which must then hold at least ``n_fft // 2 + 1`` samples (the caller splits
    only long signals). ``params.top_db`` needs the whole signal's maximum and
    is not supported here.

    Parameters
    ----------
    segment : np.ndarray, shape (channels, k), float32
        ``y[:, max(a, 0):min(b, n_samples)]``.
    sr : int
    params : FeatureParams
    n_samples : int
        Length of the whole signal.
    frame_start, frame_stop : int
        The frames wanted.
    seed : int
        As `compute`'s.

    Returns
    -------
    np.ndarray
        As `compute`, with ``frame_stop - frame_start`` frames.
    """
    params.check_file(sr, n_samples)
    check_samples(segment)
    a, b = segment_bounds(params, frame_start, frame_stop)
    x = pad_span(segment, params, a, b, n_samples)
    n_out = frame_stop - frame_start
    spec = frames_spectrogram(x, sr, params, n_out, first=frame_start, seed=seed)
    return _finish(spec, params, n_out)


def check_samples(y: np.ndarray) -> None:
    """Raise DecodeError for NaN/Inf samples (counted over all channels) or absurd values."""
    if not y.size:
        return
    hi, lo = float(np.max(y)), float(np.min(y))  # NaN propagates: one pass each, no copy
    if not (np.isfinite(hi) and np.isfinite(lo)):
        raise samples_error(int(y.size - np.count_nonzero(np.isfinite(y))), 0.0)
    peak = max(hi, -lo)
    if peak > MAX_SAMPLE:  # |X|**2 of such samples overflows float32
        raise samples_error(0, peak)


def samples_error(bad: int, peak: float) -> DecodeError:
    """What `check_samples` says of a signal with ``bad`` NaN/Inf samples, or else this peak."""
    if bad:
        return DecodeError(f"audio contains {bad} NaN/Inf samples")
    return DecodeError(f"sample values up to {peak:.3g} are out of range (|x| <= {MAX_SAMPLE:g})")


def compute_stream(
    blocks: Iterable[np.ndarray],
    sr: int,
    params: FeatureParams,
    *,
    expected_samples: int = 0,
    seed: int = 0,
) -> np.ndarray:
    """`compute` of a signal that arrives in consecutive blocks, never whole in memory.

    Frames are computed as soon as their samples (and ``n_fft`` more, so the
    end's centre padding can later be rebuilt from what is kept) have arrived,
    in runs of about 2^20 samples as the parts of a long file are (see
    `compute_segment`); only those samples and the features are held.
    ``top_db`` is applied at the end, over the whole entry, as `compute` does.

    Parameters
    ----------
    blocks : iterable of np.ndarray, shape (channels, k), float32
        The signal, in order; blocks may be empty.
    sr : int
    params : FeatureParams
    expected_samples : int
        The signal's length if known (the header's), to allocate the features
        once; a wrong guess costs a copy, not a wrong result.
    seed : int
        As `compute`'s.

    Returns
    -------
    np.ndarray
        As `compute` of the joined blocks.

    Raises
    ------
    DecodeError
        As `compute`, and whatever ``blocks`` raises.
    """
    params.check_file(sr, max(params.n_fft, params.hop_length, 1))  # rate checks first
    zeros = _ZerosAfter(blocks, params.n_fft if params.tail == "zeros" else 0)
    blocks = iter(zeros)
    run = max(params.n_fft // params.hop_length + 2, RUN_SAMPLES // params.hop_length)
    pending: list[np.ndarray] = []
    buf = np.zeros((0, 0), dtype=np.float32)
    buf_start = done = 0  # signal index of buf[:, 0]; frames computed
    out = _Frames(params.n_frames(expected_samples))
    for block in blocks:
        check_samples(block)
        pending.append(block)
        avail = buf_start + buf.shape[-1] + sum(b.shape[-1] for b in pending)
        a, b = segment_bounds(params, done, done + run)
        if b + params.n_fft > avail:
            continue
        buf = np.concatenate([buf, *pending], axis=-1) if buf.size else np.concatenate(pending, -1)
        pending.clear()
        while b + params.n_fft <= avail:
            x = pad_span(buf[:, max(a, 0) - buf_start : b - buf_start], params, a, b, None)
            spec = frames_spectrogram(x, sr, params, run, first=done, seed=seed)
            out.add(scale_values(spec, params))
            done += run
            a, b = segment_bounds(params, done, done + run)
        buf = buf[:, max(a, 0) - buf_start :].copy()
        buf_start = max(a, 0)
    if pending:
        buf = np.concatenate([buf, *pending], axis=-1) if buf.size else np.concatenate(pending, -1)
    n = buf_start + buf.shape[-1]
    params.check_file(sr, n - zeros.added)
    total = params.n_frames(n)
    if done == 0:  # a short signal: exactly `compute`, padding included
        out.add(scale_values(spectrogram(buf, sr, params, seed=seed), params))
    elif total > done:
        a, b = segment_bounds(params, done, total)
        x = pad_span(buf[:, max(a, 0) - buf_start :], params, a, b, n)
        spec = frames_spectrogram(x, sr, params, total - done, first=done, seed=seed)
        out.add(scale_values(spec, params))
    return _finish_scaled(
        finish_scale(out.array(), params), params, params.n_frames(n - zeros.added)
    )


class _ZerosAfter:
    """The blocks, then ``n`` zero samples (``--tail zeros``; none after no blocks)."""

    def __init__(self, blocks: Iterable[np.ndarray], n: int) -> None:
        self.blocks, self.n, self.added = blocks, n, 0

    def __iter__(self) -> Iterator[np.ndarray]:
        channels = 0
        for block in self.blocks:
            channels = block.shape[0]
            yield block
        if self.n and channels:
            self.added = self.n
            yield np.zeros((channels, self.n), dtype=np.float32)


class _Frames:
    """Feature frames appended run by run into one array that grows geometrically."""

    def __init__(self, expected: int) -> None:
        self._out: np.ndarray | None = None
        self._n = 0
        self._expected = expected

    def add(self, spec: np.ndarray) -> None:
        k = spec.shape[-1]
        if self._out is None or self._n + k > self._out.shape[-1]:
            cap = max(self._n + k, 2 * self._n, self._expected)
            grown = np.empty((*spec.shape[:-1], cap), dtype=spec.dtype)
            if self._out is not None:
                grown[..., : self._n] = self._out[..., : self._n]
            self._out = grown
        self._out[..., self._n : self._n + k] = spec
        self._n += k

    def array(self) -> np.ndarray:
        assert self._out is not None
        if self._n == self._out.shape[-1]:
            return self._out
        return np.ascontiguousarray(self._out[..., : self._n])


def _finish(spec: np.ndarray, params: FeatureParams, n_frames: int) -> np.ndarray:
    """Scale a whole entry's frames, keep the first ``n_frames`` (``--tail zeros``
    computes more, for the clip), then the kind's entry stage, normalise, cast."""
    return _finish_scaled(scale(spec, params), params, n_frames)


def _finish_scaled(x: np.ndarray, params: FeatureParams, n_frames: int) -> np.ndarray:
    if x.shape[-1] != n_frames:
        x = np.ascontiguousarray(x[..., :n_frames])
    return _cast(normalize(params.entry_stage(x), params), params)


def normalize(x: np.ndarray, params: FeatureParams) -> np.ndarray:
    """``params.normalize`` of a whole entry (channels, rows, frames), each row alone.

    ``mean``: ``x - mean``; ``meanvar``: ``(x - mean) / std`` (population std, float64
    sums; a constant row becomes 0). The per-utterance CMVN of ASR recipes (Kaldi's
    ``apply-cmvn --norm-vars`` with the utterance's own statistics).
    """
    if params.normalize == "none" or not x.shape[-1]:
        return x
    data = x.astype(np.float64)
    mean = data.mean(axis=-1, keepdims=True)
    data -= mean
    if params.normalize == "meanvar":
        std = np.sqrt(np.mean(np.square(data), axis=-1, keepdims=True))
        data /= np.where(std > 0, std, 1.0)
    return data.astype(x.dtype)


def _cast(out: np.ndarray, params: FeatureParams) -> np.ndarray:
    if out.dtype != np.dtype(params.out_dtype):
        with np.errstate(over="ignore"):
            cast = out.astype(params.out_dtype)
        if params.dtype == "float16" and not np.isfinite(cast).all():
            raise DecodeError(
                f"values up to {float(np.abs(out).max()):.3g} overflow float16; "
                "use --scale db/log or --dtype float32"
            )
        out = cast
    return out[0] if params.mono else out
