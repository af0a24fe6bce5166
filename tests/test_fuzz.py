"""Schemathesis against the app's own OpenAPI schema, with the token, on SQLite and PostgreSQL: no
server errors, and responses that conform to the schema; then the same operations again with odd
headers and cookies (any byte a server passes on, numbers that only look like numbers, digit runs
past what int() parses), where the only rule is no 5xx. A bounded number of examples per
operation fits CI."""

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.db import get_engine, migrate
from app.main import create_app
from app.security import CSRF_COOKIE, SESSION_COOKIE
from app.settings import Settings

TOKEN = "fuzz-token-0123456789-abcdefghij"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES_PER_OPERATION = 40

# What an HTTP server hands the app in a header value: tab, printable ASCII and any byte from
# 0x80 (as Latin-1), never CR, LF, NUL or DEL; no leading or trailing blanks.
HEADER_CHARACTERS = st.characters(codec="latin-1", exclude_categories=["Cc"], include_characters="\t\x85")
ODD_VALUE = st.one_of(
    st.text(HEADER_CHARACTERS, max_size=80),
    st.text("0123456789²³¹.-", max_size=24),
    st.integers(min_value=4200, max_value=5000).map(lambda digits: "9" * digits),
).map(str.strip)
HEADER_NAMES = (
    "Accept", "Content-Type", "Origin", "Referer", "Host", "X-CSRF-Token", "X-Forwarded-Proto", "X-Forwarded-For",
    "Content-Length", "If-None-Match", "Range",
)


@st.composite
def odd_headers(draw) -> dict[str, str]:
    """Some of the headers the app reads, each with an odd value, odd session and CSRF cookies,
    and the bearer token, or another scheme or an odd token (then the session cookie is judged)."""
    headers = draw(st.dictionaries(st.sampled_from(HEADER_NAMES), ODD_VALUE, max_size=4))
    headers["Cookie"] = f"{SESSION_COOKIE}={draw(ODD_VALUE)}.{draw(ODD_VALUE)}; {CSRF_COOKIE}={draw(ODD_VALUE)}"
    headers["Authorization"] = draw(st.sampled_from([AUTH["Authorization"], f"Basic {draw(ODD_VALUE)}", f"Bearer {draw(ODD_VALUE)}"]))
    return {name: value.strip() for name, value in headers.items() if value.strip()}


@pytest.fixture
def api_schema(database_url: str, tmp_path: Path):
    app_settings = Settings(
        database_url=database_url, artifacts_dir=tmp_path / "artifacts", data_dir=tmp_path / "data",
        token=TOKEN, _env_file=None,
    )
    migrate(get_engine(app_settings.database_url))
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(app_settings), headers=AUTH)


def operations(api_schema) -> list:
    found = [result.ok() for result in api_schema.get_all_operations()]
    assert len(found) >= 8
    return found


def test_every_operation_conforms_to_the_schema(api_schema):
    for operation in operations(api_schema):
        # Some job fields have rules that span fields (nesterov needs a momentum above 0, and a
        # preset sets nesterov), and a sweep's parameters must name job fields within their
        # bounds, which a JSON schema cannot state: their 422s are right.
        cross_field = operation.method.upper() == "POST" and operation.path in ("/jobs", "/sweeps")
        excluded = [schemathesis.checks.positive_data_acceptance] if cross_field else []

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def conforms(case):
            case.call_and_validate(headers=AUTH, excluded_checks=excluded)

        conforms()


def test_odd_headers_and_cookies_never_cause_a_server_error(api_schema):
    for operation in operations(api_schema):

        @given(case=operation.as_strategy(), headers=odd_headers())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case, headers):
            case.call_and_validate(headers=headers, checks=[schemathesis.checks.not_a_server_error])

        no_server_error()
