import pytest

from streamer.errors import InvalidURIError, UnsupportedSchemeError
from streamer.uri import parse_uri, redact


@pytest.mark.parametrize(
    ("uri", "scheme", "bucket", "key"),
    [
        ("s3://models/llama", "s3", "models", "llama"),
        ("s3://models/llama/", "s3", "models", "llama/"),
        ("s3://models", "s3", "models", ""),
        ("gs://b-1/a/b.json", "gs", "b-1", "a/b.json"),
        ("az://container/p", "az", "container", "p"),
        ("http://127.0.0.1:8080/a/b.bin", "http", "http://127.0.0.1:8080", "a/b.bin"),
        ("file:///srv/m", "file", "", "/srv/m"),
    ],
)
def test_parse_known_forms(uri, scheme, bucket, key):
    u = parse_uri(uri)
    assert (u.scheme, u.bucket, u.key) == (scheme, bucket, key)


def test_azure_blob_https_maps_to_az():
    u = parse_uri("https://acct1.blob.core.windows.net/models/llama")
    assert (u.scheme, u.account, u.bucket, u.key) == ("az", "acct1", "models", "llama")


def test_hf_revision():
    u = parse_uri("hf://meta/llama@v2")
    assert (u.scheme, u.bucket, u.revision) == ("hf", "meta/llama", "v2")


def test_local_path_is_absolute(tmp_path):
    u = parse_uri(str(tmp_path / "x"))
    assert u.scheme == "file" and u.key == str(tmp_path / "x")


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("", "empty"),
        ("s3://", "missing bucket"),
        ("s3:/bucket/x", "missing '//'"),
        ("s3://Bad_Bucket!/x", "invalid bucket"),
        ("s3://b1b/../etc", "'..'"),
        ("s3://user:pw@bucket/x", "credentials"),
        ("http:///nohost", "missing host"),
        ("hf://justone", "ORG/MODEL"),
        (" s3://b/x", "whitespace"),
    ],
)
def test_malformed_uris_name_the_problem(uri, reason):
    with pytest.raises(InvalidURIError) as e:
        parse_uri(uri)
    assert reason in str(e.value)
    assert isinstance(e.value, ValueError)


def test_unknown_scheme():
    with pytest.raises(UnsupportedSchemeError, match="ftp"):
        parse_uri("ftp://host/x")


def test_redact_strips_credentials_and_query():
    assert redact("https://u:secret@h:9/p?X-Amz-Signature=abc") == "https://h:9/p"
