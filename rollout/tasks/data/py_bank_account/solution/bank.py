class InsufficientFunds(Exception):
    pass


def _check_amount(amount):
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ValueError(f"invalid amount: {amount!r}")


class Account:
    def __init__(self, owner, balance=0):
        if isinstance(balance, bool) or not isinstance(balance, int) or balance < 0:
            raise ValueError(f"invalid opening balance: {balance!r}")
        self.owner = owner
        self._balance = balance
        self._history = []

    @property
    def balance(self):
        return self._balance

    def deposit(self, amount):
        _check_amount(amount)
        self._balance += amount
        self._history.append(("deposit", amount))

    def _take(self, amount):
        _check_amount(amount)
        if amount > self._balance:
            raise InsufficientFunds(
                f"{self.owner}: balance {self._balance} < {amount}")
        self._balance -= amount

    def withdraw(self, amount):
        self._take(amount)
        self._history.append(("withdraw", amount))

    def transfer(self, other, amount):
        if other is self:
            raise ValueError("cannot transfer to the same account")
        self._take(amount)
        other._balance += amount
        self._history.append(("transfer_out", amount))
        other._history.append(("transfer_in", amount))

    def history(self):
        return list(self._history)
