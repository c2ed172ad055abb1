"""Log text as the database can store it."""


def storable_text(text: str) -> str:
    """SQLite text would end at a NUL, and UTF-8 has no lone surrogates: both
    become U+FFFD, and the rest of the line is kept."""
    text = text.replace("\x00", "\ufffd")
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
