import pytest

from ratelimit import KeyedLimiter, TokenBucket


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t

    def advance(self, s):
        self.t += s


def test_starts_full_and_drains():
    c = FakeClock()
    b = TokenBucket(rate=1, capacity=3, clock=c)
    assert [b.allow() for _ in range(4)] == [True, True, True, False]


def test_refills_over_time():
    c = FakeClock()
    b = TokenBucket(rate=2, capacity=2, clock=c)
    assert b.allow(2)
    assert not b.allow()
    c.advance(0.25)
    assert not b.allow()
    c.advance(0.25)
    assert b.allow()


def test_refill_is_capped_at_capacity():
    c = FakeClock()
    b = TokenBucket(rate=10, capacity=5, clock=c)
    c.advance(100)
    assert b.available() == pytest.approx(5)
    assert [b.allow() for _ in range(6)] == [True] * 5 + [False]


def test_failed_allow_takes_nothing():
    c = FakeClock()
    b = TokenBucket(rate=1, capacity=4, clock=c)
    assert b.allow(3)
    assert not b.allow(2)
    assert b.available() == pytest.approx(1)


def test_wait_time():
    c = FakeClock()
    b = TokenBucket(rate=4, capacity=4, clock=c)
    assert b.wait_time() == 0.0
    b.allow(4)
    assert b.wait_time(2) == pytest.approx(0.5)
    c.advance(0.5)
    assert b.wait_time(2) == pytest.approx(0.0)
    assert b.allow(2)


def test_validation():
    c = FakeClock()
    with pytest.raises(ValueError):
        TokenBucket(0, 1, clock=c)
    with pytest.raises(ValueError):
        TokenBucket(1, 0, clock=c)
    b = TokenBucket(1, 2, clock=c)
    with pytest.raises(ValueError):
        b.allow(3)
    with pytest.raises(ValueError):
        b.allow(0)


def test_keyed_limiter_independent_buckets():
    c = FakeClock()
    k = KeyedLimiter(rate=1, capacity=1, clock=c)
    assert k.allow("a")
    assert not k.allow("a")
    assert k.allow("b")
    c.advance(1)
    assert k.allow("a")
