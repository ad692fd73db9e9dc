from shop.models import Item, OutOfStock


class Inventory:
    def __init__(self):
        self._items = {}

    def add(self, sku, name, price_cents, qty=1):
        if qty <= 0:
            raise ValueError("qty must be positive")
        if price_cents < 0:
            raise ValueError("price must not be negative")
        item = self._items.get(sku)
        if item is None:
            self._items[sku] = Item(sku, name, price_cents, qty)
        else:
            item.qty += qty

    def _check(self, sku, qty):
        if sku not in self._items:
            raise KeyError(sku)
        have = self._items[sku].qty
        if qty > have:
            raise OutOfStock(sku, qty, have)

    def remove(self, sku, qty=1):
        self._check(sku, qty)
        item = self._items[sku]
        item.qty -= qty
        if item.qty == 0:
            del self._items[sku]

    def quantity(self, sku):
        item = self._items.get(sku)
        return item.qty if item else 0

    def total_value(self):
        return sum(i.value_cents for i in self._items.values())

    def low_stock(self, threshold):
        return sorted((i for i in self._items.values() if i.qty <= threshold),
                      key=lambda i: i.sku)

    def order(self, lines):
        wanted = {}
        for sku, qty in lines:
            if qty <= 0:
                raise ValueError("qty must be positive")
            wanted[sku] = wanted.get(sku, 0) + qty
        for sku, qty in wanted.items():
            self._check(sku, qty)
        for sku, qty in wanted.items():
            self.remove(sku, qty)
