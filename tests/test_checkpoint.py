"""Checkpoint files: the format kept, old files still loading, and every damaged or foreign
file refused with a ``CheckpointError`` before anything is changed.

``tests/fixtures/checkpoint_v1.npz`` was written by minicnn at commit 04963c0 (before the
``state_dict`` redesign) from ``vgg(widths=[4, 8], depth=1, batchnorm=True, hidden=16,
dropout=0.25, image_size=8)`` after two epochs of SGD-Nesterov + OneCycleLR; its meta holds
the eval-mode logits of ``default_rng(2).standard_normal((4, 3, 8, 8))``. Loading it with
today's code must give the same logits: that is the "old checkpoints still load" promise.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from minicnn import data, models, optim, training
from minicnn.training.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    CorruptCheckpointError,
    NewerCheckpointError,
    NotACheckpointError,
)

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint_v1.npz"
FIXTURE_BYTES = FIXTURE.read_bytes()
FIXTURE_ARRAYS = dict(np.load(FIXTURE, allow_pickle=False))
FIXTURE_INFO = json.loads(str(FIXTURE_ARRAYS["info"]))


def fixture_model():
    """The model, optimizer, scheduler and loader the fixture was written from, fresh."""
    model = models.build(**FIXTURE_INFO["config"])
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = optim.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    x, y = data.synthetic(8, (3, 8, 8))
    loader = data.DataLoader(x, y, 4, seed=0)
    return model, opt, sched, loader


def fixture_input():
    return np.random.default_rng(2).standard_normal((4, 3, 8, 8)).astype(np.float32)


def snapshot(model, opt, sched):
    """Copies of everything ``load`` may change."""
    return ({k: np.array(v) for k, v in model.state_dict().items()},
            {k: np.array(v) for k, v in opt.state_dict().items()}, sched.state_dict(),
            model.rng_states())


def assert_unchanged(before, model, opt, sched):
    state, opt_state, sched_state, rngs = before
    now = model.state_dict()
    assert now.keys() == state.keys()
    for key, value in state.items():
        assert now[key].shape == value.shape and now[key].dtype == value.dtype, key
        np.testing.assert_array_equal(now[key], value, err_msg=key)
    now_opt = opt.state_dict()
    assert now_opt.keys() == opt_state.keys()
    for key, value in opt_state.items():
        np.testing.assert_array_equal(now_opt[key], value, err_msg=key)
    assert sched.state_dict() == sched_state
    assert model.rng_states() == rngs


# -- the old file still loads ------------------------------------------------------------------

def test_the_v1_fixture_loads_into_its_model_with_the_same_outputs():
    model, opt, sched, loader = fixture_model()
    ckpt = training.load(FIXTURE, model, opt, scheduler=sched, loader=loader)
    assert ckpt.epoch == 2 and ckpt.config == FIXTURE_INFO["config"]
    with model.mode(training=False):
        logits = model.forward(fixture_input())
    np.testing.assert_allclose(logits, ckpt.meta["expected_logits"], rtol=1e-5, atol=1e-5)
    # The optimizer's momentum buffers, the schedule's position and every generator came back.
    assert opt.num_steps == int(FIXTURE_ARRAYS["optim/step"])
    np.testing.assert_array_equal(opt.state_dict()["b.0"], FIXTURE_ARRAYS["optim/b.0"])
    assert sched.last_epoch == int(FIXTURE_ARRAYS["sched/last_epoch"])
    saved_rngs = json.loads(str(FIXTURE_ARRAYS["rng"]))
    # format 1 names a model's generators by module index: model.10 is layers.9 (a Dropout)
    assert model.rng_states() == {"layers.9.rng": saved_rngs["model.10.rng"],
                                  "layers.12.rng": saved_rngs["model.13.rng"]}
    assert loader.rng.bit_generator.state == saved_rngs["loader.rng"]


def test_the_v1_fixture_rebuilds_its_model_from_the_config():
    model = training.load(FIXTURE).model.eval()
    np.testing.assert_allclose(model.forward(fixture_input()),
                               FIXTURE_INFO["meta"]["expected_logits"], rtol=1e-5, atol=1e-5)


def test_todays_files_keep_the_v1_format(tmp_path):
    # The same entries, info fields and generator names as the file 04963c0 wrote, so a file
    # written today loads in that version too.
    model, opt, sched, loader = fixture_model()
    training.load(FIXTURE, model, opt, scheduler=sched, loader=loader)
    path = tmp_path / "again.npz"
    training.save(path, model, opt, scheduler=sched, loader=loader, epoch=2,
                  **FIXTURE_INFO["meta"])
    with np.load(path, allow_pickle=False) as f:
        again = {k: f[k] for k in f.files}
    assert list(again) == list(FIXTURE_ARRAYS)
    for key, value in FIXTURE_ARRAYS.items():
        if key not in ("info", "rng"):
            assert again[key].dtype == value.dtype, key
            np.testing.assert_array_equal(again[key], value, err_msg=key)
    info = json.loads(str(again["info"]))
    assert info == {**FIXTURE_INFO, "history": None}
    assert json.loads(str(again["rng"])) == json.loads(str(FIXTURE_ARRAYS["rng"]))


# -- clear refusals ----------------------------------------------------------------------------

def write(path, content):
    Path(path).write_bytes(content)
    return path


def savez(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def with_info(**changes):
    arrays = dict(FIXTURE_ARRAYS)
    arrays["info"] = np.array(json.dumps({**FIXTURE_INFO, **changes}))
    return arrays


BAD_FILES = [
    # (name, how to make it, error type, words of the message)
    ("text", lambda p: write(p, b"garbage\n"), NotACheckpointError,
     "not a minicnn checkpoint (not an .npz archive: it starts with b'garb')"),
    ("npy", lambda p: write(p, b"\x93NUMPY" + FIXTURE_BYTES[6:100]), NotACheckpointError,
     "a single NumPy array"),
    ("other npz", lambda p: savez(p, {"weights": np.zeros(3)}), NotACheckpointError,
     "without an 'info' entry; its keys: ['weights']"),
    ("other format", lambda p: savez(p, with_info(format="keras-1")), NotACheckpointError,
     "not a minicnn checkpoint (format 'keras-1')"),
    ("empty", lambda p: write(p, b""), CorruptCheckpointError,
     "truncated or corrupt checkpoint (0 bytes; a complete one has the keys info, rng"),
    ("first 100 bytes", lambda p: write(p, FIXTURE_BYTES[:100]), CorruptCheckpointError,
     "truncated or corrupt checkpoint (100 bytes"),
    ("cut short", lambda p: write(p, FIXTURE_BYTES[:-1]), CorruptCheckpointError,
     f"truncated or corrupt checkpoint ({len(FIXTURE_BYTES) - 1} bytes"),
    ("pickled object", lambda p: savez(p, {"info": np.array([{"a": 1}], dtype=object)}),
     CorruptCheckpointError, "an entry holds Python objects (pickled)"),
    ("newer", lambda p: savez(p, with_info(format="minicnn-checkpoint-3")),
     NewerCheckpointError, "written by a newer minicnn (format v3, this reads v1)"),
    ("missing", lambda p: p, CheckpointError, "no such file"),
]


@pytest.mark.parametrize("name,make,error,words", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files_are_refused_in_words(tmp_path, name, make, error, words):
    path = make(tmp_path / "model.npz")
    model, opt, sched, loader = fixture_model()
    before = snapshot(model, opt, sched)
    with pytest.raises(error) as info:
        training.load(path, model, opt, scheduler=sched, loader=loader)
    message = str(info.value)
    assert message.startswith(str(path)) and words in message
    assert "allow_pickle" not in message and "\n" not in message
    assert isinstance(info.value, ValueError)  # callers catching ValueError keep working
    assert_unchanged(before, model, opt, sched)


def test_a_checkpoint_of_another_model_names_the_keys():
    other = models.vgg(in_channels=3, image_size=8, widths=[4, 8, 8], depth=1, hidden=16,
                       batchnorm=True, dropout=0.25)
    before = {k: np.array(v) for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=r"a checkpoint from another model \(it "
                       r"does not fit this one\): missing keys \['layers.8.W'"):
        training.load(FIXTURE, other)
    wider = models.vgg(in_channels=3, image_size=8, widths=[4, 16], depth=1, hidden=16,
                       batchnorm=True, dropout=0.25)
    with pytest.raises(CheckpointMismatchError, match=r"parameter 'layers.4.W' has shape "
                       r"\(8, 4, 3, 3\) in the checkpoint but \(16, 4, 3, 3\) in the model"):
        training.load(FIXTURE, wider)
    for key, value in other.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_optimizer_and_scheduler_are_restored_when_either_does_not_fit(tmp_path):
    model, opt, sched, loader = fixture_model()
    adam = optim.Adam(model.parameters(), lr=1e-3)
    before = snapshot(model, opt, sched)
    with pytest.raises(CheckpointMismatchError, match="holds SGD state, but the optimizer is "
                                                      "Adam"):
        training.load(FIXTURE, model, adam)
    # A scheduler of another kind fails after the optimizer was loaded: both are put back.
    cosine = optim.CosineAnnealingLR(opt, T_max=5)
    cosine_before = cosine.state_dict()
    with pytest.raises(CheckpointMismatchError, match="scheduler state does not fit this "
                                                      "CosineAnnealingLR"):
        training.load(FIXTURE, model, opt, scheduler=cosine)
    assert cosine.state_dict() == cosine_before
    assert_unchanged(before, model, opt, sched)


# -- fuzzing: only CheckpointError, never a mis-shaped array -----------------------------------

def _rename(arrays, key):
    arrays[key.replace("layers", "blocks") if "layers" in key else key + "x"] = arrays.pop(key)


def _reshape(arrays, key):
    value = arrays[key]
    arrays[key] = np.zeros(value.shape + (2,), value.dtype) if value.ndim < 4 else value[..., :1]


MUTATIONS = {
    "drop": lambda arrays, key, dtype: arrays.pop(key),
    "rename": lambda arrays, key, dtype: _rename(arrays, key),
    "reshape": lambda arrays, key, dtype: _reshape(arrays, key),
    "retype": lambda arrays, key, dtype: arrays.__setitem__(
        key, np.zeros(arrays[key].shape, dtype)),
    "scalar": lambda arrays, key, dtype: arrays.__setitem__(key, np.array(7, dtype)),
    "json": lambda arrays, key, dtype: arrays.__setitem__(key, np.array('{"format": 1}')),
}
DTYPES = [np.int64, np.float16, np.float64, np.bool_, np.complex64, "U3", "S2", np.uint8]


@pytest.fixture(scope="module")
def fuzz_path(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "model.npz"


def check_load(path):
    """Load ``path`` into a fresh copy of the fixture's model: either a CheckpointError with
    nothing changed, or a success where every array kept its shape and dtype."""
    model, opt, sched, loader = fixture_model()
    before = snapshot(model, opt, sched)
    try:
        training.load(path, model, opt, scheduler=sched, loader=loader)
    except CheckpointError as exc:
        assert "allow_pickle" not in str(exc) and str(exc).startswith(str(path))
        assert_unchanged(before, model, opt, sched)
        return False
    for key, value in model.state_dict().items():
        assert value.shape == before[0][key].shape and value.dtype == np.float32, key
    return True


@pytest.mark.filterwarnings("error")  # no warning either (a cast, an unclosed file)
@settings(max_examples=60)
@given(st.integers(0, len(FIXTURE_BYTES) - 1))
def test_fuzz_truncated_files(fuzz_path, length):
    write(fuzz_path, FIXTURE_BYTES[:length])
    assert not check_load(fuzz_path)  # every prefix is incomplete


@pytest.mark.filterwarnings("error")  # no warning either (a cast, an unclosed file)
@settings(max_examples=80)
@given(st.lists(st.tuples(st.integers(0, len(FIXTURE_BYTES) - 1), st.integers(1, 255)),
                min_size=1, max_size=3))
# Found by this test: a '}' -> '|' in the .npy header of a member large enough that NumPy
# parses the header before zipfile checks the CRC; its fallback header parser gave up with
# tokenize.TokenError instead of a ValueError.
@example(flips=[(re.search(rb"'descr': '<U\d{4,}', 'fortran_order': False, 'shape': \(\), (\})",
                           FIXTURE_BYTES).start(1), 1)])
def test_fuzz_flipped_bytes(fuzz_path, flips):
    content = bytearray(FIXTURE_BYTES)
    for position, mask in flips:
        content[position] ^= mask
    write(fuzz_path, bytes(content))
    check_load(fuzz_path)  # a flip in zip padding may still load: then it loaded right


@pytest.mark.filterwarnings("error")  # no warning either (a cast, an unclosed file)
@settings(max_examples=80)
@given(st.sampled_from(sorted(FIXTURE_ARRAYS)), st.sampled_from(sorted(MUTATIONS)),
       st.sampled_from(DTYPES))
def test_fuzz_wrong_keys_shapes_and_dtypes(fuzz_path, key, mutation, dtype):
    arrays = dict(FIXTURE_ARRAYS)
    MUTATIONS[mutation](arrays, key, dtype)
    savez(fuzz_path, arrays)
    loaded = check_load(fuzz_path)
    if loaded and not key.startswith(("optim/", "sched/")):
        # The model's state loads only when nothing but its precision changed; an 'rng' entry
        # that names no generator restores none. (The optimizer judges its own state: a
        # missing momentum buffer is that of a parameter not yet stepped.)
        assert (key.startswith(("param/", "buffer/")) and mutation == "retype"
                and np.dtype(dtype).kind == "f") or (key == "rng" and mutation == "json")


def test_the_fuzzed_reader_accepts_the_intact_file(fuzz_path):
    write(fuzz_path, FIXTURE_BYTES)
    assert check_load(fuzz_path)
    assert os.path.getsize(fuzz_path) == len(FIXTURE_BYTES)


# -- on the device -----------------------------------------------------------------------------

def test_the_v1_fixture_loads_onto_either_backend(xp, tmp_path):
    # The file holds host arrays; the model's arrays stay on its device and dtype, and a
    # file written from a device model is the same v1 file.
    model, opt, sched, loader = fixture_model()
    training.load(FIXTURE, model, opt, scheduler=sched, loader=loader)
    for key, value in model.state_dict().items():
        assert isinstance(value, xp.ndarray) and value.dtype == np.float32, key
    with model.mode(training=False):
        logits = model.forward(xp.asarray(fixture_input()))
    from minicnn.backend import to_numpy

    np.testing.assert_allclose(to_numpy(logits), FIXTURE_INFO["meta"]["expected_logits"],
                               rtol=1e-5, atol=1e-5)
    training.save(tmp_path / "again.npz", model, opt, scheduler=sched, loader=loader, epoch=2)
    with np.load(tmp_path / "again.npz", allow_pickle=False) as f:
        assert f.files == list(FIXTURE_ARRAYS)
        np.testing.assert_array_equal(f["param/layers.0.W"], FIXTURE_ARRAYS["param/layers.0.W"])
