"""boto3's S3 client and the `aws` CLI against a minicloud test cloud's S3 API (served by
the gateway, path-style addressing), signing with AWS-style key pairs auth issued.

Run by tests/it/aws_clients.rs: MINICLOUD_URL is the gateway; S3_KEY_ID/S3_SECRET a key
pair of a role allowed every storage action (storage:* on storage:*, creating buckets
too), OTHER_KEY_ID/OTHER_SECRET one of a role with no storage permission, REVOKED_KEY_ID
a revoked one. Every test makes its own buckets, named uniquely per run, so the tests are
independent of each other and of their order.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import timedelta

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

URL = os.environ["MINICLOUD_URL"]
MiB = 1024 * 1024


def s3(key_id=None, secret=None):
    """An S3 client of the storage role's pair, or of the pair given."""
    return boto3.client(
        "s3",
        endpoint_url=URL,
        region_name="us-east-1",
        aws_access_key_id=key_id or os.environ["S3_KEY_ID"],
        aws_secret_access_key=secret or os.environ["S3_SECRET"],
        # s3v4 explicitly: botocore otherwise presigns with SigV2 in us-east-1.
        config=Config(
            signature_version="s3v4",
            retries={"max_attempts": 1},
            s3={"addressing_style": "path"},
        ),
    )


def fresh_name(what):
    return f"t-{uuid.uuid4().hex[:10]}-{what}"


def fails(call, **params):
    """The S3 error code and HTTP status of a call that must fail."""
    with pytest.raises(ClientError) as error:
        call(**params)
    response = error.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def quoted_md5(data):
    return '"' + hashlib.md5(data).hexdigest() + '"'


def multipart_etag(parts):
    """S3's ETag of a completed multipart upload: the MD5 of the parts' binary MD5s, "-N"."""
    digests = b"".join(hashlib.md5(part).digest() for part in parts)
    return f'"{hashlib.md5(digests).hexdigest()}-{len(parts)}"'


def remove(client, name):
    """Best effort: the test cloud is thrown away after the run anyway."""
    try:
        for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
            client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys})
        client.delete_bucket(Bucket=name)
    except ClientError:
        pass


@pytest.fixture
def new_bucket():
    """Makes fresh buckets with the storage role's pair; removes them afterwards."""
    client = s3()
    made = []

    def make(what="b"):
        name = fresh_name(what)
        client.create_bucket(Bucket=name)
        made.append(name)
        return name

    yield make
    for name in made:
        remove(client, name)


@pytest.fixture
def bucket(new_bucket):
    return new_bucket()


def test_buckets_are_created_listed_located_and_deleted():
    client = s3()
    name = fresh_name("buckets")
    created = client.create_bucket(Bucket=name)
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert client.head_bucket(Bucket=name)["ResponseMetadata"]["HTTPStatusCode"] == 200
    listed = client.list_buckets()["Buckets"]
    assert name in [b["Name"] for b in listed]
    assert all("CreationDate" in b for b in listed)
    location = client.get_bucket_location(Bucket=name)["LocationConstraint"]
    assert location in (None, "", "us-east-1")

    code, status = fails(client.create_bucket, Bucket=name)
    assert code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists") and status == 409

    client.put_object(Bucket=name, Key="keep.txt", Body=b"x")
    assert fails(client.delete_bucket, Bucket=name) == ("BucketNotEmpty", 409)
    assert client.get_object(Bucket=name, Key="keep.txt")["Body"].read() == b"x", "nothing was lost"

    client.delete_object(Bucket=name, Key="keep.txt")
    deleted = client.delete_bucket(Bucket=name)
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert fails(client.head_bucket, Bucket=name) == ("404", 404)
    assert name not in [b["Name"] for b in client.list_buckets()["Buckets"]]
    assert fails(client.list_objects_v2, Bucket=name) == ("NoSuchBucket", 404)
    assert fails(client.delete_bucket, Bucket=name) == ("NoSuchBucket", 404)


def test_an_invalid_bucket_name_is_refused():
    client = s3()
    # botocore only checks the characters; S3's rules are the server's to enforce.
    for name in ("Upper-Case-" + uuid.uuid4().hex[:8], "under_score" + uuid.uuid4().hex[:8], "ab"):
        assert fails(client.create_bucket, Bucket=name) == ("InvalidBucketName", 400), name
        assert name not in [b["Name"] for b in client.list_buckets()["Buckets"]]


def test_objects_are_put_headed_got_and_deleted(bucket):
    client = s3()
    key = "docs/hello.txt"
    body = b"hello, minicloud s3!\n" * 10
    etag = quoted_md5(body)
    put = client.put_object(
        Bucket=bucket,
        Key=key,
        Body=body,
        ContentType="text/plain; charset=utf-8",
        CacheControl="max-age=60",
        ContentDisposition='attachment; filename="hello.txt"',
        Metadata={"a": "1", "CamelKey": "Case"},
    )
    assert put["ETag"] == etag

    head = client.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == len(body)
    assert head["ETag"] == etag
    assert head["ContentType"] == "text/plain; charset=utf-8"
    assert head["CacheControl"] == "max-age=60"
    assert head["ContentDisposition"] == 'attachment; filename="hello.txt"'
    assert head["Metadata"] == {"a": "1", "camelkey": "Case"}, "keys lowercased, values kept"
    assert head["LastModified"].tzinfo is not None

    got = client.get_object(Bucket=bucket, Key=key)
    assert got["Body"].read() == body
    assert got["ETag"] == etag and got["ContentType"] == "text/plain; charset=utf-8"
    assert got["Metadata"] == {"a": "1", "camelkey": "Case"}

    # An overwrite replaces content and metadata.
    client.put_object(Bucket=bucket, Key=key, Body=b"v2")
    again = client.head_object(Bucket=bucket, Key=key)
    assert again["ContentLength"] == 2 and again["ETag"] == quoted_md5(b"v2")
    assert again["Metadata"] == {}
    # Empty objects exist too.
    client.put_object(Bucket=bucket, Key="empty", Body=b"")
    empty = client.get_object(Bucket=bucket, Key="empty")
    assert empty["ContentLength"] == 0 and empty["Body"].read() == b""
    assert empty["ETag"] == quoted_md5(b"")

    client.delete_object(Bucket=bucket, Key=key)
    assert fails(client.head_object, Bucket=bucket, Key=key) == ("404", 404)
    assert fails(client.get_object, Bucket=bucket, Key=key) == ("NoSuchKey", 404)
    # Deleting what is not there succeeds, as in S3.
    gone = client.delete_object(Bucket=bucket, Key=key)
    assert gone["ResponseMetadata"]["HTTPStatusCode"] == 204


def test_missing_keys_and_buckets_are_typed_errors(bucket):
    client = s3()
    assert fails(client.get_object, Bucket=bucket, Key="no/such/key") == ("NoSuchKey", 404)
    assert fails(client.head_object, Bucket=bucket, Key="no/such/key") == ("404", 404)
    missing = fresh_name("never-made")
    assert fails(client.get_object, Bucket=missing, Key="k") == ("NoSuchBucket", 404)
    assert fails(client.put_object, Bucket=missing, Key="k", Body=b"x") == ("NoSuchBucket", 404)
    assert fails(client.list_objects_v2, Bucket=missing) == ("NoSuchBucket", 404)
    assert fails(client.head_bucket, Bucket=missing) == ("404", 404)


def test_ranged_reads(bucket):
    client = s3()
    body = bytes(range(256)) * 4
    client.put_object(Bucket=bucket, Key="bytes.bin", Body=body)
    ranged = client.get_object(Bucket=bucket, Key="bytes.bin", Range="bytes=2-5")
    assert ranged["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert ranged["ContentRange"] == f"bytes 2-5/{len(body)}"
    assert ranged["ContentLength"] == 4
    assert ranged["Body"].read() == body[2:6]
    # The last bytes, and an open-ended range.
    suffix = client.get_object(Bucket=bucket, Key="bytes.bin", Range="bytes=-3")
    assert suffix["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert suffix["ContentRange"] == f"bytes {len(body) - 3}-{len(body) - 1}/{len(body)}"
    assert suffix["Body"].read() == body[-3:]
    tail = client.get_object(Bucket=bucket, Key="bytes.bin", Range="bytes=1000-")
    assert tail["ContentRange"] == f"bytes 1000-{len(body) - 1}/{len(body)}"
    assert tail["Body"].read() == body[1000:]
    # Past the end.
    assert fails(
        client.get_object, Bucket=bucket, Key="bytes.bin", Range=f"bytes={len(body)}-"
    ) == ("InvalidRange", 416)


def test_conditional_reads(bucket):
    client = s3()
    body = b"conditional"
    etag = client.put_object(Bucket=bucket, Key="c.txt", Body=body)["ETag"]
    modified = client.head_object(Bucket=bucket, Key="c.txt")["LastModified"]

    code, status = fails(client.get_object, Bucket=bucket, Key="c.txt", IfNoneMatch=etag)
    assert status == 304
    assert fails(client.head_object, Bucket=bucket, Key="c.txt", IfNoneMatch=etag)[1] == 304
    got = client.get_object(Bucket=bucket, Key="c.txt", IfNoneMatch='"0123456789abcdef"')
    assert got["Body"].read() == body

    assert fails(
        client.get_object, Bucket=bucket, Key="c.txt", IfMatch='"0123456789abcdef"'
    ) == ("PreconditionFailed", 412)
    assert client.get_object(Bucket=bucket, Key="c.txt", IfMatch=etag)["Body"].read() == body

    # Not modified since its own Last-Modified (second precision, as the header has it).
    assert fails(client.get_object, Bucket=bucket, Key="c.txt", IfModifiedSince=modified)[1] == 304
    earlier = client.get_object(
        Bucket=bucket, Key="c.txt", IfModifiedSince=modified - timedelta(hours=1)
    )
    assert earlier["Body"].read() == body
    assert fails(
        client.get_object, Bucket=bucket, Key="c.txt", IfUnmodifiedSince=modified - timedelta(days=1)
    ) == ("PreconditionFailed", 412)


def test_list_objects_v2_with_prefixes_delimiters_and_pages(bucket):
    client = s3()
    keys = ["a/1.txt", "a/2.txt", "a/b/3.txt", "a/b/c/5.txt", "c.txt", "d/4.txt", "e.txt"]
    for key in reversed(keys):
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())

    everything = client.list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in everything["Contents"]] == keys
    assert everything["KeyCount"] == 7 and everything["IsTruncated"] is False
    sizes = {o["Key"]: o["Size"] for o in everything["Contents"]}
    assert sizes == {k: len(k) for k in keys}
    assert everything["Contents"][0]["ETag"] == quoted_md5(b"a/1.txt")

    top = client.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [o["Key"] for o in top["Contents"]] == ["c.txt", "e.txt"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["a/", "d/"]
    assert top["KeyCount"] == 4

    under_a = client.list_objects_v2(Bucket=bucket, Prefix="a/", Delimiter="/")
    assert [o["Key"] for o in under_a["Contents"]] == ["a/1.txt", "a/2.txt"]
    assert [p["Prefix"] for p in under_a["CommonPrefixes"]] == ["a/b/"]
    assert under_a["Prefix"] == "a/"

    nothing = client.list_objects_v2(Bucket=bucket, Prefix="zzz/")
    assert nothing["KeyCount"] == 0 and "Contents" not in nothing

    # Pages of two by hand, each continuing where the last stopped.
    pages, token = [], None
    while True:
        args = {"Bucket": bucket, "MaxKeys": 2}
        if token:
            args["ContinuationToken"] = token
        page = client.list_objects_v2(**args)
        pages.append(page)
        if not page["IsTruncated"]:
            assert "NextContinuationToken" not in page
            break
        token = page["NextContinuationToken"]
        assert token
        assert len(pages) < 10, "the pages never end"
    assert [[o["Key"] for o in p["Contents"]] for p in pages] == [keys[0:2], keys[2:4], keys[4:6], keys[6:]]
    assert [p["KeyCount"] for p in pages] == [2, 2, 2, 1]
    assert [p["IsTruncated"] for p in pages] == [True, True, True, False]
    assert all(p["MaxKeys"] == 2 for p in pages)

    after = client.list_objects_v2(Bucket=bucket, StartAfter="a/2.txt")
    assert [o["Key"] for o in after["Contents"]] == keys[2:]

    paginated = list(
        client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, PaginationConfig={"PageSize": 2}
        )
    )
    assert len(paginated) == 4
    assert [o["Key"] for p in paginated for o in p["Contents"]] == keys

    # Common prefixes count towards a page, and a page ending on one skips all under it.
    by_one = list(
        client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 1}
        )
    )
    assert [o["Key"] for p in by_one for o in p.get("Contents", [])] == ["c.txt", "e.txt"]
    assert [c["Prefix"] for p in by_one for c in p.get("CommonPrefixes", [])] == ["a/", "d/"]
    assert len(by_one) == 4


def test_keys_with_spaces_symbols_and_unicode_round_trip(bucket):
    client = s3()
    keys = [
        "dir with space/file name.txt",
        "plus+sign.txt",
        "percent%20literal.txt",
        "question?and&amp=1#hash.txt",
        "uni/\u00fcn\u00efc\u00f6de-\u6587\u5b57.txt",
        "tilde~(paren)[bracket]'quote'.txt",
    ]
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    listed = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert listed == sorted(keys, key=lambda k: k.encode())
    for key in keys:
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == key.encode(), key
    spaced = client.list_objects_v2(Bucket=bucket, Prefix="dir with space/", Delimiter="/")
    assert [o["Key"] for o in spaced["Contents"]] == ["dir with space/file name.txt"]
    top = client.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["dir with space/", "uni/"]
    # The copy source header carries the key URL-encoded.
    client.copy_object(Bucket=bucket, Key="copied+ copy.txt", CopySource={"Bucket": bucket, "Key": keys[1]})
    assert client.get_object(Bucket=bucket, Key="copied+ copy.txt")["Body"].read() == keys[1].encode()
    client.delete_object(Bucket=bucket, Key=keys[0])
    assert fails(client.head_object, Bucket=bucket, Key=keys[0]) == ("404", 404)


def test_delete_objects_deletes_a_batch(bucket):
    client = s3()
    for key in ("x/1", "x/2", "keep"):
        client.put_object(Bucket=bucket, Key=key, Body=b"data")
    answer = client.delete_objects(
        Bucket=bucket,
        Delete={"Objects": [{"Key": "x/1"}, {"Key": "x/2"}, {"Key": "never-was"}]},
    )
    assert sorted(d["Key"] for d in answer["Deleted"]) == ["never-was", "x/1", "x/2"]
    assert answer.get("Errors", []) == []
    assert [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]] == ["keep"]
    # Quiet mode reports only the failures: none.
    client.put_object(Bucket=bucket, Key="x/3", Body=b"data")
    quiet = client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "x/3"}], "Quiet": True})
    assert quiet.get("Deleted", []) == [] and quiet.get("Errors", []) == []
    assert fails(client.head_object, Bucket=bucket, Key="x/3") == ("404", 404)


def test_copy_object_keeps_or_replaces_metadata(bucket, new_bucket):
    client = s3()
    other = new_bucket("copy-dst")
    body = b"# copied\n" * 100
    client.put_object(
        Bucket=bucket, Key="src.md", Body=body, ContentType="text/markdown",
        Metadata={"origin": "source", "n": "1"},
    )
    source = {"Bucket": bucket, "Key": "src.md"}

    for target_bucket, target_key in ((bucket, "copy.md"), (other, "nested/copy.md")):
        copied = client.copy_object(Bucket=target_bucket, Key=target_key, CopySource=source)
        assert copied["CopyObjectResult"]["ETag"] == quoted_md5(body)
        assert copied["CopyObjectResult"]["LastModified"]
        head = client.head_object(Bucket=target_bucket, Key=target_key)
        assert head["ContentType"] == "text/markdown", target_bucket
        assert head["Metadata"] == {"origin": "source", "n": "1"}, target_bucket
        assert client.get_object(Bucket=target_bucket, Key=target_key)["Body"].read() == body

    client.copy_object(
        Bucket=other, Key="replaced.json", CopySource=source, MetadataDirective="REPLACE",
        Metadata={"new": "yes"}, ContentType="application/json",
    )
    replaced = client.head_object(Bucket=other, Key="replaced.json")
    assert replaced["Metadata"] == {"new": "yes"}
    assert replaced["ContentType"] == "application/json"
    assert client.get_object(Bucket=other, Key="replaced.json")["Body"].read() == body

    # The source is untouched.
    original = client.head_object(Bucket=bucket, Key="src.md")
    assert original["Metadata"] == {"origin": "source", "n": "1"}
    # A copy onto itself with REPLACE is how S3 changes an object's metadata.
    client.copy_object(
        Bucket=bucket, Key="src.md", CopySource=source, MetadataDirective="REPLACE",
        Metadata={"edited": "true"}, ContentType="text/plain",
    )
    edited = client.head_object(Bucket=bucket, Key="src.md")
    assert edited["Metadata"] == {"edited": "true"} and edited["ContentType"] == "text/plain"
    assert client.get_object(Bucket=bucket, Key="src.md")["Body"].read() == body

    missing = {"Bucket": bucket, "Key": "no-such-source"}
    assert fails(client.copy_object, Bucket=bucket, Key="x", CopySource=missing) == ("NoSuchKey", 404)
    assert fails(client.head_object, Bucket=bucket, Key="x") == ("404", 404)


def test_multipart_upload_lists_parts_and_completes_with_the_composite_etag(bucket):
    client = s3()
    key = "multi/part.bin"
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(1024)]
    created = client.create_multipart_upload(
        Bucket=bucket, Key=key, ContentType="application/x-test", Metadata={"kind": "multipart"}
    )
    upload_id = created["UploadId"]
    assert upload_id and created["Key"] == key and created["Bucket"] == bucket

    etags = []
    for number, data in enumerate(parts, start=1):
        answer = client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
        assert answer["ETag"] == quoted_md5(data), number
        etags.append(answer["ETag"])

    listed = client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in listed["Parts"]] == [
        (1, 5 * MiB, etags[0]), (2, 5 * MiB, etags[1]), (3, 1024, etags[2])
    ]
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert (key, upload_id) in [(u["Key"], u["UploadId"]) for u in uploads]
    # Unfinished, the object is not there yet.
    assert fails(client.head_object, Bucket=bucket, Key=key) == ("404", 404)

    done = client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]},
    )
    expected = multipart_etag(parts)
    assert done["ETag"] == expected and done["Key"] == key

    head = client.head_object(Bucket=bucket, Key=key)
    assert head["ETag"] == expected
    assert head["ContentLength"] == sum(len(p) for p in parts)
    assert head["ContentType"] == "application/x-test"
    assert head["Metadata"] == {"kind": "multipart"}
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"".join(parts)
    # Completed, the upload is gone.
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert upload_id not in [u["UploadId"] for u in uploads]
    assert fails(client.list_parts, Bucket=bucket, Key=key, UploadId=upload_id) == ("NoSuchUpload", 404)


def test_an_aborted_upload_is_gone(bucket):
    client = s3()
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="aborted.bin")["UploadId"]
    client.upload_part(Bucket=bucket, Key="aborted.bin", UploadId=upload_id, PartNumber=1, Body=b"p" * 1024)
    aborted = client.abort_multipart_upload(Bucket=bucket, Key="aborted.bin", UploadId=upload_id)
    assert aborted["ResponseMetadata"]["HTTPStatusCode"] == 204
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert upload_id not in [u["UploadId"] for u in uploads]
    assert fails(client.list_parts, Bucket=bucket, Key="aborted.bin", UploadId=upload_id) == (
        "NoSuchUpload", 404,
    )
    assert fails(
        client.upload_part, Bucket=bucket, Key="aborted.bin", UploadId=upload_id, PartNumber=2, Body=b"x"
    ) == ("NoSuchUpload", 404)
    assert fails(client.head_object, Bucket=bucket, Key="aborted.bin") == ("404", 404)


def test_completing_with_a_wrong_part_is_an_invalid_part(bucket):
    client = s3()
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="wrong.bin")["UploadId"]
    data = os.urandom(1024)
    etag = client.upload_part(
        Bucket=bucket, Key="wrong.bin", UploadId=upload_id, PartNumber=1, Body=data
    )["ETag"]
    for parts in (
        [{"PartNumber": 1, "ETag": '"' + "0" * 32 + '"'}],
        [{"PartNumber": 2, "ETag": etag}],
    ):
        assert fails(
            client.complete_multipart_upload, Bucket=bucket, Key="wrong.bin", UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        ) == ("InvalidPart", 400), parts
    assert fails(client.head_object, Bucket=bucket, Key="wrong.bin") == ("404", 404)
    # The upload is still there and completes with the right part.
    done = client.complete_multipart_upload(
        Bucket=bucket, Key="wrong.bin", UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
    )
    assert done["ETag"] == multipart_etag([data])
    assert client.get_object(Bucket=bucket, Key="wrong.bin")["Body"].read() == data


def test_upload_part_copy_takes_a_range_of_an_existing_object(bucket):
    client = s3()
    source = os.urandom(6 * MiB)
    client.put_object(Bucket=bucket, Key="source.bin", Body=source)
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="assembled.bin")["UploadId"]
    copied = client.upload_part_copy(
        Bucket=bucket, Key="assembled.bin", UploadId=upload_id, PartNumber=1,
        CopySource={"Bucket": bucket, "Key": "source.bin"}, CopySourceRange="bytes=0-5242879",
    )
    first = source[: 5 * MiB]
    assert copied["CopyPartResult"]["ETag"] == quoted_md5(first)
    tail = b"and a small last part"
    second = client.upload_part(
        Bucket=bucket, Key="assembled.bin", UploadId=upload_id, PartNumber=2, Body=tail
    )["ETag"]
    parts = client.list_parts(Bucket=bucket, Key="assembled.bin", UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, 5 * MiB), (2, len(tail))]
    done = client.complete_multipart_upload(
        Bucket=bucket, Key="assembled.bin", UploadId=upload_id,
        MultipartUpload={"Parts": [
            {"PartNumber": 1, "ETag": copied["CopyPartResult"]["ETag"]},
            {"PartNumber": 2, "ETag": second},
        ]},
    )
    assert done["ETag"] == multipart_etag([first, tail])
    assert client.get_object(Bucket=bucket, Key="assembled.bin")["Body"].read() == first + tail


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def test_a_100_mib_transfer_round_trips(bucket, tmp_path):
    client = s3()
    original = tmp_path / "big.bin"
    part_md5s = b""
    with open(original, "wb") as f:
        for size in [8 * MiB] * 12 + [4 * MiB]:
            chunk = os.urandom(size)
            part_md5s += hashlib.md5(chunk).digest()
            f.write(chunk)
    assert original.stat().st_size == 100 * MiB
    transfer = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB)
    client.upload_file(str(original), bucket, "big/file.bin", Config=transfer)

    head = client.head_object(Bucket=bucket, Key="big/file.bin")
    assert head["ContentLength"] == 100 * MiB
    assert head["ETag"].strip('"').endswith("-13")
    assert head["ETag"] == f'"{hashlib.md5(part_md5s).hexdigest()}-13"'

    # Downloaded in ranged parts as well.
    back = tmp_path / "back.bin"
    client.download_file(bucket, "big/file.bin", str(back), Config=transfer)
    assert sha256_of(back) == sha256_of(original)


def http(url, method="GET", data=None):
    """A plain HTTP call: (status, body), errors included."""
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_presigned_urls_work_over_plain_http(bucket):
    client = s3()
    body = b"shared by a presigned URL"
    client.put_object(Bucket=bucket, Key="shared/file.txt", Body=body)
    client.put_object(Bucket=bucket, Key="shared/other.txt", Body=b"not for you")
    params = {"Bucket": bucket, "Key": "shared/file.txt"}

    url = client.generate_presigned_url("get_object", Params=params, ExpiresIn=60)
    assert "X-Amz-Signature=" in url and "Authorization" not in url
    assert http(url) == (200, body)

    put_url = client.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "shared/uploaded.bin"}, ExpiresIn=60
    )
    status, _ = http(put_url, method="PUT", data=b"uploaded with a presigned PUT")
    assert status == 200
    uploaded = client.get_object(Bucket=bucket, Key="shared/uploaded.bin")["Body"].read()
    assert uploaded == b"uploaded with a presigned PUT"

    # One character of the signature changed.
    def flip(match):
        return match.group(1) + ("1" if match.group(2) == "0" else "0")

    tampered = re.sub(r"(X-Amz-Signature=[0-9a-f]*)([0-9a-f])", flip, url)
    assert tampered != url
    status, text = http(tampered)
    assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in text, text
    # The signature covers the path: it opens no other key.
    status, text = http(url.replace("shared/file.txt", "shared/other.txt"))
    assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in text, text

    # A URL signed by a key whose role may not read is denied.
    theirs = s3(os.environ["OTHER_KEY_ID"], os.environ["OTHER_SECRET"])
    status, text = http(theirs.generate_presigned_url("get_object", Params=params, ExpiresIn=60))
    assert status == 403 and b"<Code>AccessDenied</Code>" in text, text

    expiring = client.generate_presigned_url("get_object", Params=params, ExpiresIn=1)
    time.sleep(2.5)
    status, text = http(expiring)
    assert status == 403, text
    assert b"<Code>AccessDenied</Code>" in text or b"<Code>ExpiredToken</Code>" in text, text


def test_a_wrong_secret_does_not_match_the_signature(bucket):
    client = s3(os.environ["S3_KEY_ID"], "not-the-secret-at-all-0000000000000000000")
    assert fails(client.list_buckets) == ("SignatureDoesNotMatch", 403)
    assert fails(client.list_objects_v2, Bucket=bucket) == ("SignatureDoesNotMatch", 403)
    assert fails(client.put_object, Bucket=bucket, Key="k", Body=b"x") == ("SignatureDoesNotMatch", 403)
    assert fails(s3().head_object, Bucket=bucket, Key="k") == ("404", 404), "nothing was written"


def test_unknown_and_revoked_keys_are_invalid_access_key_ids(bucket):
    for key_id in ("AKIAAAAAAAAAAAAAAAAA", os.environ["REVOKED_KEY_ID"]):
        client = s3(key_id, "whatever-secret-00000000000000000000000")
        assert fails(client.list_buckets) == ("InvalidAccessKeyId", 403), key_id
        assert fails(client.get_object, Bucket=bucket, Key="k") == ("InvalidAccessKeyId", 403), key_id


def test_a_role_without_storage_permissions_is_denied(bucket):
    s3().put_object(Bucket=bucket, Key="private.txt", Body=b"private")
    client = s3(os.environ["OTHER_KEY_ID"], os.environ["OTHER_SECRET"])
    assert fails(client.list_objects_v2, Bucket=bucket) == ("AccessDenied", 403)
    assert fails(client.get_object, Bucket=bucket, Key="private.txt") == ("AccessDenied", 403)
    assert fails(client.put_object, Bucket=bucket, Key="mine.txt", Body=b"x") == ("AccessDenied", 403)
    assert fails(client.delete_object, Bucket=bucket, Key="private.txt") == ("AccessDenied", 403)
    assert fails(client.delete_bucket, Bucket=bucket) == ("AccessDenied", 403)
    name = fresh_name("not-allowed")
    assert fails(client.create_bucket, Bucket=name) == ("AccessDenied", 403)

    owner = s3()
    assert [o["Key"] for o in owner.list_objects_v2(Bucket=bucket)["Contents"]] == ["private.txt"]
    assert owner.get_object(Bucket=bucket, Key="private.txt")["Body"].read() == b"private"
    assert fails(owner.head_bucket, Bucket=name) == ("404", 404)


def test_a_body_changed_after_signing_is_refused(bucket):
    client = s3()

    # Over plain HTTP botocore signs the payload's SHA-256; change the body after that.
    def tamper(request, **_):
        request.body = b"evil bytes"
        request.headers["Content-Length"] = str(len(request.body))

    client.meta.events.register_first("before-send.s3.PutObject", tamper)
    code, status = fails(client.put_object, Bucket=bucket, Key="tampered.txt", Body=b"good bytes")
    assert (code, status) in (
        ("XAmzContentSHA256Mismatch", 400), ("BadDigest", 400), ("SignatureDoesNotMatch", 403)
    )
    assert fails(s3().head_object, Bucket=bucket, Key="tampered.txt") == ("404", 404)


def test_the_aws_cli_copies_syncs_lists_and_removes(tmp_path):
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID=os.environ["S3_KEY_ID"],
        AWS_SECRET_ACCESS_KEY=os.environ["S3_SECRET"],
        AWS_DEFAULT_REGION="us-east-1",
    )

    def aws(*args, rc=0):
        done = subprocess.run(
            [sys.executable, "-m", "awscli", "--endpoint-url", URL, *args],
            env=env, capture_output=True, text=True, cwd=tmp_path,
        )
        assert done.returncode == rc, (args, done.stdout, done.stderr)
        return done.stdout

    name = fresh_name("cli")
    assert f"make_bucket: {name}" in aws("s3", "mb", f"s3://{name}")
    assert name in aws("s3", "ls").split()

    (tmp_path / "x.txt").write_text("uploaded by the aws cli\n")
    aws("s3", "cp", "x.txt", f"s3://{name}/dir/x.txt")
    listed = aws("s3", "ls", f"s3://{name}/dir/").splitlines()
    assert len(listed) == 1 and listed[0].split()[-2:] == [str(len("uploaded by the aws cli\n")), "x.txt"]
    top = aws("s3", "ls", f"s3://{name}/")
    assert "PRE dir/" in top

    head = json.loads(aws("s3api", "head-object", "--bucket", name, "--key", "dir/x.txt"))
    assert head["ContentLength"] == len("uploaded by the aws cli\n")
    assert head["ContentType"] == "text/plain", "the CLI guesses it from the extension"

    local = tmp_path / "tree"
    (local / "sub" / "deeper").mkdir(parents=True)
    (local / "one.txt").write_text("1")
    (local / "sub" / "two.txt").write_text("22")
    (local / "sub" / "deeper" / "three.txt").write_text("333")
    # Older than any upload, to the second (S3's LastModified has no fractions).
    an_hour_ago = time.time() - 3600
    for path in local.rglob("*.txt"):
        os.utime(path, (an_hour_ago, an_hour_ago))
    synced = aws("s3", "sync", "tree", f"s3://{name}/synced/")
    assert synced.count("upload:") == 3, synced
    recursive = aws("s3", "ls", "--recursive", f"s3://{name}/synced/").splitlines()
    assert sorted(line.split()[-1] for line in recursive) == [
        "synced/one.txt", "synced/sub/deeper/three.txt", "synced/sub/two.txt"
    ]
    # Nothing changed: a second sync has nothing to upload (sizes and times agree).
    assert "upload:" not in aws("s3", "sync", "tree", f"s3://{name}/synced/")
    # And back down.
    aws("s3", "sync", f"s3://{name}/synced/", "mirror")
    assert (tmp_path / "mirror" / "sub" / "deeper" / "three.txt").read_text() == "333"

    aws("s3", "cp", f"s3://{name}/dir/x.txt", "down.txt")
    assert (tmp_path / "down.txt").read_text() == "uploaded by the aws cli\n"

    removed = aws("s3", "rm", "--recursive", f"s3://{name}/synced/")
    assert removed.count("delete:") == 3, removed
    # An empty listing prints nothing and exits 1 in the CLI.
    assert aws("s3", "ls", f"s3://{name}/synced/", rc=1) == ""
    left = json.loads(aws("s3api", "list-objects-v2", "--no-paginate", "--bucket", name, "--prefix", "synced/"))
    assert left["KeyCount"] == 0

    put = json.loads(aws("s3api", "put-object", "--bucket", name, "--key", "api.txt", "--body", "x.txt"))
    assert put["ETag"] == quoted_md5((tmp_path / "x.txt").read_bytes())
    aws("s3api", "get-object", "--bucket", name, "--key", "api.txt", "api-back.txt")
    assert (tmp_path / "api-back.txt").read_bytes() == (tmp_path / "x.txt").read_bytes()

    assert f"remove_bucket: {name}" in aws("s3", "rb", "--force", f"s3://{name}")
    assert name not in aws("s3", "ls").split()
