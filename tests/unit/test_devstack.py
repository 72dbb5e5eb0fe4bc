"""The local stack's S3 credentials: random per stack, kept in its folder, its owner's only."""

from __future__ import annotations

from latentq_dev.devstack import S3_CREDENTIALS_FILE, S3Server, s3_credentials


def test_each_stack_gets_its_own_random_s3_credentials(tmp_path):
    first, second = s3_credentials(tmp_path / "a"), s3_credentials(tmp_path / "b")
    assert first != second and first[0] != second[0]
    assert "latentq-dev-secret" not in first and len(first[1]) >= 40


def test_a_stacks_s3_credentials_are_kept_owner_only_for_its_restarts(tmp_path):
    made = s3_credentials(tmp_path / "s3")
    assert (tmp_path / "s3" / S3_CREDENTIALS_FILE).stat().st_mode & 0o777 == 0o600
    server = S3Server(tmp_path / "s3")  # a restarted stack: same folder, same credentials
    assert (server.access_key, server.secret_key) == made
    settings = server.env("latentq")
    assert (settings["LATENTQ_S3_ACCESS_KEY_ID"], settings["LATENTQ_S3_SECRET_ACCESS_KEY"]) == made
