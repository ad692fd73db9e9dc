"""A small JSON parser (no json module)."""


class ParseError(ValueError):
    pass


_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "n": "\n", "t": "\t",
            "r": "\r", "b": "\b", "f": "\f"}


class _Parser:
    def __init__(self, text):
        self.s = text
        self.i = 0

    def error(self, what):
        raise ParseError(f"{what} at offset {self.i}")

    def ws(self):
        while self.i < len(self.s) and self.s[self.i] in " \t\r\n":
            self.i += 1

    def peek(self):
        return self.s[self.i] if self.i < len(self.s) else ""

    def expect(self, c):
        if self.peek() != c:
            self.error(f"expected {c!r}")
        self.i += 1

    def value(self):
        self.ws()
        c = self.peek()
        if c == "{":
            return self.obj()
        if c == "[":
            return self.arr()
        if c == '"':
            return self.string()
        if c == "-" or c.isdigit():
            return self.number()
        for word, val in (("true", True), ("false", False), ("null", None)):
            if self.s.startswith(word, self.i):
                self.i += len(word)
                return val
        self.error("unexpected input")

    def obj(self):
        self.expect("{")
        out = {}
        self.ws()
        if self.peek() == "}":
            self.i += 1
            return out
        while True:
            self.ws()
            if self.peek() != '"':
                self.error("expected string key")
            key = self.string()
            self.ws()
            self.expect(":")
            out[key] = self.value()
            self.ws()
            if self.peek() == ",":
                self.i += 1
                continue
            self.expect("}")
            return out

    def arr(self):
        self.expect("[")
        out = []
        self.ws()
        if self.peek() == "]":
            self.i += 1
            return out
        while True:
            out.append(self.value())
            self.ws()
            if self.peek() == ",":
                self.i += 1
                continue
            self.expect("]")
            return out

    def string(self):
        self.expect('"')
        out = []
        while True:
            if self.i >= len(self.s):
                self.error("unterminated string")
            c = self.s[self.i]
            self.i += 1
            if c == '"':
                return "".join(out)
            if c == "\\":
                e = self.peek()
                self.i += 1
                if e in _ESCAPES:
                    out.append(_ESCAPES[e])
                elif e == "u":
                    digits = self.s[self.i:self.i + 4]
                    if len(digits) != 4 or any(d not in "0123456789abcdefABCDEF" for d in digits):
                        self.error("bad \\u escape")
                    out.append(chr(int(digits, 16)))
                    self.i += 4
                else:
                    self.error("bad escape")
            elif c < " ":
                self.error("control character in string")
            else:
                out.append(c)

    def number(self):
        start = self.i
        if self.peek() == "-":
            self.i += 1
        if self.peek() == "0":
            self.i += 1
        elif self.peek().isdigit():
            while self.peek().isdigit():
                self.i += 1
        else:
            self.error("bad number")
        is_float = False
        if self.peek() == ".":
            is_float = True
            self.i += 1
            if not self.peek().isdigit():
                self.error("bad fraction")
            while self.peek().isdigit():
                self.i += 1
        if self.peek() in ("e", "E"):
            is_float = True
            self.i += 1
            if self.peek() in ("+", "-"):
                self.i += 1
            if not self.peek().isdigit():
                self.error("bad exponent")
            while self.peek().isdigit():
                self.i += 1
        text = self.s[start:self.i]
        return float(text) if is_float else int(text)


def parse(text):
    p = _Parser(text)
    v = p.value()
    p.ws()
    if p.i != len(text):
        p.error("trailing data")
    return v
