def merge(intervals):
    """Merge overlapping or touching (start, end) intervals."""
    for start, end in intervals:
        if start > end:
            raise ValueError(f"bad interval ({start}, {end})")
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def total_length(intervals):
    return sum(end - start for start, end in merge(intervals))
