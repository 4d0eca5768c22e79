"""boto3's Lambda client against a minicloud test cloud, signing with an AWS-style key
pair auth issued (issue 19).

Run by tests/it/aws_clients.rs: MINICLOUD_URL is the gateway; AWS_KEY_ID/AWS_SECRET a
key pair of a role allowed to invoke `aws-echo`, OTHER_KEY_ID/OTHER_SECRET one of a role
that is not, REVOKED_KEY_ID a revoked one; DEPLOY_KEY_ID/DEPLOY_SECRET a deployer's pair,
CODE_BUCKET a bucket it may put zips in, SECRET_CODE (bucket/key) a zip it may not read.
"""

import json
import os

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

URL = os.environ["MINICLOUD_URL"]


def lam(key_id, secret):
    return boto3.client(
        "lambda",
        endpoint_url=URL,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}),
    )


def test_invoke_with_a_key_pair():
    client = lam(os.environ["AWS_KEY_ID"], os.environ["AWS_SECRET"])
    answer = client.invoke(FunctionName="aws-echo", Payload=json.dumps({"n": 41}).encode())
    assert answer["StatusCode"] == 200
    assert json.loads(answer["Payload"].read()) == {"got": {"n": 41}}
    # A function name given as an ARN, and a queued invocation.
    arn = "arn:aws:lambda:us-east-1:000000000000:function:aws-echo"
    queued = client.invoke(FunctionName=arn, InvocationType="Event", Payload=b"{}")
    assert queued["StatusCode"] == 202


def test_a_wrong_secret_is_an_invalid_signature():
    client = lam(os.environ["AWS_KEY_ID"], "not-the-secret-at-all-0000000000000000000")
    with pytest.raises(ClientError) as error:
        client.invoke(FunctionName="aws-echo", Payload=b"{}")
    assert error.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_unknown_and_revoked_keys_are_unrecognized():
    for key_id in ("AKIAAAAAAAAAAAAAAAAA", os.environ["REVOKED_KEY_ID"]):
        client = lam(key_id, "whatever-secret-00000000000000000000000")
        with pytest.raises(ClientError) as error:
            client.invoke(FunctionName="aws-echo", Payload=b"{}")
        assert error.value.response["Error"]["Code"] == "UnrecognizedClientException", key_id


def test_a_key_of_a_role_without_the_permission_is_denied():
    client = lam(os.environ["OTHER_KEY_ID"], os.environ["OTHER_SECRET"])
    with pytest.raises(ClientError) as error:
        client.invoke(FunctionName="aws-echo", Payload=b"{}")
    assert error.value.response["Error"]["Code"] == "AccessDeniedException"


def test_a_tampered_request_fails_the_signature():
    client = lam(os.environ["AWS_KEY_ID"], os.environ["AWS_SECRET"])

    # After signing, change the payload: the signature no longer covers it.
    def tamper(request, **_):
        request.body = json.dumps({"n": 666}).encode()
        request.headers["Content-Length"] = str(len(request.body))

    client.meta.events.register_first("before-send.lambda.Invoke", tamper)
    with pytest.raises(ClientError) as error:
        client.invoke(FunctionName="aws-echo", Payload=json.dumps({"n": 1}).encode())
    assert error.value.response["Error"]["Code"] == "InvalidSignatureException"


def zipped(files):
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return out.getvalue()


def test_the_control_plane_creates_lists_gets_and_deletes_functions():
    client = lam(os.environ["DEPLOY_KEY_ID"], os.environ["DEPLOY_SECRET"])
    code = zipped({"app.py": "def handler(event, context):\n    return {'made': 'by boto3', 'got': event}\n"})
    created = client.create_function(
        FunctionName="boto-made",
        Runtime="python3.12",
        Role="arn:aws:iam::000000000000:role/invokers",
        Handler="app.handler",
        Code={"ZipFile": code},
        Timeout=5,
        MemorySize=256,
        Environment={"Variables": {"STAGE": "test"}},
    )
    assert created["FunctionName"] == "boto-made"
    assert created["Runtime"] == "python3.12"
    assert created["MemorySize"] == 256 and created["Timeout"] == 5
    assert created["FunctionArn"].endswith(":function:boto-made")
    assert created["Role"].endswith(":role/invokers")
    answer = client.invoke(FunctionName="boto-made", Payload=b'{"x": 1}')
    assert json.loads(answer["Payload"].read()) == {"made": "by boto3", "got": {"x": 1}}

    got = client.get_function(FunctionName="boto-made")
    assert got["Configuration"]["Environment"]["Variables"] == {"STAGE": "test"}
    assert got["Configuration"]["CodeSha256"]
    config = client.get_function_configuration(FunctionName="boto-made")
    assert config["Handler"] == "app.handler"
    names = [
        f["FunctionName"]
        for page in client.get_paginator("list_functions").paginate(PaginationConfig={"PageSize": 1})
        for f in page["Functions"]
    ]
    assert "boto-made" in names and "aws-echo" in names and names == sorted(names)

    with pytest.raises(ClientError) as error:
        client.create_function(
            FunctionName="boto-made", Runtime="python3.12", Handler="app.handler",
            Role="arn:aws:iam::000000000000:role/invokers", Code={"ZipFile": code},
        )
    assert error.value.response["Error"]["Code"] == "ResourceConflictException"
    with pytest.raises(ClientError) as error:
        client.create_function(
            FunctionName="boto-java", Runtime="java21", Role="r", Handler="a::b",
            Code={"ZipFile": code},
        )
    assert error.value.response["Error"]["Code"] == "InvalidParameterValueException"

    updated = client.update_function_configuration(
        FunctionName="boto-made", Timeout=7, Environment={"Variables": {"STAGE": "prod"}}
    )
    assert updated["Timeout"] == 7 and updated["MemorySize"] == 256, "the rest is kept"
    client.update_function_code(
        FunctionName="boto-made",
        ZipFile=zipped({"app.py": "def handler(event, context):\n    return 'v2'\n"}),
    )
    answer = client.invoke(FunctionName="boto-made", Payload=b"{}")
    assert json.loads(answer["Payload"].read()) == "v2", "the new code runs"
    config = client.get_function_configuration(FunctionName="boto-made")
    assert config["Environment"]["Variables"] == {"STAGE": "prod"} and config["Timeout"] == 7
    reserved = client.put_function_concurrency(FunctionName="boto-made", ReservedConcurrentExecutions=3)
    assert reserved["ReservedConcurrentExecutions"] == 3
    client.delete_function_concurrency(FunctionName="boto-made")

    client.delete_function(FunctionName="boto-made")
    for call in (client.get_function, client.get_function_configuration, client.delete_function):
        with pytest.raises(ClientError) as error:
            call(FunctionName="boto-made")
        assert error.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_code_comes_from_s3_read_with_the_callers_rights():
    key_id, secret = os.environ["DEPLOY_KEY_ID"], os.environ["DEPLOY_SECRET"]
    client = lam(key_id, secret)
    s3 = boto3.client(
        "s3", endpoint_url=URL, region_name="us-east-1", aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )
    bucket = os.environ["CODE_BUCKET"]
    s3.put_object(Bucket=bucket, Key="v1.zip", Body=zipped({"app.py": "def handler(e, c):\n    return 'from s3 v1'\n"}))
    s3.put_object(Bucket=bucket, Key="v2.zip", Body=zipped({"app.py": "def handler(e, c):\n    return 'from s3 v2'\n"}))
    client.create_function(
        FunctionName="s3-code", Runtime="python3.12", Handler="app.handler",
        Role="arn:aws:iam::000000000000:role/invokers", Code={"S3Bucket": bucket, "S3Key": "v1.zip"},
    )
    answer = client.invoke(FunctionName="s3-code", Payload=b"{}")
    assert json.loads(answer["Payload"].read()) == "from s3 v1"
    client.update_function_code(FunctionName="s3-code", S3Bucket=bucket, S3Key="v2.zip")
    answer = client.invoke(FunctionName="s3-code", Payload=b"{}")
    assert json.loads(answer["Payload"].read()) == "from s3 v2", "the new code runs"

    # The object is read as the caller: a bucket they may not read stays closed.
    secret_bucket, secret_key = os.environ["SECRET_CODE"].split("/", 1)
    with pytest.raises(ClientError) as error:
        client.create_function(
            FunctionName="s3-stolen", Runtime="python3.12", Handler="app.handler",
            Role="arn:aws:iam::000000000000:role/invokers",
            Code={"S3Bucket": secret_bucket, "S3Key": secret_key},
        )
    assert error.value.response["Error"]["Code"] == "AccessDeniedException"
    # A missing object, and both kinds of code at once, are bad parameters.
    for code in ({"S3Bucket": bucket, "S3Key": "nope.zip"},
                 {"S3Bucket": bucket, "S3Key": "v1.zip", "ZipFile": b"PK"}):
        with pytest.raises(ClientError) as error:
            client.create_function(
                FunctionName="s3-bad", Runtime="python3.12", Handler="app.handler",
                Role="arn:aws:iam::000000000000:role/invokers", Code=code,
            )
        assert error.value.response["Error"]["Code"] == "InvalidParameterValueException", code
    names = [f["FunctionName"] for f in client.list_functions()["Functions"]]
    assert "s3-stolen" not in names and "s3-bad" not in names
    client.delete_function(FunctionName="s3-code")


def test_a_key_that_may_only_invoke_cannot_create_or_delete():
    client = lam(os.environ["AWS_KEY_ID"], os.environ["AWS_SECRET"])
    with pytest.raises(ClientError) as error:
        client.create_function(
            FunctionName="not-mine", Runtime="python3.12", Role="r", Handler="app.handler",
            Code={"ZipFile": zipped({"app.py": "def handler(e, c):\n    return 1\n"})},
        )
    assert error.value.response["Error"]["Code"] == "AccessDeniedException"
    with pytest.raises(ClientError) as error:
        client.delete_function(FunctionName="aws-echo")
    assert error.value.response["Error"]["Code"] == "AccessDeniedException"


def test_the_aws_cli_deploys_and_invokes(tmp_path):
    import subprocess
    import sys

    (tmp_path / "fn.zip").write_bytes(
        zipped({"app.py": "def handler(event, context):\n    return {'cli': event['n'] * 2}\n"})
    )
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID=os.environ["DEPLOY_KEY_ID"],
        AWS_SECRET_ACCESS_KEY=os.environ["DEPLOY_SECRET"],
        AWS_DEFAULT_REGION="us-east-1",
    )

    def aws(*args):
        done = subprocess.run(
            [sys.executable, "-m", "awscli", "--endpoint-url", URL, *args],
            env=env, capture_output=True, text=True, cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    created = json.loads(aws(
        "lambda", "create-function", "--function-name", "cli-made",
        "--runtime", "python3.12", "--handler", "app.handler",
        "--role", "arn:aws:iam::000000000000:role/invokers",
        "--zip-file", "fileb://fn.zip",
    ))
    assert created["FunctionName"] == "cli-made"
    # CLI v1 sends --payload as given (v2 would want --cli-binary-format).
    aws("lambda", "invoke", "--function-name", "cli-made", "--payload", '{"n": 21}', "out.json")
    assert json.loads((tmp_path / "out.json").read_text()) == {"cli": 42}
    listed = json.loads(aws("lambda", "list-functions"))
    assert "cli-made" in [f["FunctionName"] for f in listed["Functions"]]
    aws("lambda", "delete-function", "--function-name", "cli-made")
