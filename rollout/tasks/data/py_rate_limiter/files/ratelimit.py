import time


class TokenBucket:
    def __init__(self, rate, capacity, clock=time.monotonic):
        raise NotImplementedError

    def allow(self, cost=1):
        raise NotImplementedError

    def available(self):
        raise NotImplementedError

    def wait_time(self, cost=1):
        raise NotImplementedError


class KeyedLimiter:
    def __init__(self, rate, capacity, clock=time.monotonic):
        raise NotImplementedError

    def allow(self, key, cost=1):
        raise NotImplementedError
