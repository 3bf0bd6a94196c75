"""Protocol edges (issue #8, class 5): the auth scheme, binary and JSONL detection over the whole file,
the upload's file name, and whatever headers and body framing a client sends get the right 4xx."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient
from service_helpers import wait_for_job

from api.routes.corpora import safe_filename
from das.app import build_app
from das_formats.corpus import CorpusError, read_corpus
from das_settings import Settings, get_settings

MGMT, INFER = "m-secret", "i-secret"
FILL = {"texts": ["the licence is [MASK] here"], "top_k": 2}
TINY_JOB = {"steps": "2", "batch_size": "2", "max_length": "32", "importance_samples": "4",
            "importance_batch_size": "2", "checkpoint_every": "0"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol-edges")
    settings = Settings(store=str(root / "store"), work_dir=root / "work", models_dir=get_settings().models_dir,
                        management_token=MGMT, inference_token=INFER, max_upload_bytes=128 * 1024,
                        max_json_bytes=2048)
    with TestClient(build_app(settings)) as c:
        yield c


def _auth(token=MGMT):
    return {"Authorization": f"Bearer {token}"}


def _upload(client, content: bytes, name: str = "c.txt", **form):
    return client.post("/v1/corpora", files={"file": (name, content, "text/plain")},
                       data={"domain": "legal", **form}, headers=_auth())


def _cancel(client, response):
    client.delete(f"/v1/jobs/{response.json()['job_id']}", headers=_auth())


# ------------------------------------------------------------------------------------------------- auth
@pytest.mark.parametrize("header,status", [
    (f"Bearer {INFER}", 200), (f"bearer {INFER}", 200), (f"BEARER {INFER}", 200), (f"BeArEr   {INFER} ", 200),
    (INFER, 401),  # a bare token: no scheme
    (f"Basic {INFER}", 401), (f"Token {INFER}", 401), (f"Bearer{INFER}", 401), ("Bearer", 401), ("Bearer ", 401),
    (f"Bearer {INFER}x", 401), (f"Bearer {INFER} extra", 401), ("", 401),
    ("Bearer t\xf8ken".encode("latin-1"), 401),  # a byte past ASCII: compare_digest must not raise (was a 500)
])
def test_the_bearer_scheme_is_case_insensitive_and_required(client, header, status):
    response = client.post("/v1/fill-mask", json=FILL, headers={"Authorization": header})
    assert response.status_code == status, response.text
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_the_management_token_with_any_case_of_the_scheme(client):
    for header in (f"bearer {MGMT}", f"BEARER {MGMT}"):
        assert client.post("/v1/models/v0001/activate", headers={"Authorization": header}).status_code == 200
    for header in (MGMT, f"bearer {INFER}"):
        response = client.post("/v1/models/v0001/activate", headers={"Authorization": header})
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"


# ------------------------------------------------------------------------------------------- corpus files
def test_binary_content_after_the_first_64_kib_is_found(tmp_path, client):
    head = b"a line of real text about licences\n" * 2000  # 70,000 bytes
    path = tmp_path / "late.txt"
    path.write_bytes(head + b"then \x00 binary\n")
    with pytest.raises(CorpusError, match=r"binary \(a NUL byte at offset 70005, line 2001\)"):
        read_corpus(path)
    response = _upload(client, head + b"then \x00 binary\n", name="late.txt")
    assert response.status_code == 422 and "late.txt: looks binary" in response.text
    assert "offset 70005, line 2001" in response.text


@pytest.mark.parametrize("name,content,expected", [
    ("notes.txt", "{braces open this note, but it is prose\nsecond document\n", ["{braces open this note, but it is "
                                                                                 "prose", "second document"]),
    ("notes.txt", '{"text": "a"}\n\n{"text": "b", "id": 2}\n', ["a", "b"]),  # every line an object: JSONL
    ("notes.txt", '["a JSON array is not a record"]\nprose\n', ['["a JSON array is not a record"]', "prose"]),
    ("notes.ndjson", '{"text": "a"}\n', ["a"]),
])
def test_jsonl_or_text_is_decided_by_the_file(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert read_corpus(path) == expected


@pytest.mark.parametrize("name,content,message", [
    ("notes.txt", '{"text": "a"}\n{broken\n', "line 2 is not valid JSON"),  # meant as JSONL: its first line is
    ("notes.txt", '{"text": "a"}\nplain prose\n', "line 2 is not valid JSON"),
    ("c.jsonl", "plain prose\n", "line 1 is not valid JSON"),  # meant as JSONL: its name says so
    ("c.JSONL", '{"body": "x"}\n', "line 1 has no string field 'text'"),
])
def test_a_file_meant_as_jsonl_keeps_line_numbered_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CorpusError, match=message):
        read_corpus(path)


def test_uploads_decide_jsonl_by_name_and_content(client):
    prose = _upload(client, b"{braces open this note\nsecond document\n", name="notes.txt", **TINY_JOB)
    assert prose.status_code == 202 and prose.json()["documents"] == 2, prose.text
    _cancel(client, prose)
    broken = _upload(client, b'{"text": "fine"}\nnot json\n', name="c.jsonl")
    assert broken.status_code == 422 and "c.jsonl: line 2 is not valid JSON" in broken.text
    by_name = _upload(client, b"plain prose\n", name="c.ndjson")  # the upload's suffix reaches the reader
    assert by_name.status_code == 422 and "line 1 is not valid JSON" in by_name.text


# --------------------------------------------------------------------------------------------- filenames
@pytest.mark.parametrize("sent,kept", [
    ("../../x.txt", "x.txt"), ("..\\..\\windows.txt", "windows.txt"), ("/etc/passwd", "passwd"),
    ('we"ird;name\t<1>.txt', "we_ird_name__1_.txt"), ("..", "upload"), ("", "upload"), (".hidden", "hidden"),
    ("r\u00e9sum\u00e9 2024.jsonl", "r\u00e9sum\u00e9 2024.jsonl"), ("evil\u202etxt.exe", "evil_txt.exe"),
    ("a" * 300 + ".txt", "a" * 124 + ".txt"),
])
def test_filenames_are_reduced_to_a_safe_base_name(sent, kept):
    assert safe_filename(sent) == kept


def test_the_upload_filename_reaches_the_job_and_the_manifest(service_settings, small_corpus):
    with TestClient(build_app(service_settings)) as c:
        odd = c.post("/v1/corpora", files={"file": ("../we;ird <1>.txt", b"another document\n", "text/plain")},
                     data={"domain": "legal", **TINY_JOB, "steps": "3"})
        assert odd.status_code == 202, odd.text
        assert c.get(f"/v1/jobs/{odd.json()['job_id']}").json()["corpus_filename"] == "we_ird _1_.txt"
        c.delete(f"/v1/jobs/{odd.json()['job_id']}")
        with open(small_corpus, "rb") as f:
            accepted = c.post("/v1/corpora", files={"file": ("../../x.txt", f, "text/plain")},
                              data={"domain": "legal", **TINY_JOB})
        assert accepted.status_code == 202, accepted.text
        job = wait_for_job(c, accepted.json()["job_id"])
        assert job["state"] == "succeeded" and job["corpus_filename"] == "x.txt", job
        manifest = c.get(f"/v1/models/{job['version']}").json()
        assert manifest["corpus"]["filename"] == "x.txt"
        assert manifest["corpus"]["sha256"] == accepted.json()["corpus_id"]


# ------------------------------------------------------------------------------ headers and body framing
def _chunks(body: bytes, size: int = 1024):
    for start in range(0, len(body), size):
        yield body[start:start + size]


def _multipart(content: bytes, boundary: str = "XyZ") -> bytes:
    return (f'--{boundary}\r\nContent-Disposition: form-data; name="domain"\r\n\r\nlegal\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="c.txt"\r\n'
            f"Content-Type: text/plain\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()


def test_chunked_bodies_over_the_limit_are_413(client):
    """A generator body has no Content-Length: the middleware counts it as it arrives."""
    big_json = json.dumps({"texts": ["a [MASK] " + "b" * 3000]}).encode()
    response = client.post("/v1/fill-mask", content=_chunks(big_json),
                           headers={**_auth(INFER), "content-type": "application/json"})
    assert response.status_code == 413 and "limit of 2048 bytes" in response.text
    small = client.post("/v1/fill-mask", content=_chunks(json.dumps(FILL).encode(), 8),
                        headers={**_auth(INFER), "content-type": "application/json"})
    assert small.status_code == 200
    upload = _multipart(b"word " * 60_000)  # 300 KB against 128 KiB (+ multipart overhead)
    response = client.post("/v1/corpora", content=_chunks(upload, 64 * 1024),
                           headers={**_auth(), "content-type": "multipart/form-data; boundary=XyZ"})
    assert response.status_code == 413 and "upload exceeds the limit of 131072 bytes" in response.text


@pytest.mark.parametrize("content_type,body,status", [
    ("multipart/form-data", b"no boundary", 400),
    ("multipart/form-data; boundary=XyZ", b"junk that is no multipart", 400),
    ("multipart/form-data; boundary=XyZ", _multipart(b"a document\n")[:-20], 422),  # cut short
    ("multipart/form-data; boundary=" + "B" * 5000, b"x", 400),
    ("application/json", b'{"domain": "legal"}', 422),
    ("text/plain", b"a document\n", 422),
    ("application/x-www-form-urlencoded", b"domain=legal&file=abc", 422),
    (None, b"", 422),
])
def test_malformed_and_mistyped_uploads_are_4xx(client, content_type, body, status):
    headers = {**_auth(), **({"content-type": content_type} if content_type else {})}
    response = client.post("/v1/corpora", content=body, headers=headers)
    assert response.status_code == status, response.text


@pytest.mark.parametrize("content_type,body", [
    ("application/json", b"{not json"),
    ("application/json", b""),
    ("application/json", b"\xff\xfe\x00"),
    ("application/json", b"[1, 2]"),
    ("application/json", b"null"),
    ("application/json", b'{"texts": ["a [MASK]"], "top_k": NaN}'),  # Python's parser reads NaN: was a 500
    ("application/json", b'{"texts": [Infinity]}'),
    ("application/json", b'{"texts": ["a [MASK]"], "top_k": 1e400}'),
    ("application/json; charset=latin-1", b'{"texts": ["caf\xe9 [MASK]"]}'),
    ("text/plain", json.dumps(FILL).encode()),
    ("multipart/form-data; boundary=XyZ", json.dumps(FILL).encode()),
    (None, json.dumps(FILL).encode()),
])
def test_invalid_json_bodies_are_4xx(client, content_type, body):
    headers = {**_auth(INFER), **({"content-type": content_type} if content_type else {})}
    for route in ("/v1/fill-mask", "/v1/embeddings")[: 1 if b"top_k" in body else 2]:  # embeddings has no top_k
        response = client.post(route, content=body, headers=headers)
        assert 400 <= response.status_code < 500, (route, response.status_code, response.text)
        assert response.json()["detail"]


# -------------------------------------------------------------------------------- a real server (uvicorn)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`das serve` on a loopback port: TestClient cannot send every framing a real client can."""
    root = tmp_path_factory.mktemp("protocol-server")
    port = _free_port()
    env = {**os.environ, "DAS_STORE": str(root / "store"), "DAS_WORK_DIR": str(root / "work"),
           "DAS_MODELS_DIR": str(get_settings().models_dir), "DAS_MAX_JSON_BYTES": "2048",
           "DAS_MAX_UPLOAD_BYTES": "4096", "DAS_MANAGEMENT_TOKEN": MGMT, "DAS_INFERENCE_TOKEN": INFER}
    proc = subprocess.Popen([sys.executable, "-c", "from das.cli import app; app()", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("das serve did not become ready")
    yield port
    proc.terminate()
    proc.wait(30)


def _chunked(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=_chunks(body), headers=headers, encode_chunked=True)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the whole body was sent: read its answer
    response = conn.getresponse()
    return response.status, response.read()


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        return s.recv(65536)


def test_a_real_server_answers_chunked_bodies_with_413_or_an_answer(server):
    json_headers = {**_auth(INFER), "Content-Type": "application/json"}
    status, body = _chunked(server, "/v1/fill-mask", json.dumps(FILL).encode(), json_headers)
    assert status == 200 and json.loads(body)["version"] == "v0001"
    big = json.dumps({"texts": ["a [MASK] " + "b" * 5000]}).encode()
    status, body = _chunked(server, "/v1/fill-mask", big, json_headers)
    assert status == 413 and b"limit of 2048 bytes" in body
    upload = _multipart(b"word " * 20_000)  # 100 KB against 4 KiB (+ multipart overhead)
    status, body = _chunked(server, "/v1/corpora", upload,
                            {**_auth(), "Content-Type": "multipart/form-data; boundary=XyZ"})
    assert status == 413 and b"upload exceeds the limit of 4096 bytes" in body
    status, body = _chunked(server, "/v1/corpora", _multipart(b"a document\n")[:-30],
                            {**_auth(), "Content-Type": "multipart/form-data; boundary=XyZ"})
    assert 400 <= status < 500, body


@pytest.mark.parametrize("head", [
    b"Content-Length: 99999999\r\n",  # declared over the limit
    b"Content-Length: abc\r\n",
    b"Content-Length: -5\r\n",
    b"Content-Length: 5\r\nContent-Length: 7\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    b"Transfer-Encoding: gzip\r\n",
])
def test_a_real_server_refuses_bad_framing_with_4xx(server, head):
    request = (b"POST /v1/fill-mask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Authorization: Bearer " + INFER.encode() + b"\r\n" + head + b"\r\n" + b'{"texts": ')
    answer = _raw(server, request)
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500, answer[:200]


def test_a_real_server_refuses_a_broken_chunk_with_4xx(server):
    request = (b"POST /v1/fill-mask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Authorization: Bearer " + INFER.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"zz\r\n{}\r\n0\r\n\r\n")
    answer = _raw(server, request)
    assert 400 <= int(answer.split(b" ", 2)[1]) < 500, answer[:200]
