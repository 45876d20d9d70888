"""The demo's progress: stage lines estimate what is left from the weights and the pace so far; progress
bars in a command's output are relayed, the rest kept back."""

import io

from colossal_hammer.demo.progress import Progress, minutes, relay


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_stage_lines_scale_the_weights_by_the_pace_so_far():
    clock, out = Clock(), io.StringIO()
    progress = Progress({"a": 10, "b": 30, "c": 60}, out=out, clock=clock)
    progress.stage("a", "first")
    clock.now += 5  # "a" is done; 10% of the work: the pace counts from here (twice as fast as measured)
    progress.stage("b", "second")
    clock.now += 15
    progress.stage("c", "third")
    clock.now += 30
    assert progress.finish() == 50
    lines = [line for line in out.getvalue().splitlines() if line]
    assert lines == ["== [1/3] a: first (0s elapsed, about 1m40s left)",
                     "== [2/3] b: second (5s elapsed, about 45s left)",
                     "== [3/3] c: third (20s elapsed, about 30s left)"]


def test_minutes():
    assert (minutes(59), minutes(61), minutes(781)) == ("59s", "1m01s", "13m01s")


OUTPUT = ("Loading model\nUserWarning: apex\n"
          "train:   0%|          | 0/3 [00:00<?, ?step/s]/x/c10d_logger.py:83: FutureWarning: deprecated\rtrain:  33%|███▎      | 1/3 [00:01<00:02,  1.00step/s]"
          "\rtrain: 100%|██████████| 3/3 [00:03<00:00,  1.00step/s]\ntrain: 100%|██████████| 3/3\nsaved step-3\n")


def test_relay_shows_bars_and_returns_everything():
    out = io.StringIO()
    # split mid-character: the decoder must carry a partial UTF-8 sequence over
    data = OUTPUT.encode()
    stream = io.BufferedReader(io.BytesIO(data), buffer_size=7)
    assert relay(stream, out, tty=True) == OUTPUT
    shown = out.getvalue()
    assert "\rtrain:  33%" in shown and "\rtrain: 100%" in shown and shown.endswith("\n")
    assert "apex" not in shown and "saved" not in shown and "Loading" not in shown and "Warning" not in shown


def test_relay_to_a_log_writes_few_bar_lines():
    out = io.StringIO()
    relay(io.BufferedReader(io.BytesIO(OUTPUT.encode())), out, tty=False, every=3600)
    lines = out.getvalue().splitlines()
    assert lines == ["train:   0%|          | 0/3 [00:00<?, ?step/s]",
                     "train: 100%|██████████| 3/3 [00:03<00:00,  1.00step/s]"]


def test_every_scale_weighs_every_stage_in_order():
    from colossal_hammer.demo.pipeline import SCALES, STAGES, WEIGHTS

    assert set(WEIGHTS) == set(SCALES)
    assert all(list(weights) == list(STAGES) and min(weights.values()) > 0 for weights in WEIGHTS.values())
