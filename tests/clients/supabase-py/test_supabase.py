"""The official supabase-py client against a minicloud test cloud, as an app uses it.

Run by tests/it/supabase_clients.rs: MINICLOUD_URL is the cloud's gateway,
MINICLOUD_ANON_KEY and MINICLOUD_SERVICE_KEY its keys; the function `sjs-echo` is
deployed.
"""

import os

import pytest
from supabase import create_client

URL = os.environ["MINICLOUD_URL"]
BUCKET = f"spy-{os.getpid()}"


def client(key: str):
    return create_client(URL, os.environ[key])


@pytest.fixture(scope="module")
def service():
    return client("MINICLOUD_SERVICE_KEY")


def sample(n: int) -> bytes:
    return bytes((i * 31 + (i >> 8)) & 0xFF for i in range(n))


def test_auth_sign_up_sign_in_and_update():
    anon = client("MINICLOUD_ANON_KEY")
    email = f"spy-{os.getpid()}@example.com"
    signed_up = anon.auth.sign_up({"email": email, "password": "correct horse battery"})
    assert signed_up.user.email == email
    assert signed_up.user.aud == "authenticated"
    assert signed_up.user.app_metadata["provider"] == "email"
    assert signed_up.session.access_token
    signed_in = anon.auth.sign_in_with_password(
        {"email": email, "password": "correct horse battery"}
    )
    assert signed_in.user.id == signed_up.user.id
    assert anon.auth.get_user().user.email == email
    updated = anon.auth.update_user({"data": {"nickname": "py"}})
    assert updated.user.user_metadata["nickname"] == "py"


def last_mail(to: str) -> dict:
    import httpx

    response = httpx.get(
        f"{URL}/auth/v1/admin/mail",
        params={"to": to, "limit": 1},
        headers={"authorization": f"Bearer {os.environ['MINICLOUD_SERVICE_KEY']}"},
    )
    assert response.status_code == 200
    mails = response.json()["mails"]
    assert mails, f"no mail to {to}"
    return mails[0]


def test_auth_get_claims_and_anonymous_sign_in():
    anon = client("MINICLOUD_ANON_KEY")
    session = anon.auth.sign_in_anonymously({"options": {"data": {"from": "py"}}})
    assert session.user.is_anonymous
    claims = anon.auth.get_claims()
    assert claims["claims"]["sub"] == session.user.id
    assert claims["claims"]["is_anonymous"] is True
    assert claims["claims"]["aal"] == "aal1"
    assert claims["headers"]["alg"] == "ES256"


def test_auth_recovery_and_otp():
    import re

    from supabase_auth.errors import AuthApiError

    anon = client("MINICLOUD_ANON_KEY")
    email = f"spy-recover-{os.getpid()}@example.com"
    anon.auth.sign_up({"email": email, "password": "correct horse battery"})
    anon.auth.reset_password_for_email(email)
    code = re.search(r"code: (\d{6})", last_mail(email)["body"]).group(1)
    with pytest.raises(AuthApiError) as error:
        anon.auth.verify_otp(
            {"email": email, "token": "111111" if code == "000000" else "000000", "type": "recovery"}
        )
    assert error.value.code == "otp_expired"
    verified = anon.auth.verify_otp({"email": email, "token": code, "type": "recovery"})
    assert verified.user.email == email
    anon.auth.update_user({"password": "another horse battery"})
    again = client("MINICLOUD_ANON_KEY").auth.sign_in_with_password(
        {"email": email, "password": "another horse battery"}
    )
    assert again.user.id == verified.user.id


def test_auth_admin_users(service):
    email = f"spy-admin-{os.getpid()}@example.com"
    created = service.auth.admin.create_user(
        {"email": email, "password": "correct horse battery", "email_confirm": True}
    )
    assert created.user.email == email
    listed = service.auth.admin.list_users(page=1, per_page=1000)
    assert any(user.id == created.user.id for user in listed)
    service.auth.admin.delete_user(created.user.id)
    listed = service.auth.admin.list_users(page=1, per_page=1000)
    assert not any(user.id == created.user.id for user in listed)


def test_auth_errors_carry_codes():
    from supabase_auth.errors import AuthApiError

    with pytest.raises(AuthApiError) as error:
        client("MINICLOUD_ANON_KEY").auth.sign_in_with_password(
            {"email": "nobody@example.com", "password": "wrong password!"}
        )
    assert error.value.status == 400
    assert error.value.code == "invalid_credentials"
    assert error.value.message == "invalid login credentials"


def test_storage_round_trip(service):
    service.storage.create_bucket(BUCKET, options={"public": False})
    assert service.storage.get_bucket(BUCKET).name == BUCKET
    assert any(b.name == BUCKET for b in service.storage.list_buckets())
    files = service.storage.from_(BUCKET)
    sent = sample(50_000)
    # supabase-py always uploads as multipart/form-data.
    files.upload("pics/a.png", sent, {"content-type": "image/png"})
    assert files.download("pics/a.png") == sent
    listed = files.list("pics")
    assert [entry["name"] for entry in listed] == ["a.png"]
    assert listed[0]["metadata"]["mimetype"] == "image/png"
    signed = files.create_signed_url("pics/a.png", 60)
    assert "token=" in signed["signedURL"]
    files.remove(["pics/a.png"])
    assert files.list("pics") == []
    service.storage.delete_bucket(BUCKET)


def test_functions_invoke(service):
    answer = service.functions.invoke("sjs-echo", {"body": {"from": "python"}})
    import json

    assert json.loads(answer) == {"got": {"from": "python"}, "method": "POST", "authorized": True}


def test_database_todo_app_isolates_two_users():
    from postgrest.exceptions import APIError

    users = []
    for name in ("alice", "bob"):
        c = client("MINICLOUD_ANON_KEY")
        c.auth.sign_up(
            {"email": f"spy-{name}-db-{os.getpid()}@example.com", "password": "correct horse battery"}
        )
        users.append(c)
    alice, bob = users
    inserted = alice.table("todos").insert(
        [{"id": "py-1", "task": "write tests", "done": False, "priority": 1},
         {"id": "py-2", "task": "ship it", "done": False, "priority": 2}]
    ).execute()
    assert [row["id"] for row in inserted.data] == ["py-1", "py-2"]
    bob.table("todos").insert({"id": "py-bob", "task": "bob's", "done": True}).execute()

    mine = alice.table("todos").select("*", count="exact").like("id", "py-*").order("priority", desc=True).execute()
    assert [row["id"] for row in mine.data] == ["py-2", "py-1"]
    assert mine.count == 2
    assert bob.table("todos").select("id").eq("id", "py-1").execute().data == []

    one = alice.table("todos").select("task").eq("id", "py-1").single().execute()
    assert one.data == {"task": "write tests"}
    with pytest.raises(APIError) as error:
        alice.table("todos").select("*").eq("id", "py-bob").single().execute()
    assert error.value.code == "PGRST116"

    updated = alice.table("todos").update({"done": True}).eq("id", "py-1").execute()
    assert updated.data[0]["done"] is True
    assert bob.table("todos").update({"task": "x"}).eq("id", "py-2").execute().data == []
    upserted = alice.table("todos").upsert({"id": "py-2", "priority": 9}).execute()
    assert upserted.data[0]["priority"] == 9 and upserted.data[0]["task"] == "ship it"
    deleted = alice.table("todos").delete().eq("done", True).like("id", "py-*").execute()
    assert [row["id"] for row in deleted.data] == ["py-1"]
    assert [r["id"] for r in bob.table("todos").select("id").like("id", "py-*").execute().data] == ["py-bob"]

    with pytest.raises(APIError) as error:
        alice.table("todos").insert({"id": "py-2", "task": "again"}).execute()
    assert error.value.code == "23505"
    with pytest.raises(APIError) as error:
        alice.table("missing_table").select("*").execute()
    assert error.value.code == "PGRST205"
