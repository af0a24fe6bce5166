"""Bad input gets a 4xx naming what was wrong, never a 500 (app/inputs.py and the handlers that use
it): control and bidi characters in a job's strings, NUL anywhere on SQLite and PostgreSQL,
numbers that only look like numbers, JSON that Python parses but JSON cannot carry back, and an
oversize login form, against a real server where only a real server shows it."""

import pytest
from fastapi.testclient import TestClient

from app.models import JobCreate
from app.security import SESSION_COOKIE, make_session

HTML = {"Accept": "text/html,application/xhtml+xml"}
TOKEN = "inputs-token-0123456789-abcdefghij"

# A valid value for each string field of a job, with a marker where the bad character goes.
VALID = {"name": "run{}one", "tags": ["tag{}one"], "wandb_project": "project{}one", "wandb_entity": "team{}one"}
REFUSED_CHARACTERS = [
    "\x00", "\x07", "\x1b", "\t", "\n", "\r", "\x7f", "\x85", "\x9b", "\u202a", "\u202e", "\u2066", "\u2069",
]


def job_string_fields() -> list[str]:
    """Every field of JobCreate that takes free-form strings (not a fixed choice), from its schema."""
    def free_string(spec: dict) -> bool:
        options = spec.get("anyOf", [spec])
        return any(o.get("type") == "string" and "enum" not in o or "items" in o and free_string(o["items"]) for o in options)

    return [name for name, spec in JobCreate.model_json_schema()["properties"].items() if free_string(spec)]


def job_count(client: TestClient) -> int:
    return client.get("/jobs").json()["total"]


def test_every_string_field_of_a_job_is_covered_here():
    assert sorted(job_string_fields()) == sorted(VALID)


@pytest.mark.parametrize("field", sorted(VALID))
@pytest.mark.parametrize("character", REFUSED_CHARACTERS, ids=lambda c: f"U+{ord(c):04X}")
def test_control_and_bidi_characters_are_refused_naming_the_field(client, field, character):
    value = VALID[field]
    bad = [value[0].format(character)] if isinstance(value, list) else value.format(character)
    response = client.post("/jobs", json={field: bad})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["field"].split(".")[0] == field
    assert job_count(client) == 0


def test_control_characters_tell_which_one(client):
    [error] = client.post("/jobs", json={"wandb_project": "p\x1b[31m"}).json()["detail"]
    assert error["type"] == "control_character" and "U+001B" in error["msg"]


def test_other_unicode_stays_allowed(client):
    name, tag = "résumé 学习 🚀 ﻿x", "تجربة"
    job = client.post("/jobs", json={"name": name, "tags": [tag], "wandb_project": "Ünïcode-项目"}).json()
    assert job["name"] == name and job["params"]["tags"] == [tag]


def test_the_form_refuses_them_beside_the_field(client):
    response = client.post("/jobs/new", data={"name": "evil\u202egnp.exe", "epochs": "2"})
    assert response.status_code == 422
    assert 'id="name-error"' in response.text and "U+202E" in response.text
    assert job_count(client) == 0


def test_nul_is_refused_in_every_string_input_on_both_databases(db_client):
    client = db_client
    job = client.post("/jobs", json={"name": "plain"}).json()
    refusals = [
        ("q", client.get("/", params={"q": "a\x00b"}, headers=HTML)),
        ("job_id", client.get(f"/jobs/{job['id']}%00")),
        ("status", client.get("/jobs", params={"status": "queued\x00"})),
        ("next", client.post("/login", data={"next": "/\x00", "token": "t"})),
        ("name", client.post("/jobs/new", data={"name": "form\x00job", "epochs": "2"})),
        ("tags.0", client.post("/jobs", json={"tags": ["a\x00"]})),
        ("wandb_project", client.post("/jobs", json={"wandb_project": "\x00"})),
    ]
    for field, response in refusals:
        assert response.status_code == 422, (field, response.text)
        assert field in [error["field"] for error in response.json()["detail"]], (field, response.text)
    # A file name in a path resolves only to the names the job lists.
    assert client.get(f"/jobs/{job['id']}/artifacts/model%00.pth").status_code == 404
    assert job_count(client) == 1
    assert client.get("/", params={"q": "plain"}, headers=HTML).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"lr": NaN}', "lr"), (b'{"lr": Infinity}', "lr"), (b'{"momentum": -Infinity}', "momentum"),
        (b'{"lr": 1e400}', "lr"), (b'{"epochs": NaN}', "epochs"), (b'{"name": "\\ud800"}', "name"),
        (b'{"tags": ["\\udfff"]}', "tags.0"), (b'{"preset": NaN}', "preset"), (b'{"learning_rate": NaN}', "learning_rate"),
        (b'{"\\ud800": 1}', None), (b"[NaN, 1e400]", None),
    ],
)
def test_json_that_json_cannot_carry_back_is_a_422_naming_the_field(client, body, field):
    response = client.post("/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["field"] == field
    assert job_count(client) == 0


@pytest.mark.parametrize("ids", ["1,%C2%B2", "1,%C2%B9", "1," + "9" * 5000, "1,١٢"])
def test_compare_refuses_ids_that_only_look_like_numbers(client, ids):
    client.post("/jobs", json={})
    response = client.get(f"/compare?ids={ids}", headers=HTML)
    assert response.status_code == 400 and "is not a job id" in response.text


def test_a_real_server_answers_odd_cookies_and_an_oversize_login_with_4xx_and_no_traceback(make_stack):
    stack = make_stack(TRAINBOARD_TOKEN=TOKEN)
    stack.serve()
    signature = make_session(TOKEN).split(".")[1]
    # Raw bytes on the wire, as a browser or attacker can send them: "\xb2" is "²" in Latin-1,
    # which str.isdigit() accepts and int() refuses.
    for expiry in (b"9" * 4301, b"\xb2", b"1\xb2", "٣".encode(), b"-1", b""):
        cookie = {"Cookie": f"{SESSION_COOKIE}=".encode() + expiry + b"." + signature.encode()}
        assert stack.client.get("/jobs", headers=cookie).status_code == 401, expiry
        assert stack.client.get("/healthz", headers=cookie).status_code == 200, expiry
        page = stack.client.get("/", headers={**cookie, **HTML})
        assert page.status_code == 303 and page.headers["location"].startswith("/login"), expiry

    def over_a_mebibyte():
        yield b"token="
        for _ in range(17):
            yield b"a" * 65536

    login = stack.client.post("/login", content=over_a_mebibyte(), headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert login.status_code == 413
    assert stack.client.get("/healthz").status_code == 200
    log = stack.logs()
    assert "Traceback" not in log and " 500 " not in log, log
