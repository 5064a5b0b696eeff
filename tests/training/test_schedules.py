import pytest

from tiframework.errors import UserError
from tiframework.training.schedules import Segment, cosine_restarts_rate, parse_schedule, rate_at, total_steps

GUIDE = "0.0005:5000, 0.0001:10000"


@pytest.mark.parametrize(
    "text, segments",
    [
        ("0.005", [Segment(0.005, None)]),
        (GUIDE, [Segment(0.0005, 5000), Segment(0.0001, 10000)]),
        ("0.01:100, 0.001", [Segment(0.01, 100), Segment(0.001, None)]),
        ("0.01:100, 0.001:-1", [Segment(0.01, 100), Segment(0.001, None)]),
        (" 1e-3 : 10 ,", [Segment(0.001, 10)]),
    ],
)
def test_parse(text, segments):
    assert parse_schedule(text) == segments


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("abc", "cannot read"),
        ("0.01:x", "cannot read"),
        ("-0.01", "positive"),
        ("0.01, 0.001:10", "must be the last"),
        ("0.01:100, 0.001:50", "increase"),
        ("0.01:0", ">= 1"),
    ],
)
def test_parse_errors_name_the_key(text, fragment):
    with pytest.raises(UserError, match=fragment) as err:
        parse_schedule(text)
    assert "training.learning_rate" in str(err.value)


@pytest.mark.parametrize(
    "step, rate",
    [(0, 0.0005), (4999, 0.0005), (5000, 0.0001), (9999, 0.0001)],
)
def test_rate_holds_until_its_end_step(step, rate):
    assert rate_at(parse_schedule(GUIDE), step) == rate


def test_training_stops_when_schedule_runs_out():
    assert total_steps(parse_schedule(GUIDE), 20000) == 10000
    assert total_steps(parse_schedule(GUIDE), 7500) == 7500
    assert total_steps(parse_schedule("0.01:100, 0.001"), 7500) == 7500


def test_resume_skips_finished_pairs():
    # Resuming at step 6000 must land in the second pair, as A1111 does.
    assert rate_at(parse_schedule(GUIDE), 6000) == 0.0001


def test_cosine_restarts():
    assert cosine_restarts_rate(1.0, 0, 10) == 1.0
    assert cosine_restarts_rate(1.0, 5, 10) == pytest.approx(0.5)
    assert cosine_restarts_rate(1.0, 10, 10) == 1.0  # warm restart
    assert cosine_restarts_rate(1.0, 10, 10, mult=2) == 1.0
    assert cosine_restarts_rate(1.0, 20, 10, mult=2) == pytest.approx(0.5)  # second cycle is 20 long
