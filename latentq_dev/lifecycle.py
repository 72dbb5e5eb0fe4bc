"""The S3 lifecycle rule that deletes job objects once no job can still name them.

Job records expire after their retention (at most ``LATENTQ_MAX_JOB_RETENTION_S``); from then on
the API signs no URL for their images, and this bucket rule deletes the objects (outputs and
``inputs/``) that many days after they were written, rounded up to whole days (S3's unit).

    python -m latentq_dev.lifecycle          # apply it to LATENTQ_S3_BUCKET (other rules are kept)
    python -m latentq_dev.lifecycle --print  # show it without applying
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from botocore.exceptions import ClientError

from latentq.settings import CommonSettings
from latentq.storage import ImageStore

#: Id of latentq's rule in the bucket's lifecycle configuration.
RULE_ID = "latentq-job-retention"


def retention_rule(settings: CommonSettings) -> dict[str, Any]:
    """Return the rule: expire each object ``max_job_retention_s`` (whole days, rounded up) after creation."""
    days = max(1, math.ceil(settings.max_job_retention_s / 86400))
    return {"ID": RULE_ID, "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": days}}


def apply_rule(store: ImageStore, rule: dict[str, Any]) -> list[dict[str, Any]]:
    """Put ``rule`` into the bucket's lifecycle configuration, replacing an earlier latentq rule and
    keeping the others; return the rules now in force."""
    try:
        rules = store.client.get_bucket_lifecycle_configuration(Bucket=store.bucket)["Rules"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
            raise
        rules = []
    rules = [existing for existing in rules if existing.get("ID") != RULE_ID] + [rule]
    store.client.put_bucket_lifecycle_configuration(
        Bucket=store.bucket, LifecycleConfiguration={"Rules": rules}
    )
    applied: list[dict[str, Any]] = store.client.get_bucket_lifecycle_configuration(Bucket=store.bucket)[
        "Rules"
    ]
    return applied


def main(argv: list[str] | None = None) -> int:
    """Apply (or print) the rule for the configured bucket."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--print", action="store_true", help="print the rule; change nothing")
    args = parser.parse_args(argv)
    settings = CommonSettings()
    rule = retention_rule(settings)
    if args.print:
        print(json.dumps(rule, indent=2))
        return 0
    rules = apply_rule(ImageStore(settings), rule)
    print(f"bucket {settings.s3_bucket}: {json.dumps(rules)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
