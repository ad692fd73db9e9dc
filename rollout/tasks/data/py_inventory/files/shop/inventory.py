from shop.models import Item, OutOfStock


class Inventory:
    def add(self, sku, name, price_cents, qty=1):
        raise NotImplementedError

    def remove(self, sku, qty=1):
        raise NotImplementedError

    def quantity(self, sku):
        raise NotImplementedError

    def total_value(self):
        raise NotImplementedError

    def low_stock(self, threshold):
        raise NotImplementedError

    def order(self, lines):
        raise NotImplementedError
