def _shift_char(c, shift):
    if "a" <= c <= "z":
        return chr((ord(c) - ord("a") + shift) % 26 + ord("a"))
    if "A" <= c <= "Z":
        return chr((ord(c) - ord("A") + shift) % 26 + ord("A"))
    return c


def encrypt(text, shift):
    return "".join(_shift_char(c, shift) for c in text)


def decrypt(text, shift):
    return encrypt(text, -shift)


def crack(ciphertext):
    best, best_count = 0, -1
    for shift in range(26):
        count = decrypt(ciphertext, shift).lower().count("e")
        if count > best_count:
            best, best_count = shift, count
    return best
