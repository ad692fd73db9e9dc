import time


class TokenBucket:
    def __init__(self, rate, capacity, clock=time.monotonic):
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self._rate = float(rate)
        self._capacity = float(capacity)
        self._clock = clock
        self._tokens = float(capacity)
        self._last = clock()

    def _refill(self):
        now = self._clock()
        elapsed = max(0.0, now - self._last)
        self._last = now
        self._tokens = min(self._capacity, self._tokens + elapsed * self._rate)

    def _check(self, cost):
        if cost <= 0 or cost > self._capacity:
            raise ValueError(f"invalid cost {cost}")

    def allow(self, cost=1):
        self._check(cost)
        self._refill()
        if self._tokens + 1e-9 >= cost:
            self._tokens = max(0.0, self._tokens - cost)
            return True
        return False

    def available(self):
        self._refill()
        return self._tokens

    def wait_time(self, cost=1):
        self._check(cost)
        self._refill()
        missing = cost - self._tokens
        return 0.0 if missing <= 1e-9 else missing / self._rate


class KeyedLimiter:
    def __init__(self, rate, capacity, clock=time.monotonic):
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self._args = (rate, capacity, clock)
        self._buckets = {}

    def allow(self, key, cost=1):
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(*self._args)
        return bucket.allow(cost)
