def encode(s: str) -> str:
    if any(c.isdigit() for c in s):
        raise ValueError("input contains a digit")
    out = []
    i = 0
    while i < len(s):
        j = i
        while j < len(s) and s[j] == s[i]:
            j += 1
        out.append(f"{j - i}{s[i]}")
        i = j
    return "".join(out)


def decode(s: str) -> str:
    out = []
    count = ""
    for c in s:
        if c.isdigit():
            count += c
            continue
        if not count or int(count) == 0:
            raise ValueError(f"bad count before {c!r}")
        out.append(c * int(count))
        count = ""
    if count:
        raise ValueError("trailing count without a character")
    return "".join(out)
