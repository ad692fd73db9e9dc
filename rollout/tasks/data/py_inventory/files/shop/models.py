"""Data types shared by the shop package."""
from dataclasses import dataclass


class OutOfStock(Exception):
    """Raised when more units are requested than are in stock."""

    def __init__(self, sku, wanted, have):
        super().__init__(f"{sku}: wanted {wanted}, have {have}")
        self.sku = sku
        self.wanted = wanted
        self.have = have


@dataclass
class Item:
    sku: str
    name: str
    price_cents: int
    qty: int

    @property
    def value_cents(self):
        return self.price_cents * self.qty
