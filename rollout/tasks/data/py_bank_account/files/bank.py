class InsufficientFunds(Exception):
    pass


class Account:
    def __init__(self, owner, balance=0):
        raise NotImplementedError

    @property
    def balance(self):
        raise NotImplementedError

    def deposit(self, amount):
        raise NotImplementedError

    def withdraw(self, amount):
        raise NotImplementedError

    def transfer(self, other, amount):
        raise NotImplementedError

    def history(self):
        raise NotImplementedError
