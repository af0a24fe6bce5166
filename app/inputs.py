"""What the app accepts as text: the string type that refuses control characters, the check that
refuses NUL in every query and form value, and whole numbers read from text.

PostgreSQL cannot store or even compare a string holding NUL, so one reaching a query is a server
error there; escape sequences and bidi overrides in a name reach terminals, logs and W&B. Both are
refused up front with a 422 naming the field.
"""

import re
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

# C0 controls (tab and newline included: every field is one line), DEL, C1 controls, the bidi
# embeddings, overrides and isolates that reorder how the text around them is shown, and unpaired
# surrogates (a JSON body may spell "\ud800"; no database can store one).
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def _control_character_message(character: str) -> str:
    code = ord(character)
    kind = "an unpaired surrogate" if code >= 0xD800 else "a bidi control" if code >= 0x202A else "a control character"
    return f"contains U+{code:04X}, {kind}, which is not allowed"


def _refuse_control_characters(text: str) -> str:
    if found := CONTROL_CHARACTERS.search(text):
        raise PydanticCustomError("control_character", _control_character_message(found.group()))
    return text


# A string's check that it is one line without control, bidi-control or unpaired surrogate
# characters: every string field of a job has it, after its length constraints.
REFUSE_CONTROL = AfterValidator(_refuse_control_characters)


async def refuse_nul(request: Request) -> None:
    """Every route's first dependency: a NUL in a query or form value (or name) is a 422 naming it.
    JSON bodies are checked by their models (REFUSE_CONTROL); path parameters are ids, which must be
    numbers, or file names, which resolve only to the names a job lists (404 otherwise)."""
    fields = [("query", name, value) for name, value in request.query_params.multi_items()]
    if request.headers.get("content-type", "").startswith(FORM_TYPES):
        form = await request.form()
        fields += [("body", name, value) for name, value in form.multi_items() if isinstance(value, str)]
    errors = [
        {"type": "control_character", "loc": (where, name), "msg": _control_character_message("\x00"), "input": value}
        for where, name, value in fields
        if "\x00" in f"{name}{value}"
    ]
    if errors:
        raise RequestValidationError(errors)


def whole_number(text: str, max_digits: int) -> int | None:
    """`text` as a number when it is 1 to max_digits ASCII digits, else None. (str.isdigit() also
    takes "²", which int() refuses, and int() refuses more than 4,300 digits.)"""
    return int(text) if 0 < len(text) <= max_digits and text.isascii() and text.isdigit() else None
