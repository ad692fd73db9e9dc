def fizzbuzz(n):
    """Return the FizzBuzz sequence for 1..n as a list of strings."""
    raise NotImplementedError
