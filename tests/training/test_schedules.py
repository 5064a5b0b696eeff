import pytest

from tiframework.config import TrainingConfig
from tiframework.errors import UserError
from tiframework.training.schedules import (
    Segment,
    a1111_extra_step,
    cosine_restarts_rate,
    learning_rate,
    parse_schedule,
    rate_at,
    total_steps,
    training_steps,
)

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


# --- against A1111's scheduler (restated in tests/helpers/peers.py) -------------------------------

SCHEDULES = ["0.005", "0.01:-1", "0.0005:50, 0.0001:100", "0.01:10, 0.005:20, 0.001", "0.01:10, 0.005:20, 0.001:-1",
             "0.02:7", "0.1:3, 0.2:6, 0.3:9, 0.4:12", "1e-3:25,", "0.01:10, 0.001:1000"]


def ours(text: str, max_steps: int, start: int = 0) -> list[float]:
    segments = parse_schedule(text)
    return [rate_at(segments, step) for step in range(start, total_steps(segments, max_steps))]


@pytest.mark.parametrize("text", SCHEDULES)
def test_every_step_matches_a1111_except_the_documented_case(text):
    from peers import a1111_rates

    segments = parse_schedule(text)
    for max_steps in range(1, 40):
        for start in range(0, max_steps):
            theirs, mine = a1111_rates(text, max_steps, start), ours(text, max_steps, start)
            extra = a1111_extra_step(segments, max_steps)
            if extra is None:
                assert mine == theirs, (text, max_steps, start)
            else:
                # an entry ends exactly at max_steps and another follows: A1111 trains one
                # more step at the next rate; we stop at max_steps (see schedules.py)
                assert theirs == [*mine, extra], (text, max_steps, start)


def test_the_documented_difference():
    from peers import a1111_rates

    assert a1111_rates("0.005:10, 0.001", 10) == [0.005] * 10 + [0.001]
    assert ours("0.005:10, 0.001", 10) == [0.005] * 10
    assert a1111_extra_step(parse_schedule("0.005:10, 0.001"), 10) == 0.001
    assert a1111_extra_step(parse_schedule("0.005:10, 0.001"), 11) is None
    assert a1111_extra_step(parse_schedule("0.005:10"), 10) is None


def test_learning_rate_is_one_rule_for_both_schedulers():
    a1111 = TrainingConfig(learning_rate=GUIDE, max_steps=7500)
    assert [learning_rate(a1111, s) for s in (0, 4999, 5000)] == [0.0005, 0.0005, 0.0001]
    assert training_steps(a1111) == 7500
    cosine = TrainingConfig(learning_rate="0.01", lr_scheduler="cosine_restarts", cosine_cycle_steps=10)
    assert learning_rate(cosine, 5) == pytest.approx(cosine_restarts_rate(0.01, 5, 10))
