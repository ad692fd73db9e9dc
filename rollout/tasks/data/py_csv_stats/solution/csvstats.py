def parse_line(line):
    fields = []
    cur = []
    i = 0
    in_quotes = False
    while i < len(line):
        c = line[i]
        if in_quotes:
            if c == '"':
                if i + 1 < len(line) and line[i + 1] == '"':
                    cur.append('"')
                    i += 1
                else:
                    in_quotes = False
            else:
                cur.append(c)
        elif c == '"':
            in_quotes = True
        elif c == ",":
            fields.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    if in_quotes:
        raise ValueError("unterminated quoted field")
    fields.append("".join(cur))
    return fields


def column_stats(text, column):
    lines = [l for l in text.splitlines() if l.strip()]
    if not lines:
        raise KeyError(column)
    header = parse_line(lines[0])
    if column not in header:
        raise KeyError(column)
    idx = header.index(column)
    values = []
    for line in lines[1:]:
        fields = parse_line(line)
        if idx >= len(fields):
            continue
        try:
            values.append(float(fields[idx]))
        except ValueError:
            continue
    if not values:
        return {"count": 0, "min": None, "max": None, "mean": None}
    return {"count": len(values), "min": min(values), "max": max(values),
            "mean": sum(values) / len(values)}
