"""``latest.pt`` is read with ``weights_only=True``: a crafted pickle never runs, junk is a one-line error."""

from __future__ import annotations

import math
import os
import pickle

import numpy as np
import pytest
import torch

from histosam.errors import CheckpointError
from histosam.train.checkpoint import load_train_state, plain_train_state, save_train_state


class _Payload:
    """Unpickling this calls ``os.system`` (writes the marker file) -- if the unpickler lets it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _assert_one_line(exc: pytest.ExceptionInfo, path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg, msg
    assert "weights_only" not in msg, msg  # never torch's hint to retry the unsafe way
    assert "not a valid histosam training state" in msg or "cannot read" in msg, msg
    return msg


@pytest.mark.parametrize("how", ["pickle", "torch_save", "inside_state"])
def test_code_payload_is_refused_and_never_runs(tmp_path, how):
    marker = tmp_path / "PWNED"
    latest = tmp_path / "latest.pt"
    payload = _Payload(marker)
    if how == "pickle":
        latest.write_bytes(pickle.dumps(payload, protocol=2))
    elif how == "torch_save":
        torch.save(payload, latest)
    else:  # a plausible training state carrying the payload in one entry
        torch.save({"format": "histosam-train-state", "version": 1, "model": {}, "optimizer": {},
                    "scheduler": {}, "epoch": 1, "step": 2, "best": 0.5, "torch_rng": torch.get_rng_state(),
                    "config": {"x": payload}}, latest)
    assert not marker.exists()
    with pytest.raises(CheckpointError) as exc:
        load_train_state(latest)
    msg = _assert_one_line(exc, latest)
    assert "--no-resume" in msg and "output_dir" in msg
    if how != "pickle":
        assert "pickled Python objects" in msg
    assert not marker.exists(), "the pickle payload ran"


def test_payload_would_run_with_unsafe_loading(tmp_path):
    """Control: the payload is real (it does write the marker when unpickled without restrictions)."""
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("content", [
    pytest.param(lambda: np.random.default_rng(0).bytes(4096), id="random-bytes"),
    pytest.param(lambda: b"", id="empty"),
    pytest.param(lambda: b"format: histosam-train-state\n", id="text"),
    pytest.param(lambda: b"\x80\x04K\x01", id="pickle-without-stop"),
    pytest.param(lambda: b"PK\x03\x04" + bytes(60), id="zip-header-only"),
])
def test_junk_files_are_checkpoint_errors(tmp_path, content):
    latest = tmp_path / "latest.pt"
    latest.write_bytes(content())
    with pytest.raises(CheckpointError) as exc:
        load_train_state(latest)
    _assert_one_line(exc, latest)


def test_truncated_and_foreign_states(tmp_path):
    good = tmp_path / "good.pt"
    save_train_state(good, {"format": "histosam-train-state", "version": 1, "model": {"w": torch.ones(64, 64)},
                            "optimizer": {}, "scheduler": {}, "epoch": 0, "step": 0, "best": math.inf,
                            "torch_rng": torch.get_rng_state(), "config": {}})
    assert load_train_state(good)["best"] == math.inf
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 100):
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as exc:
            load_train_state(bad)
        _assert_one_line(exc, bad)
    for obj, what in [({"state_dict": {}}, "format"), ([1, 2], "list"), ({"format": "histosam-train-state",
                                                                          "version": 99}, "version"),
                      ({"format": "histosam-train-state", "version": 1}, "no 'model'")]:
        p = tmp_path / "foreign.pt"
        torch.save(obj, p)
        with pytest.raises(CheckpointError, match=what) as exc:
            load_train_state(p)
        _assert_one_line(exc, p)
    with pytest.raises(CheckpointError):
        load_train_state(tmp_path)  # a folder


def test_plain_train_state_converts_scalars_and_refuses_arrays():
    out = plain_train_state({"a": np.float64(1.5), "b": [np.int64(3), (np.float32(2.0),)], "c": math.inf})
    assert out == {"a": 1.5, "b": [3, (2.0,)], "c": math.inf} and type(out["a"]) is float
    with pytest.raises(TypeError, match=r"state\['x'\]"):
        plain_train_state({"x": np.zeros(3)})
    with pytest.raises(TypeError):
        plain_train_state({"x": object()})


# -------------------------------------------------------------- a real training state round-trips
pytest.importorskip("histosam.models.build")


def _trainer(tmp_path, **kw):
    from test_train_loop import make

    return make(tmp_path, epochs=1, iterations_per_epoch=1, batch_size=1, **kw)


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


def test_real_training_state_round_trips_with_weights_only(tmp_path):
    torch.set_num_threads(1)
    tr = _trainer(tmp_path)
    fresh = tr.state()  # before training: best is math.inf, scheduler.best is inf
    assert fresh["best"] == math.inf
    tr.fit(progress=False)
    latest = tmp_path / "latest.pt"
    raw = torch.load(latest, map_location="cpu", weights_only=True)  # what fit() wrote loads safely
    state = load_train_state(latest)
    assert state["epoch"] == 1 and state["step"] == 1 and state["optimizer"]["state"]
    assert _equal(state, raw) and _equal(state, tr.state())
    for s in (fresh,):  # the untrained state (inf values) also round-trips through save/load
        save_train_state(tmp_path / "fresh.pt", s)
        assert _equal(load_train_state(tmp_path / "fresh.pt"), s)
    # restore into a new trainer: identical state afterwards
    other = _trainer(tmp_path / "other", seed=1)
    other.restore(state)
    assert _equal(other.state()["model"], state["model"])
    assert _equal(other.state()["optimizer"], state["optimizer"])
    assert other.epoch == 1 and other.step == 1 and other.best == tr.best
    assert other.sched.state_dict() == tr.sched.state_dict()


def test_restore_of_another_model_is_one_line_error(tmp_path):
    tr = _trainer(tmp_path)
    state = tr.state()
    state["model"] = {k: v for k, v in list(state["model"].items())[:-3]}
    with pytest.raises(CheckpointError, match="another model") as exc:
        _trainer(tmp_path / "b").restore(state)
    assert "\n" not in str(exc.value) and "--no-resume" in str(exc.value)
    other_mode = _trainer(tmp_path / "c", finetune="decoders")
    with pytest.raises(CheckpointError, match="does not fit") as exc:
        other_mode.restore(tr.state())
    assert "\n" not in str(exc.value)


def test_fit_refuses_a_planted_latest_and_no_resume_ignores_it(tmp_path):
    marker = tmp_path / "PWNED"
    latest = tmp_path / "latest.pt"
    torch.save(_Payload(marker), latest)
    with pytest.raises(CheckpointError, match="latest.pt"):
        _trainer(tmp_path).fit(progress=False)
    assert not marker.exists()
    res = _trainer(tmp_path, resume=False).fit(progress=False)  # --no-resume starts from scratch
    assert res["epochs_done"] == 1 and load_train_state(latest)["step"] == 1 and not marker.exists()
